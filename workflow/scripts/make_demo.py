import sys
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import pandas as pd

from arepas import io, phantoms
from arepas.cohort import COLUMNS, demo_numbers

demo = snakemake.params.demo
sheet_path = Path(snakemake.output.sheet)
rows = pd.DataFrame(snakemake.params.rows, columns=COLUMNS)
mni = None
for n, row in zip(demo_numbers(rows), rows.itertuples(), strict=True):
    if row.dataset == "brain_t1" and mni is None:
        mni = phantoms.load_mni152()
    ph = phantoms.demo_phantom(row.dataset, n, demo["seed"], row.split == "test", mni)
    orientation, shape = ph.info["orientation"], ph.image.shape
    # CT is stored as integer HU, like scanner exports; MRI as float.
    dtype = np.int16 if row.dataset == "lung_ct" else np.float32
    io.save_volume(
        row.image, np.round(ph.image) if dtype is np.int16 else ph.image, ph.affine, dtype
    )
    if row.lesion:
        io.save_volume(row.lesion, ph.lesion, ph.affine, dtype=np.uint8)
    print(f"{row.subject} ({row.dataset}, {row.split}, {orientation}): shape {shape}, {ph.info}")

io.save_table(
    sheet_path,
    rows.assign(
        image=[str(Path(p).relative_to(sheet_path.parent)) for p in rows["image"]],
        lesion=[str(Path(p).relative_to(sheet_path.parent)) if p else "" for p in rows["lesion"]],
    ),
)
