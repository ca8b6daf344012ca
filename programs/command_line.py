"""Running a command-line program on its own absl `FlagValues`.

Each program (`aa-train`, `aa-export`, `aa-evaluate`, `aa-predict`, `aa-visualize`) defines its
flags on a `flags.FlagValues` of its own, so that importing several of them in one process
(tests, notebooks) does not clash over flag names.
"""

import sys

from absl import app, flags, logging


def run_program(flag_values, main):
    """Parses the command line into `flag_values` and runs `main(argv)` with `absl.app.run`;
    `--help` and `--helpfull` list `flag_values`, the program's own flags, first."""
    flags.FLAGS.append_flag_values(flag_values)
    program = sys.argv[0]
    for flag in {id(flag_values[name]): flag_values[name] for name in flag_values}.values():
        flags.FLAGS.register_key_flag_for_module(program, flag)
        flags.FLAGS.register_flag_by_module(program, flag)
    app.run(main)


def program_main(flag_values, run, error_prefix, errors=(ValueError,)):
    """The `main(argv)` of a program: `run(argv)` with absl logging at WARNING unless
    `--verbosity` is given (TFDS logs every dataset it opens at INFO), exiting with
    `error_prefix` and the message on any of `errors` (bad input, not a crash)."""

    def main(argv):
        flag_values.mark_as_parsed()
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            run(argv)
        except errors as error:
            sys.exit(f"{error_prefix}{error}")

    return main
