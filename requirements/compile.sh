#!/usr/bin/env bash
# Regenerates requirements/cpu.lock and requirements/cuda.lock: every package, at one version, with
# the sha256 of each of its files, for CPython 3.11 on Linux x86_64 (manylinux_2_28), from
# pyproject.toml's dependencies and dev extra plus requirements/{cpu,cuda}.in. uv resolves from
# the packages' metadata alone: no wheel is downloaded, the CUDA build's few GB included.
#
#   requirements/compile.sh                            # uv on PATH (pip install uv)
#   UV=/path/to/uv requirements/compile.sh
#   TORCH_WHEELS=/folder/of/wheels requirements/compile.sh
#
# torch's CPU build is not on PyPI (PyPI's Linux torch is the CUDA build): it comes from PyTorch's
# CPU index, or, where TORCH_WHEELS is set, from that folder of wheels (a machine that reaches
# PyPI only). Add --upgrade to take the newest releases that pyproject.toml allows; without it
# the versions already locked are kept where they still fit. tests/test_lock.py fails when a lock
# no longer satisfies pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
common=(pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28
    --generate-hashes --custom-compile-command requirements/compile.sh "$@")
if [[ -n ${TORCH_WHEELS:-} ]]; then
    cpu_source=(--find-links "$TORCH_WHEELS")
else
    cpu_source=(--extra-index-url https://download.pytorch.org/whl/cpu
        --index-strategy unsafe-best-match)
fi
"$UV" pip compile "${common[@]}" requirements/cpu.in "${cpu_source[@]}" -o requirements/cpu.lock
"$UV" pip compile "${common[@]}" requirements/cuda.in -o requirements/cuda.lock
