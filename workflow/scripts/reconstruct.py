import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import nibabel as nib
import torch

from arepas import io, translator
from arepas.preprocessing import SliceGeometry, assemble_volume

torch.set_num_threads(snakemake.threads)
device = "cuda" if torch.cuda.is_available() else "cpu"
stack = io.load_arrays(snakemake.input.slices)
model, settings, meta = translator.load_translator(snakemake.input.model, device=device)
# The detector the model was trained with (load_translator gives older model files "skimage").
edge_maps = translator.edges_for(settings, stack["slices"])
recon = translator.translate(model, edge_maps, device=device)
io.save_arrays(snakemake.output.reconstruction, **stack, edges=edge_maps, recon=recon)
geometry = SliceGeometry.from_array(stack["geometry"])
volume = assemble_volume(recon, stack["indices"], geometry, fill=-1.0)
io.save_volume(snakemake.output.volume, volume, nib.load(snakemake.input.working).affine)
print(f"reconstructed {len(recon)} slices")
