# Sourced by check_tf_version.sh and test_torch.sh, from the repository root: the helpers that
# make a second virtual environment beside .venv.
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

pinned() {  # the lock's (requirements.txt) requirement line of each named package
  for name in "$@"; do
    grep -E "^${name}==" requirements.txt | cut -d' ' -f1
  done
}

make_env() {  # make_env DIR: the virtual environment DIR, created unless it exists
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
}

install_package() {  # install_package DIR: this package (editable, --no-deps) into DIR, then pip check
  "$1/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  "$1/bin/python" -m pip check --disable-pip-version-check
}
