"""What every program (aa-train, aa-evaluate, aa-export, aa-predict, aa-visualize) shares on its
command line: `--help` and `--helpfull` list the program's own flags first."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each program's module, its file and one of its own flags.
PROGRAMS = (
    ("aa_keras.training.train", "training/train.py", "model_dir"),
    ("aa_keras.training.evaluate", "training/evaluate.py", "model"),
    ("aa_keras.export.export", "export/export.py", "output_dir"),
    ("aa_keras.export.predict", "export/predict.py", "model"),
    ("aa_keras.visualize", "aa_keras/visualize/__main__.py", "model"),
)


def _first_section(text):
    """(module, flag names) of the first module section of absl's flag listing in `text`."""
    sections = re.split(r"^(\S.*):$", text.split("\nflags:\n", 1)[1], flags=re.MULTILINE)
    return sections[1], re.findall(r"^  --(?:\[no\])?(\w+)", sections[2], flags=re.MULTILINE)


def test_help_and_helpfull_list_the_programs_own_flags_first():
    """Before: `--helpfull` listed only absl's and TensorFlow's flags."""
    runs = {
        (module, option): subprocess.Popen(
            [sys.executable, "-m", module, option], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for module, _, _ in PROGRAMS
        for option in ("--help", "--helpfull")
    }
    for module, path, flag in PROGRAMS:
        for option in ("--help", "--helpfull"):
            output, _ = runs[module, option].communicate(timeout=300)
            section, names = _first_section(output)
            assert section.endswith(path), (module, option, section)
            assert flag in names, (module, option, names)
        assert "\nabsl.logging:\n" in output  # --helpfull lists the other modules' flags after them.
