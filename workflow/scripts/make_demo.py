import sys
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import pandas as pd

from arepas import io, phantoms
from arepas.cohort import COLUMNS

demo = snakemake.params.demo
sheet_path = Path(snakemake.output.sheet)
rows = pd.DataFrame(snakemake.params.rows, columns=COLUMNS)
mni = None
for n, row in enumerate(rows.itertuples()):
    seed = int(demo["seed"]) * 100_003 + n
    rng = np.random.default_rng(seed)
    orientation = ("RAS", "LPS", "oblique")[n % 3]
    lesions = row.split == "test"
    if row.dataset == "lung_ct":
        shape, affine = phantoms.native_grid(
            rng, (300.0, 240.0, 220.0), (2.3, 2.3, 5.0), orientation
        )
        ph = phantoms.lung_ct_phantom(seed, shape, affine, lesions=lesions)
    elif row.dataset == "brain_t1":
        if mni is None:
            mni = phantoms.load_mni152()
        spacing = tuple(rng.uniform(2.4, 3.2, 3).round(2))
        shape, affine = phantoms.native_grid(
            rng, (180.0, 216.0, 180.0), spacing, orientation, center_mm=(0.0, -18.0, 18.0)
        )
        ph = phantoms.brain_t1_phantom(seed, shape, affine, lesions, *mni)
    else:
        raise ValueError(f"no demo generator for dataset '{row.dataset}'")
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
