import shutil
import sys
import time
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()

import torch

from arepas import devices, io, mining, scorer, stacks, translator

torch.set_num_threads(snakemake.threads)
# Buffers freed by one training step stay for the next (devices.keep_freed_memory_for_reuse).
devices.keep_freed_memory_for_reuse()
# The GPU when one is visible; a job that asked for one and sees none stops here, naming itself.
device = devices.job_training_device(snakemake)
settings = scorer.ScorerSettings.from_dict(snakemake.params.settings)
seed = snakemake.params.seed
checkpoint_root = Path(snakemake.params.checkpoint_dir)
# Training slices are copied uncompressed beside the checkpoints, then the mined samples are
# reconstructed and cut into pairs a chunk at a time, all on disk: the job's memory does not grow
# with the number of training subjects.
train_stacks = stacks.build_stack_cache(snakemake.input.train, checkpoint_root / io.STACK_CACHE)
real, roi = train_stacks.slices, train_stacks.roi
# One folder per set-up (settings a resume may not change, seed, translator, training slices):
# a job killed mid-way finds its pairs and its last epoch there.
folder = io.checkpoint_folder(
    checkpoint_root,
    {
        "settings": {
            k: v for k, v in settings.to_dict().items() if k not in ("epochs", "max_steps")
        },
        "seed": seed,
        "translator": io.file_digest(snakemake.input.translator),
    },
    real,
)
pairs = scorer.load_mined_pairs(folder / "pairs")
if pairs is not None:
    print(f"reusing the {len(pairs['labels'])} hard pairs mined before, in {folder / 'pairs'}")
else:
    generator, translator_settings, _ = translator.load_translator(
        snakemake.input.translator, device=device
    )
    pairs, n_reconstructed = mining.mine_translator_pairs(
        real, roi, generator, translator_settings, settings, seed, folder, device=device
    )
    print(
        f"mined {len(pairs['labels'])} hard pairs from {n_reconstructed} reconstructions "
        f"({settings.mining_source} edges, {settings.mining_region}) of {len(real)} training "
        f"slices (pairs on disk, {pairs['patches_a'].nbytes_on_disk * 2 / 1e6:.0f} MB)"
    )
print(f"training on {device}")
meta = {"n_pairs": len(pairs["labels"]), "stalled": ""}
try:
    model, history = scorer.train_scorer(
        pairs["patches_a"],
        pairs["patches_b"],
        pairs["labels"],
        settings,
        seed=seed,
        progress=print,
        device=device,
        checkpoint_dir=folder,
    )
except scorer.StalledScorerError as stall:
    if snakemake.params.on_stall != "flag" or stall.model is None:
        raise
    # Kept only on request, and marked: every map and table built on it says so.
    print(f"WARNING: {stall}; keeping its best model, flagged as stalled")
    model, history, meta["stalled"] = stall.model, stall.history, str(stall)
scorer.save_scorer(snakemake.output.model, model, settings, meta=meta)
io.save_table(snakemake.output.history, history)
# The checkpoint stays for a later, longer run; the pairs and the copy of the stacks can be
# rebuilt and would only take disk space.
shutil.rmtree(folder / "pairs")
train_stacks.remove()
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
