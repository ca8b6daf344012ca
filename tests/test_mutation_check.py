"""scripts/mutation_check.py's mutants still apply: each one's original text occurs exactly once in
its file. A refactor that changes that text leaves the mutant "stale", and the check it stood for
silently stops (a kernel change did so once)."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", REPO / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_applies_once():
    script = _mutation_check()
    assert script.MUTANTS
    stale = []
    for mutant in script.MUTANTS:
        count = script.original_count(mutant, str(REPO))
        if count != 1:
            stale.append(f"{mutant.name}: original text found {count} times in {mutant.path}")
    assert not stale, "\n".join(stale)


def test_mutant_names_are_unique():
    names = [mutant.name for mutant in _mutation_check().MUTANTS]
    assert len(names) == len(set(names))
