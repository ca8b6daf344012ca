"""Running a command-line program on its own absl `FlagValues`.

Each program (`aa-train`, `aa-export`, `aa-evaluate`, `aa-predict`, `aa-visualize`) defines its
flags on a `flags.FlagValues` of its own, so that importing several of them in one process
(tests, notebooks) does not clash over flag names.
"""

import sys

from absl import app, flags


def run_program(flag_values, main):
    """Parses the command line into `flag_values` and runs `main(argv)` with `absl.app.run`;
    `--help` lists `flag_values` as the program's own flags."""
    flags.FLAGS.append_flag_values(flag_values)
    for name in flag_values:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag_values[name])
    app.run(main)
