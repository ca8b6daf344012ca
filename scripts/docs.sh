#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, docs/) into site/ with `mkdocs build --strict`: a
# broken link, a missing page or a docstring reference that does not resolve fails the build.
# Creates .venv-docs (if missing) with the pinned requirements-docs.txt. Arguments replace
# `build --strict`, e.g. `bash scripts/docs.sh serve` for a live preview.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv-docs/bin/python ]; then
  "$PYTHON" -m venv .venv-docs
fi
.venv-docs/bin/python -m pip install -q --disable-pip-version-check -r requirements-docs.txt
.venv-docs/bin/python -m pip check --disable-pip-version-check
if [ "$#" -eq 0 ]; then
  set -- build --strict
fi
NO_MKDOCS_2_WARNING=1 exec .venv-docs/bin/python -m mkdocs "$@"
