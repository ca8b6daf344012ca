"""No benchmark script may import another that defines an absl flag of the same name: absl refuses
a flag defined twice, so the script fails when it reaches that import (profile_step did, reaching
speed_targets through kernel_efficiency, until the CPU record moved to `benchmarks/machine.py`)."""

import ast
import pathlib

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _imports(tree):
    """The benchmarks.* modules a module imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("benchmarks."))
    return names


def _flags(tree):
    """The names of the absl flags a module defines (flags.DEFINE_*("name", ...))."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("DEFINE_")
        and node.args and isinstance(node.args[0], ast.Constant)
    }


def test_no_benchmark_imports_a_flag_name_twice():
    trees = {path.stem: ast.parse(path.read_text()) for path in BENCHMARKS.glob("*.py")}
    imports = {name: _imports(tree) & trees.keys() for name, tree in trees.items()}
    flags = {name: _flags(tree) for name, tree in trees.items()}
    assert {"output", "batch"} <= flags["profile_step"] and "output" in flags["speed_targets"]  # the check sees them
    clashes = {}
    for name in sorted(trees):
        reached, todo = {name}, list(imports[name])
        while todo:
            module = todo.pop()
            if module not in reached:
                reached.add(module)
                todo += imports[module]
        seen = {}
        for module in sorted(reached):
            for flag in flags[module]:
                seen.setdefault(flag, []).append(module)
        clashes.update({f"{name}: --{flag}": modules for flag, modules in seen.items() if len(modules) > 1})
    assert not clashes, f"benchmarks that would define a flag twice (flag: modules): {clashes}"
