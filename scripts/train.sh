#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the trainer. With no arguments: the default
# run (small AA network vs its conv baseline on the embedded dataset). Arguments go to
# `python -m aa_keras.training.train`, e.g. `bash scripts/train.sh --model=aa_wrn28_10 --recipe=paper_cifar100`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m aa_keras.training.train "$@"
