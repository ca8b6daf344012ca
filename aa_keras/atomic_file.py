"""Writing a file atomically: a reader sees the old file or the new one, never a part of it."""

import os
import tempfile


def write_atomically(path, write):
    """Calls `write(tmp)` on a new temporary file `tmp` next to `path` (same extension), gives it
    the mode of a file created under the umask (`mkstemp` makes files private, but outputs are
    read by TensorBoard or a server) and renames it to `path`, creating the folder if missing.
    The temporary file is removed if `write` fails."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
