"""The shape of the programs' code, measured with `ast`: the longest functions, the widest
signatures and the largest files of the given folders (by default training/, export/, programs/).

    .venv/bin/python scripts/code_shape.py                 # the top 5 of each
    .venv/bin/python scripts/code_shape.py training -n 10

A function's length counts its lines from `def` to its last statement (docstring included); its
width counts its parameters (positional, keyword-only, *args and **kwargs; `self` and `cls` not).
Standard library only.
"""

import argparse
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FOLDERS = ("training", "export", "programs")


def python_files(folders):
    """The `.py` files under `folders` (relative to the repository), sorted."""
    found = []
    for folder in folders:
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            found += [os.path.join(root, name) for name in names if name.endswith(".py")]
    return sorted(found)


def functions(path):
    """(qualified name, lines, parameters) of every function and method in the file `path`."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = child.args
                names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
                names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
                width = len([name for name in names if name not in ("self", "cls")])
                found.append((f"{prefix}{child.name}", child.end_lineno - child.lineno + 1, width))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=DEFAULT_FOLDERS, help="folders relative to the repository")
    parser.add_argument("-n", type=int, default=5, help="how many of each to list")
    args = parser.parse_args()
    rows, sizes = [], []
    for path in python_files(args.folders):
        name = os.path.relpath(path, REPO)
        with open(path) as f:
            sizes.append((sum(1 for _ in f), name))
        rows += [(f"{name}:{function}", lines, width) for function, lines, width in functions(path)]
    print("longest functions (lines):")
    for name, lines, _ in sorted(rows, key=lambda row: -row[1])[: args.n]:
        print(f"  {lines:5d}  {name}")
    print("widest signatures (parameters):")
    for name, _, width in sorted(rows, key=lambda row: -row[2])[: args.n]:
        print(f"  {width:5d}  {name}")
    print("largest files (lines):")
    for lines, name in sorted(sizes, reverse=True)[: args.n]:
        print(f"  {lines:5d}  {name}")


if __name__ == "__main__":
    main()
