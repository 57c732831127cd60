import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import nibabel as nib
import torch

from arepas import io, translator
from arepas.subject_maps import reconstruct

torch.set_num_threads(snakemake.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
stack = io.load_arrays(snakemake.input.slices)
model, settings, _ = translator.load_translator(snakemake.input.model, device=device)
arrays, volume = reconstruct(stack, model, settings, device=device)
io.save_arrays(snakemake.output.reconstruction, **arrays)
io.save_volume(snakemake.output.volume, volume, nib.load(snakemake.input.working).affine)
print(f"reconstructed {len(arrays['recon'])} slices")
