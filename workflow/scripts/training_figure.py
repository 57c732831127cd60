import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import figures

dataset = snakemake.wildcards.dataset
history = pd.read_csv(snakemake.input[0], sep="\t")
title = f"{dataset}: {snakemake.params.title}"
figure = figures.training_curves(history, "epoch", list(snakemake.params.columns), title)
figures.save_figure(figure, snakemake.output[0])

# The translator's rule also asks for its edge-reliance check: a few healthy val slices rebuilt
# from their own edges, from another subject's, and the training mean image beside them.
if hasattr(snakemake.output, "edge_reliance"):
    import torch

    from arepas import diagnostics, translator

    torch.set_num_threads(snakemake.threads)
    model, settings, _ = translator.load_translator(snakemake.input.model)
    train, train_roi, train_index, _ = diagnostics.load_slice_stacks(snakemake.input.train)
    val, val_roi, val_index, val_subject = diagnostics.load_slice_stacks(snakemake.input.val)
    examples = diagnostics.edge_reliance_examples(
        model,
        settings,
        val_slices=val,
        val_subject_ids=val_subject,
        val_slice_index=val_index,
        val_roi=val_roi,
        train_slices=train,
        train_slice_index=train_index,
        train_roi=train_roi,
    )
    check = pd.read_csv(snakemake.input.edge_reliance, sep="\t").iloc[0]
    title = (
        f"{dataset}: translator {check['verdict']} (healthy val, L1 own / other edges "
        f"{check['own_over_other']:.2f}, own / mean image {check['own_over_mean_image']:.2f})"
    )
    figure = figures.edge_reliance_panel(examples, title)
    figures.save_figure(figure, snakemake.output.edge_reliance)
