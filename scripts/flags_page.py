"""Writes docs/reference/flags.md, the documentation page of the programs' command-line flags,
from the programs' own absl flags (each program's module-level `FLAGS`).

    python scripts/flags_page.py            # rewrite the page
    python scripts/flags_page.py --check    # exit 1 if the committed page is out of date

tests/test_docs.py runs the check, so a flag added or changed without regenerating the page
fails the suite.
"""

import importlib
import pathlib
import re
import sys

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "reference" / "flags.md"
# (command, module, console script): the programs, in the order of the page.
PROGRAMS = (
    ("python -m aa_keras.training.train", "aa_keras.training.train", "aa-train"),
    ("python -m aa_keras.training.evaluate", "aa_keras.training.evaluate", "aa-evaluate"),
    ("python -m aa_keras.export.export", "aa_keras.export.export", "aa-export"),
    ("python -m aa_keras.export.predict", "aa_keras.export.predict", "aa-predict"),
    ("python -m aa_keras.visualize", "aa_keras.visualize.cli", "aa-visualize"),
)


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text):
    """`text` for a table cell outside code: `<` escaped, so that <Name> is not read as HTML."""
    return _cell(text).replace("&", "&amp;").replace("<", "&lt;")


def _kind(flag):
    values = getattr(flag.parser, "enum_values", None)
    if values:
        return "one of " + ", ".join(f"`{value}`" for value in values)
    kinds = {"bool": "bool", "int": "int", "float": "float", "string": "string", "list": "comma-separated list", "multi_string": "string, repeatable"}
    kind = flag.flag_type()
    return kinds.get(kind, kind)


def _default(flag):
    if flag.default is None:
        return ""
    if isinstance(flag.default, list):
        return "`" + ",".join(map(str, flag.default)) + "`"
    return f"`{flag.default}`"


def _program_section(command, module_name, script):
    flag_values = importlib.import_module(module_name).FLAGS
    doc = (importlib.import_module(module_name).__doc__ or "").strip().split("\n\n")[0]
    lines = [f"## {script}", "", f"`{command}`, or `{script}`. {_prose(doc)}", ""]
    lines += ["| flag | type | default | what |", "|---|---|---|---|"]
    for name in sorted(flag_values):
        flag = flag_values[name]
        if flag.name != name:
            continue  # a short name
        spelled = f"`--[no]{name}`" if flag.flag_type() == "bool" else f"`--{name}`"
        help_text = flag.help
        if getattr(flag.parser, "enum_values", None):
            help_text = re.sub(r"^<[^>]*>: ", "", help_text)  # absl's enum prefix; the type column has the values
        lines.append(f"| {spelled} | {_cell(_kind(flag))} | {_cell(_default(flag))} | {_prose(help_text)} |")
    return "\n".join(lines) + "\n"


def render():
    sections = [_program_section(*program) for program in PROGRAMS]
    header = (
        "# Program flags\n\n"
        "The flags of the command-line programs, generated from their absl flag definitions by\n"
        "`python scripts/flags_page.py`. Each program also prints its own flags with `--help`,\n"
        "and absl's and TensorFlow's after them with `--helpfull`.\n"
    )
    return header + "\n" + "\n".join(sections)


def main(argv):
    page = render()
    if "--check" in argv[1:]:
        if not PAGE.is_file() or PAGE.read_text() != page:
            print(f"{PAGE} is out of date: run `python scripts/flags_page.py`.", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
