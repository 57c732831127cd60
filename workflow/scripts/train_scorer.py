import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()

import numpy as np
import torch

from arepas import devices, io, scorer, translator

torch.set_num_threads(snakemake.threads)
# The GPU when one is visible; a job that asked for one and sees none stops here, naming itself.
device = devices.job_training_device(snakemake)
settings = scorer.ScorerSettings.from_dict(snakemake.params.settings)
real, roi = io.concat_arrays(snakemake.input.train, "slices", "roi")
generator, translator_settings, _ = translator.load_translator(
    snakemake.input.translator, device=device
)
edges, targets, slice_of = scorer.mining_inputs(
    real,
    settings,
    augmented=lambda: translator.training_pairs(real, translator_settings, snakemake.params.seed),
    clean=lambda slices: translator.edges_for(translator_settings, slices),
)
recon = translator.translate(generator, edges, device=device)
pairs = scorer.mine_hard_pairs(
    targets,
    recon,
    settings,
    np.random.default_rng(snakemake.params.seed),
    roi=roi[slice_of] if settings.mining_region == "roi" else None,
)
print(
    f"mined {len(pairs['labels'])} hard pairs from {len(targets)} reconstructions "
    f"({settings.mining_source} edges, {settings.mining_region}) of {len(real)} training slices; "
    f"training on {device}"
)
meta = {"n_pairs": len(pairs["labels"]), "stalled": ""}
try:
    model, history = scorer.train_scorer(
        pairs["patches_a"],
        pairs["patches_b"],
        pairs["labels"],
        settings,
        seed=snakemake.params.seed,
        progress=print,
        device=device,
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
