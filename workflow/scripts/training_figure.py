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
    check_slices = diagnostics.load_check_slices(snakemake.input.train, snakemake.input.val)
    examples = diagnostics.edge_reliance_examples(model, settings, **check_slices)
    check = pd.read_csv(snakemake.input.edge_reliance, sep="\t").iloc[0]
    title = (
        f"{dataset}: translator {check['verdict']} (healthy val, L1 own / other edges "
        f"{check['own_over_other']:.2f}, own / mean image {check['own_over_mean_image']:.2f})"
    )
    if "detail_own" in check:
        title += (
            f"\nfine detail kept (correlation): own edges {check['detail_own']:.2f}, other "
            f"subject's edges {check['detail_other_edges']:.2f}, mean image "
            f"{check['detail_mean_image']:.2f}; the slice's own 1 px blur "
            f"{check['detail_blurred_input']:.2f}"
        )
    figure = figures.edge_reliance_panel(examples, title)
    figures.save_figure(figure, snakemake.output.edge_reliance)
