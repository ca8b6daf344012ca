"""The export folder: which folders an export may write or replace, and staged writes.

An export is written into a new folder next to `--output_dir` and moved into place only when it
is complete, so a failed or killed export leaves `--output_dir` as it was. `--overwrite`
replaces only a folder that holds a previous export and nothing else; folders that hold a
training run, the model being exported, the working directory or the home folder are refused
before anything is written.
"""

import contextlib
import fnmatch
import glob
import os
import shutil
import tempfile

from aa_keras.programs.run_folder import RunFolder

REPORT_FILE = "export_report.json"
# What an export writes at the top of its folder (classifier and detector); anything else in a
# folder makes it foreign, and `--overwrite` refuses to replace it.
EXPORT_ENTRIES = (REPORT_FILE, "saved_model", "baseline", "model*.tflite", "model.onnx", "labels.txt")
# What marks a training run's folder (see training/).
RUN_ENTRIES = (RunFolder.CHECKPOINTS, RunFolder.RUN_CONFIG)


def _inside(path, folder):
    """Whether `path` is `folder` or lies under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_dir(output_dir, overwrite, sources=()):
    """The absolute output folder, checked to be absent, empty, or a previous export that
    `overwrite` allows to replace.

    Args:
        output_dir: the export's `--output_dir`.
        overwrite: whether a folder holding a previous export may be replaced.
        sources: paths of the files being exported (the model, the baseline); the output folder
            must not contain them.

    Raises:
        ValueError: naming the reason; nothing is touched.
    """
    output_dir = os.path.abspath(output_dir)
    real = os.path.realpath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"Invalid `--output_dir`: {output_dir!r} exists and is not a directory.")
    protected = {
        "the root folder": os.path.realpath(os.sep),
        "the home folder": os.path.realpath(os.path.expanduser("~")),
    }
    for what, path in protected.items():
        if real == path:
            raise ValueError(f"Invalid `--output_dir`: {output_dir!r} is {what}; export into a new folder.")
    if _inside(os.path.realpath(os.getcwd()), real):
        raise ValueError(
            f"Invalid `--output_dir`: {output_dir!r} is the working directory or one of its parents, which an "
            "export would replace; export into a new folder, e.g. --output_dir=export."
        )
    entries = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    if not entries:
        return output_dir
    run = [name for name in RUN_ENTRIES if name in entries]
    if run:
        raise ValueError(
            f"Invalid `--output_dir`: {output_dir!r} holds a training run ({', '.join(run)}), which an export "
            "would replace; export into a new folder, e.g. <run>/export."
        )
    for source in sources:
        if source and _inside(os.path.realpath(source), real):
            raise ValueError(
                f"Invalid `--output_dir`: {output_dir!r} contains the model being exported ({source!r}), which an "
                "export would replace; export into a new folder, e.g. next to the model."
            )
    if not overwrite:
        raise ValueError(
            f"Invalid `--output_dir`: {output_dir!r} exists and is not empty; pass `--overwrite` to replace a "
            "previous export there, or choose another directory."
        )
    foreign = [name for name in entries if not any(fnmatch.fnmatch(name, p) for p in EXPORT_ENTRIES)]
    if REPORT_FILE not in entries or foreign:
        reason = f"it holds {foreign[:5]}" if foreign else f"it has no {REPORT_FILE}"
        raise ValueError(
            f"Invalid `--output_dir`: `--overwrite` replaces only a previous export, and {output_dir!r} is not "
            f"one: {reason}. Nothing was changed; choose another directory."
        )
    return output_dir


def remove_leftovers(output_dir):
    """Removes the staging folders that a killed export into `output_dir` left next to it."""
    parent, name = os.path.split(output_dir)
    for kind in ("partial", "old"):
        for path in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.{kind}-*")):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_output(output_dir):
    """A new directory next to `output_dir` to write the artifacts into: it replaces
    `output_dir` (`move_into_place`) when the block ends, and is removed if the block raises,
    so a failed export leaves `output_dir` as it was. Staging folders of earlier killed exports
    into the same place are removed first."""
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    remove_leftovers(output_dir)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the output is an ordinary directory.
    try:
        yield staging
        move_into_place(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging, output_dir):
    """Replaces `output_dir` by `staging`; the old directory is removed only after the rename."""
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        return
    retired = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=os.path.dirname(output_dir))
    old = os.path.join(retired, "old")
    os.rename(output_dir, old)
    try:
        os.rename(staging, output_dir)
    except OSError:
        os.rename(old, output_dir)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
