#!/usr/bin/env bash
# Installs a lock into a virtual environment, exactly, then the project (editable) beside it; used
# by `make install` (requirements/cpu.lock), containers/Containerfile (requirements/cuda.lock,
# without the project: jobs import the checkout's) and by hand (README, "Installing on a cluster"):
#
#   requirements/install.sh VENV [LOCK [--no-project]]     # LOCK: requirements/cpu.lock by default
#   PYTHON=/path/to/python3.11 requirements/install.sh ~/venvs/arepas requirements/cuda.lock
#
# VENV is created if need be. Every package of LOCK is checked against its sha256 there (pip's
# --require-hashes) and installed without dependency resolution (--no-deps: the lock is complete,
# tests/test_lock.py checks it against pyproject.toml and the installed packages): the locked pip
# first (it installs the rest in two thirds of the time an older pip takes), the project last,
# built by the locked setuptools (--no-build-isolation: nothing unpinned is fetched). Bytecode is
# not compiled here (pip does it one file at a time; `python -m compileall -j 0` uses every core).
#
# The CPU build of torch (a version with a local label, 2.13.0+cpu) is not on PyPI: pip takes it
# from PyTorch's CPU index ($TORCH_CPU_INDEX), unless it finds it without any index (in a folder of
# wheels that pip's configuration names, find-links), which spares requests to that index.
set -euo pipefail
venv=${1:?usage: requirements/install.sh VENV [LOCK [--no-project]]}
lock=${2:-requirements/cpu.lock}
project=${3:-}
[[ -z $project || $project == --no-project ]] || { echo "unknown option $project" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
"${PYTHON:-python3.11}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --no-compile)

awk '/^pip==/,!/\\$/' "$lock" | "${pip[@]}" --require-hashes --no-deps -r /dev/stdin
index=()
torch=$(grep -o '^torch==[^ ]*' "$lock")
if [[ $torch == *+* ]] && ! "${pip[@]}" --dry-run --no-index --no-deps "$torch" >/dev/null 2>&1; then
    index=(--extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
"${pip[@]}" --require-hashes --no-deps "${index[@]}" -r "$lock"
[[ $project == --no-project ]] || "${pip[@]}" --no-deps --no-build-isolation -e "$repo"
