"""A discriminator of half the channels for the CPU demo translators, on every quality seed.

The PatchGAN's passes are about half of a demo training step (three per step: real and fake
for its own update, fake again for the generator's), and a convolution's cost grows with the
square of its channels, so a 16-channel discriminator makes each step cheaper (section 7 times
it). Whether the translators then still rebuild each slice from its own edges, fine detail
included, is what this section checks: each run's translator settings with `disc_channels`
halved, trained from scratch with the run's seed on its train subjects (two trainings side by
side, one thread each), against the run's own translator, both checked by the workflow's
edge-reliance check on the healthy val subjects. About 6 minutes per training on the 2-core
machine: measured only when asked for (`--only translator_disc`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import tables, translator_detail
from bench.quality import EDGE_RELIANCE_TARGET, meets_edge_target

DATASETS = ("brain_t1", "lung_ct")
# The demo's discriminator channels before this study and half of them (the demo's since).
CHANNELS = (32, 16)


def measure(runs: list[tuple[Path, str]], workers: int = 2, progress=print) -> dict:
    """Both channel counts on both datasets of every run; the trainings first, two at a time."""
    jobs = [
        (run_dir, dataset, {"disc_channels": channels})
        for channels in sorted(CHANNELS)
        for run_dir, _ in runs
        for dataset in DATASETS
    ]
    labels = {str(run_dir): label for run_dir, label in runs}
    rows = translator_detail.checked_rows(jobs, labels, workers, "translator_disc", progress)
    return {"rows": rows, "workers": workers}


def render(data: dict) -> str:
    frame = pd.DataFrame(data["rows"])
    if frame.empty:
        return "No run to study.\n"
    runs = ", ".join(sorted(frame["run"].unique()))
    # Which count is the runs' own translator (checked again) and which was trained for this.
    own = " and ".join(str(c) for c in sorted(set(frame.loc[~frame["trained"], "disc_channels"])))
    trained = " and ".join(
        str(c) for c in sorted(set(frame.loc[frame["trained"], "disc_channels"]))
    )
    text = (
        f"The demo translators with a discriminator of {own} channels (the runs' own "
        f"translators, checked again) and of {trained} channels (trained from scratch with the "
        f"run's seed and settings, only `disc_channels` changed), on the cohorts of {runs}, "
        "all checked by the workflow's edge-reliance check "
        "on the healthy val subjects. *detail*: correlation of the slice's fine detail with the "
        "prediction's (section 1, \"Does the translator use its edges?\"). Mean ± sd over runs; "
        f"target: own / other ≤ {EDGE_RELIANCE_TARGET} and, on the registered brain cohort, "
        f"own / mean image ≤ {EDGE_RELIANCE_TARGET}. What a step costs with each is in "
        "section 7.\n\n"
    )
    rows = []
    for (dataset, channels), group in frame.groupby(["dataset", "disc_channels"], sort=True):
        def cell(key: str, group: pd.DataFrame = group) -> str:
            return tables.mean_sd(*tables.mean_and_sd(group[key]), digits=3)

        met = sum(meets_edge_target(row) for _, row in group.iterrows())
        rows.append([
            dataset, str(channels), str(len(group)), cell("l1_own_edges"),
            cell("own_over_other"), cell("own_over_mean_image"), cell("detail_own"),
            cell("detail_other_edges"), cell("detail_mean_image"), f"{met} of {len(group)}",
        ])
    text += tables.markdown_table(
        ["dataset", "discriminator channels", "runs", "L1 own edges", "own / other",
         "own / mean image", "detail own edges", "detail other edges", "detail mean image",
         "runs meeting the target"],
        rows, left=2,
    )
    per_run = []
    for (run, dataset), group in frame.groupby(["run", "dataset"], sort=True):
        by = {int(r["disc_channels"]): r for _, r in group.iterrows()}
        if set(CHANNELS) <= set(by):
            half, full = by[16], by[32]
            per_run.append([
                run, dataset,
                f"{full['own_over_other']:.3f} → {half['own_over_other']:.3f}",
                f"{full['own_over_mean_image']:.3f} → {half['own_over_mean_image']:.3f}",
                f"{full['detail_own']:.3f} → {half['detail_own']:.3f}",
            ])
    if per_run:
        text += "\nPer run, 32 → 16 channels:\n\n" + tables.markdown_table(
            ["run", "dataset", "own / other", "own / mean image", "detail own edges"],
            per_run, left=2,
        )
    return text
