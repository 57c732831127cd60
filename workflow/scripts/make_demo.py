import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import pandas as pd

from arepas import io, phantoms
from arepas.cohort import COLUMNS, demo_numbers

demo = snakemake.params.demo
sheet_path = Path(snakemake.output.sheet)
rows = pd.DataFrame(snakemake.params.rows, columns=COLUMNS)
# Loaded once, before the workers fork, which share it.
mni = phantoms.load_mni152() if (rows["dataset"] == "brain_t1").any() else None


def write_subject(number: int, row: dict) -> str:
    ph = phantoms.demo_phantom(row["dataset"], number, demo["seed"], row["split"] == "test", mni,
                               scan_grid=demo["scan_grid"])
    orientation, shape = ph.info["orientation"], ph.image.shape
    # CT is stored as integer HU, like scanner exports; MRI as float.
    dtype = np.int16 if row["dataset"] == "lung_ct" else np.float32
    image = np.round(ph.image) if dtype is np.int16 else ph.image
    io.save_volume(row["image"], image, ph.affine, dtype)
    if row["lesion"]:
        io.save_volume(row["lesion"], ph.lesion, ph.affine, dtype=np.uint8)
    where = f"{row['dataset']}, {row['split']}, {orientation}"
    return f"{row['subject']} ({where}): shape {shape}, {ph.info}"


# Each subject has its own seed, so the cohort does not depend on how many workers make it.
records = rows.to_dict("records")
with ProcessPoolExecutor(snakemake.threads, mp_context=get_context("fork")) as pool:
    for line in pool.map(write_subject, demo_numbers(rows), records):
        print(line)

io.save_table(
    sheet_path,
    rows.assign(
        image=[str(Path(p).relative_to(sheet_path.parent)) for p in rows["image"]],
        lesion=[str(Path(p).relative_to(sheet_path.parent)) if p else "" for p in rows["lesion"]],
    ),
)
