#!/usr/bin/env bash
# Checks an image of containers/Containerfile from inside it, with a checkout of this repository
# mounted at REPO (read-only is enough). From the repository root:
#
#   buildah run -v "$PWD":/repo:ro CONTAINER -- bash /repo/containers/smoke-test.sh /repo
#   apptainer exec --nv --bind "$PWD":/repo arepas.sif bash /repo/containers/smoke-test.sh /repo
#
# It checks that the image's packages agree with each other (pip check) and with their lock
# (tests/test_lock.py), imports the workflow's libraries and runs a convolution with torch (on the
# GPU where there is one), runs a few of the library's unit tests (ANTs registration, metrics,
# post-processing) with the checkout's `arepas`, and plans the tiny workflow (a dry run).
set -euo pipefail
repo=${1:-/repo}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m pip check
python - <<'PY'
import ants, cv2, matplotlib, nibabel, nilearn, numpy, pandas, scipy, skimage, sklearn  # noqa
import snakemake, torch

device = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.randn(2, 3, 32, 32, device=device)
y = torch.nn.Conv2d(3, 4, 3).to(device)(x)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {device}: conv {tuple(y.shape)}")
print(f"snakemake {snakemake.__version__}, numpy {numpy.__version__}, antspyx {ants.__version__}")
PY
# pytest caches and temporary files go to the writable folder, not the mounted checkout.
(cd "$repo" && PYTHONPATH="$repo" python -m pytest -q -p no:cacheprovider \
    --basetemp "$work/pytest" tests/test_lock.py tests/test_registration.py \
    tests/test_metrics.py tests/test_postprocess.py)
# The workflow, planned from a writable copy: Snakemake writes .snakemake/ next to the Snakefile.
cp -r "$repo"/{Snakefile,arepas,config,workflow,profiles,envs} "$work"/
(cd "$work" && snakemake -n --cores 1 --configfile config/tiny.yaml --quiet rules)
echo "smoke test passed"
