import math
import sys
import time
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()


import torch

from arepas import devices, diagnostics, io, stacks, translator

torch.set_num_threads(snakemake.threads)
# Buffers freed by one training step stay for the next (devices.keep_freed_memory_for_reuse).
devices.keep_freed_memory_for_reuse()
# The GPU when one is visible; a job that asked for one and sees none stops here, naming itself.
device = devices.job_training_device(snakemake)
settings = translator.TranslatorSettings.from_dict(snakemake.params.settings)
dataset = snakemake.wildcards.dataset
# Training slices are copied uncompressed beside the checkpoints and read a batch at a time, so
# memory does not grow with the number of training subjects.
train_stacks = stacks.build_stack_cache(
    snakemake.input.train, Path(snakemake.params.checkpoint_dir) / io.STACK_CACHE
)
# ROIs, slice indices and subjects serve the edge-reliance check after training.
check_slices = diagnostics.load_check_slices(
    snakemake.input.train, snakemake.input.val, train_stacks=train_stacks
)
train, val = check_slices["train_slices"], check_slices["val_slices"]
workers = translator.loader_workers(snakemake.threads)
print(
    f"{len(train)} training and {len(val)} validation slices of {train.shape[1]}^2 on {device}, "
    f"{workers} data-loader workers"
)
checkpoints = io.checkpoint_folder(
    snakemake.params.checkpoint_dir,
    # What a resume may change does not define the set-up.
    {
        "settings": {
            k: v
            for k, v in settings.to_dict().items()
            if k not in ("epochs", "max_steps", "num_threads")
        },
        "seed": snakemake.params.seed,
        # Training pairs drawn per (slice, copy) since the stacks are read from disk: a
        # checkpoint trained on the earlier, jointly drawn set is not resumed with these.
        "pairs": "per-slice-seeds",
    },
    train,
    val,
)
model, history = translator.train_translator(
    train,
    val,
    settings,
    checkpoints,
    seed=snakemake.params.seed,
    device=device,
    progress=print,
    num_workers=workers,
)

# Does the translator rebuild slices from their edges, or draw an average slice whatever the
# edges? A user must see this before trusting any map made with it.
reliance = diagnostics.edge_reliance(model, settings, **check_slices, device=device)
reliance_table = diagnostics.edge_reliance_table(
    reliance, dataset, registered=snakemake.params.registered
)
verdict = reliance_table.loc[0, "verdict"]
print(
    f"edge reliance on healthy val slices ({verdict}): "
    + ", ".join(f"{key} {reliance[key]:.4g}" for key in diagnostics.RELIANCE_KEYS)
)
warning = diagnostics.edge_reliance_warning(reliance, dataset)
if warning:
    print(warning)
# JSON has no NaN: a reference that could not be formed is stored as null.
stored = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in reliance.items()}
translator.save_translator(
    snakemake.output.model,
    model,
    settings,
    meta={
        "preprocessing": snakemake.params.preprocessing,
        "edge_reliance": {**stored, "verdict": verdict},
    },
)
io.save_table(snakemake.output.history, history)
io.save_table(snakemake.output.edge_reliance, reliance_table)
# The checkpoints stay for a later, longer run; the copy of the stacks is rebuilt when needed.
train_stacks.remove()
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
