import dataclasses
import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()

import numpy as np
import torch

from arepas import edges, io, scorer, translator

torch.set_num_threads(snakemake.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
settings = scorer.ScorerSettings.from_dict(snakemake.params.settings)
# Only every slice_step-th slice is mined, so only those are reconstructed.
real, roi = (
    a[:: settings.slice_step] for a in io.concat_arrays(snakemake.input.train, "slices", "roi")
)
generator, _, _ = translator.load_translator(snakemake.input.translator, device=device)
recon = translator.translate(generator, edges.edge_maps(real), device=device)
rng = np.random.default_rng(snakemake.params.seed)
pairs = scorer.mine_hard_pairs(
    real, recon, dataclasses.replace(settings, slice_step=1), rng, roi=roi
)
print(f"mined {len(pairs['labels'])} hard pairs from {len(real)} healthy training slices")
meta = {"n_pairs": len(pairs["labels"]), "stalled": ""}
try:
    model, history = scorer.train_scorer(
        pairs["patches_a"],
        pairs["patches_b"],
        pairs["labels"],
        settings,
        seed=snakemake.params.seed,
        progress=print,
    )
except scorer.StalledScorerError as stall:
    if snakemake.params.on_stall != "flag" or stall.model is None:
        raise
    # Kept only on request, and marked: every map and table built on it says so.
    print(f"WARNING: {stall}; keeping its best model, flagged as stalled")
    model, history, meta["stalled"] = stall.model, stall.history, str(stall)
scorer.save_scorer(snakemake.output.model, model, settings, meta=meta)
io.save_table(snakemake.output.history, history)
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
