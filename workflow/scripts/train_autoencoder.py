import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from arepas import autoencoder, io


def stack(paths):
    return np.concatenate([io.load_arrays(p)["slices"] for p in paths])


def checkpoint_folder(root, settings, seed, *arrays):
    """The folder for this training set-up: settings but the epoch count, seed and slices. A job
    rerun after a kill resumes from it; a changed set-up starts afresh, never from a checkpoint
    that was trained on other data (the autoencoder's resume check does not see the data)."""
    kept = {k: v for k, v in settings.to_dict().items() if k != "epochs"}
    digest = hashlib.sha256(json.dumps([kept, seed], sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    root, key = Path(root), digest.hexdigest()[:16]
    # Other set-ups' checkpoints are stale: this job only runs because its set-up changed.
    for old in root.glob("*") if root.is_dir() else []:
        if old.name != key and old.is_dir():
            shutil.rmtree(old)
        elif old.name != key:
            old.unlink()
    return root / key


torch.set_num_threads(snakemake.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
settings = autoencoder.AutoencoderSettings.from_dict(snakemake.params.settings)
train, val = stack(snakemake.input.train), stack(snakemake.input.val)
model, history = autoencoder.train_autoencoder(
    train,
    val,
    settings,
    seed=snakemake.params.seed,
    checkpoint_dir=checkpoint_folder(
        snakemake.params.checkpoint_dir, settings, snakemake.params.seed, train, val
    ),
    progress=print,
)
autoencoder.save_autoencoder(snakemake.output.model, model, settings, meta={})
io.save_table(snakemake.output.history, history)
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
