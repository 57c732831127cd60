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

from arepas import io, translator


def stack(paths):
    return np.concatenate([io.load_arrays(p)["slices"] for p in paths])


def checkpoint_folder(root, settings, seed, *arrays):
    """The folder for this training set-up: settings (but those a resume may change), seed and
    slices. A job rerun after a kill finds its checkpoint there; a job rerun because a setting or
    the data changed starts afresh instead of failing on a checkpoint it cannot resume."""
    resume_free = ("epochs", "num_threads")  # what TranslatorSettings allows to change on resume
    kept = {k: v for k, v in settings.to_dict().items() if k not in resume_free}
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
settings = translator.TranslatorSettings.from_dict(snakemake.params.settings)
train, val = stack(snakemake.input.train), stack(snakemake.input.val)
print(f"{len(train)} training and {len(val)} validation slices of {train.shape[1]}^2 on {device}")
checkpoints = checkpoint_folder(
    snakemake.params.checkpoint_dir, settings, snakemake.params.seed, train, val
)
model, history = translator.train_translator(
    train,
    val,
    settings,
    checkpoints,
    seed=snakemake.params.seed,
    device=device,
    progress=print,
)
translator.save_translator(
    snakemake.output.model, model, settings, meta={"preprocessing": snakemake.params.preprocessing}
)
io.save_table(snakemake.output.history, history)
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
