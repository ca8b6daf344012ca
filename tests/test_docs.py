"""The README and the documentation pages say what the code does: the README's Python examples
run, every documented command line uses flags its program defines, the generated flags page is
current, and the README names the commands CI runs. (`mkdocs build --strict`, which checks the
site's links and API references, runs in CI: scripts/docs.sh.)"""

import importlib
import pathlib
import re
import shlex
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# The programs a documented command line may run: `python -m NAME` or the console script.
PROGRAMS = {
    "aa_keras.training.train": "aa_keras.training.train",
    "aa-train": "aa_keras.training.train",
    "aa_keras.training.evaluate": "aa_keras.training.evaluate",
    "aa-evaluate": "aa_keras.training.evaluate",
    "aa_keras.export.export": "aa_keras.export.export",
    "aa-export": "aa_keras.export.export",
    "aa_keras.export.predict": "aa_keras.export.predict",
    "aa-predict": "aa_keras.export.predict",
    "aa_keras.visualize": "aa_keras.visualize.cli",
    "aa-visualize": "aa_keras.visualize.cli",
}
# absl's own flags, which every program takes.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "v", "logtostderr", "flagfile"}


def _code_blocks(path, language):
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def _command_lines(text):
    """The lines of a shell block, backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _documented_commands():
    """(page, program module, [flag names]) for every program command line in README and docs/."""
    found = []
    for page in PAGES:
        for block in _code_blocks(page, "bash"):
            for line in _command_lines(block):
                words = shlex.split(line)
                if words[:2] == ["python", "-m"] and len(words) > 2:
                    program, arguments = words[2], words[3:]
                elif words:
                    program, arguments = words[0], words[1:]
                if program not in PROGRAMS:
                    continue
                names = [word[2:].split("=")[0] for word in arguments if word.startswith("--")]
                found.append((page.relative_to(REPO), PROGRAMS[program], names))
    return found


def test_the_pages_document_program_commands():
    """The check below is not vacuous: the README's and the guides' commands are found."""
    commands = _documented_commands()
    assert {module for _, module, _ in commands} == set(PROGRAMS.values())
    assert any(page.name == "README.md" for page, _, _ in commands)


def test_documented_command_lines_use_defined_flags():
    wrong = []
    for page, module, names in _documented_commands():
        defined = importlib.import_module(module).FLAGS
        for name in names:
            boolean = name[2:] if name.startswith("no") and name[2:] in defined else None
            if name not in defined and boolean is None and name not in ABSL_FLAGS:
                wrong.append(f"{page}: --{name} is not a flag of {module}")
    assert not wrong, "\n".join(wrong)


def test_flags_page_is_current():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        flags_page = importlib.import_module("flags_page")
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert flags_page.PAGE.read_text() == flags_page.render(), "run `python scripts/flags_page.py`"


def test_readme_names_the_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci_commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("bash ")]
    assert "bash scripts/test.sh" in ci_commands
    for command in ci_commands:
        assert f"`{command}`" in readme or f"\n{command} " in readme, command
    quick_start = _code_blocks(REPO / "README.md", "bash")[0]
    assert [line.split("#")[0].strip() for line in quick_start.splitlines()] == [
        "bash scripts/train.sh",
        "bash scripts/test.sh",
    ]


@pytest.mark.parametrize("index", range(len(_code_blocks(REPO / "README.md", "python"))))
def test_readme_python_example_runs(index):
    import keras

    block = _code_blocks(REPO / "README.md", "python")[index]
    namespace = {}
    exec(compile(block, f"README.md python example {index}", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, keras.Model)
    names = {type(layer).__name__ for layer in model._flatten_layers()}
    assert "AttentionAugmentation2D" in names
    keras.backend.clear_session()
