"""What every program (aa-train, aa-evaluate, aa-export, aa-predict, aa-visualize) shares on its
command line (`aa_keras.programs.command_line.run_program`): `--help` and `--helpfull` list the
program's own flags first."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A program as the real ones are built: its flags on a FlagValues of its own, run by run_program.
PROGRAM = """
from absl import flags
from aa_keras.programs.command_line import program_main, run_program

FLAGS = flags.FlagValues()
flags.DEFINE_string("colour", None, "The program's own flag.", flag_values=FLAGS)
run_program(FLAGS, program_main(FLAGS, lambda argv: None, "program: "))
"""


def _first_section(text):
    """(module, flag names) of the first module section of absl's flag listing in `text`."""
    sections = re.split(r"^(\S.*):$", text.split("\nflags:\n", 1)[1], flags=re.MULTILINE)
    return sections[1], re.findall(r"^  --(?:\[no\])?(\w+)", sections[2], flags=re.MULTILINE)


def test_help_and_helpfull_list_the_programs_own_flags_first(tmp_path):
    """Before: `--helpfull` listed only absl's (and, for the real programs, TensorFlow's) flags."""
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    commands = {
        option: [sys.executable, str(program), option] for option in ("--help", "--helpfull")
    }
    commands["aa-train --helpfull"] = [sys.executable, "-m", "aa_keras.training.train", "--helpfull"]
    runs = {
        name: subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for name, command in commands.items()
    }
    outputs = {name: run.communicate(timeout=300)[0] for name, run in runs.items()}
    for option in ("--help", "--helpfull"):
        assert _first_section(outputs[option]) == (str(program), ["colour"]), option
    assert "\nabsl.logging:\n" in outputs["--helpfull"]  # The other modules' flags follow.
    section, names = _first_section(outputs["aa-train --helpfull"])
    assert section.endswith("training/train.py") and {"model_dir", "learning_rate", "init_from"} <= set(names)
