"""One trainer per run folder: a lock file holding the owner's pid and host.

A second trainer on the same `--model_dir` would overwrite the first one's checkpoints. The lock
file `train.lock` (JSON: pid, host, start time) is created atomically when a run starts and
removed when it ends. A lock whose process is gone (same host, no such pid) is stale: it is
taken over with a warning. A lock held from another host cannot be checked from here: the
error says which host, and to delete the file if that run is over.
"""

import contextlib
import json
import os
import socket
import time

from aa_keras.programs.run_folder import RunFolder


class RunLocked(ValueError):
    """The run folder is in use by another trainer."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process.
        return True
    return True


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _describe(holder):
    if not holder:
        return "an unknown process (the lock file is unreadable)"
    return f"process {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('started')}"


def _stale(holder):
    """Whether `holder` (the lock's content) names a process of this host that is gone."""
    return bool(holder) and holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
        and not _alive(holder["pid"])


@contextlib.contextmanager
def run_lock(model_dir, warn=print):
    """Holds `model_dir/train.lock` for the block.

    Args:
        model_dir: the run folder (created if missing).
        warn: called with a message when a stale lock is taken over.

    Raises:
        RunLocked: another live trainer (or one on another host) holds the lock.
    """
    os.makedirs(model_dir, exist_ok=True)
    path = RunFolder(model_dir).lock
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if not _stale(holder):
                raise RunLocked(
                    f"The run folder {model_dir!r} is in use by another trainer: {_describe(holder)} holds "
                    f"{path}. Wait for it to finish, or train into another --model_dir. If that run is over "
                    "(e.g. it ran on another host), delete the lock file."
                ) from None
            # Renamed, not deleted: of two trainers taking over at once, one rename succeeds.
            stale = f"{path}.stale-{os.getpid()}"
            try:
                os.rename(path, stale)
            except FileNotFoundError:
                continue
            if _read(stale) != holder:  # Another trainer took over between the read and the rename.
                with contextlib.suppress(FileExistsError):
                    os.link(stale, path)
                os.remove(stale)
                continue
            os.remove(stale)
            warn(f"Took over the stale lock of {_describe(holder)} in {model_dir!r}: that process is gone.")
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        break
    else:
        raise RunLocked(f"Could not take the lock {path}: other trainers keep taking it; try again.")
    try:
        yield
    finally:
        if _read(path) == owner:
            os.remove(path)
