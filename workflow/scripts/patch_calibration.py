import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import torch

from arepas import io, scorer
from arepas.maps import healthy_patch_scores, raw_patch_map

torch.set_num_threads(snakemake.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
model, _, meta = scorer.load_scorer(snakemake.input.scorer, device=device)
if meta.get("stalled"):
    print(f"WARNING: calibrating a stalled scorer ({snakemake.input.scorer}): {meta['stalled']}")
scores = []
for subject, path in zip(snakemake.params.subjects, snakemake.input.val, strict=True):
    rec = io.load_arrays(path)
    # Unscaled, as the map rule scores every subject, so that quantiles compare like with like.
    raw = raw_patch_map(model, rec["slices"], rec["recon"], rec["roi"], snakemake.params.maps)
    scores.append(healthy_patch_scores(raw, rec["roi"]))
    print(f"{subject}: {scores[-1].size} ROI patch scores, median {np.median(scores[-1]):.4g}")
io.save_arrays(
    snakemake.output.calibration,
    subjects=np.asarray(snakemake.params.subjects),
    counts=np.asarray([s.size for s in scores], dtype=np.int64),
    scores=np.concatenate(scores).astype(np.float32),
)
