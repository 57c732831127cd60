import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)
start = time.perf_counter()


import torch

from arepas import io, translator

torch.set_num_threads(snakemake.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
settings = translator.TranslatorSettings.from_dict(snakemake.params.settings)
(train,) = io.concat_arrays(snakemake.input.train, "slices")
(val,) = io.concat_arrays(snakemake.input.val, "slices")
print(f"{len(train)} training and {len(val)} validation slices of {train.shape[1]}^2 on {device}")
checkpoints = io.checkpoint_folder(
    snakemake.params.checkpoint_dir,
    # What a resume may change does not define the set-up.
    {
        "settings": {
            k: v for k, v in settings.to_dict().items() if k not in ("epochs", "num_threads")
        },
        "seed": snakemake.params.seed,
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
)
translator.save_translator(
    snakemake.output.model, model, settings, meta={"preprocessing": snakemake.params.preprocessing}
)
io.save_table(snakemake.output.history, history)
# Cached rules cannot have a benchmark directive, so they record their own resource use.
io.save_table(snakemake.output.usage, io.resource_usage(start))
