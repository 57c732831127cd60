import sys
import time
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()


import torch

from arepas import autoencoder, devices, io, stacks

torch.set_num_threads(snakemake.threads)
# Buffers freed by one training step stay for the next (devices.keep_freed_memory_for_reuse).
devices.keep_freed_memory_for_reuse()
# The GPU when one is visible; a job that asked for one and sees none stops here, naming itself.
device = devices.job_training_device(snakemake)
settings = autoencoder.AutoencoderSettings.from_dict(snakemake.params.settings)
# Training slices are copied uncompressed beside the checkpoints and read a batch at a time, so
# memory does not grow with the number of training subjects.
train_stacks = stacks.build_stack_cache(
    snakemake.input.train, Path(snakemake.params.checkpoint_dir) / io.STACK_CACHE
)
train = train_stacks.slices
(val,) = io.concat_arrays(snakemake.input.val, "slices")
print(f"{len(train)} training and {len(val)} validation slices of {train.shape[1]}^2 on {device}")
model, history = autoencoder.train_autoencoder(
    train,
    val,
    settings,
    seed=snakemake.params.seed,
    checkpoint_dir=io.checkpoint_folder(
        snakemake.params.checkpoint_dir,
        {
            "settings": {
                k: v for k, v in settings.to_dict().items() if k not in ("epochs", "max_steps")
            },
            "seed": snakemake.params.seed,
        },
        train,
        val,
    ),
    progress=print,
    device=device,
)
autoencoder.save_autoencoder(snakemake.output.model, model, settings, meta={})
io.save_table(snakemake.output.history, history)
# The checkpoints stay for a later, longer run; the copy of the stacks is rebuilt when needed.
train_stacks.remove()
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
