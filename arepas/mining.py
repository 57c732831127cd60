"""The patch scorer's hard pairs, mined from the translator's own training set on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def mine_translator_pairs(
    real,
    roi,
    generator,
    translator_settings,
    settings,
    seed: int,
    folder: Path,
    device: str = "cpu",
) -> tuple[dict, int]:
    """The patch scorer's hard pairs, mined as the reference does from the translator's own
    training set (`settings.mining_source`: its augmented pairs or the unaugmented edges), cut a
    chunk at a time on disk under `folder` (kept there; the reconstructions are removed); and
    the number of reconstructions they were cut from.

    real / roi: the training slices and ROIs, arrays or StackArrays.
    """
    from arepas import scorer, stacks, translator

    picked, slice_of = scorer.mining_plan(
        len(real), settings, len(real) * translator.pairs_per_slice(translator_settings)
    )
    folder.mkdir(parents=True, exist_ok=True)
    stacks.check_free_space(folder, scorer.mining_disk_bytes(len(picked), real.shape[1:], settings))
    make_inputs = scorer.mining_samples(
        real,
        settings,
        augmented=lambda numbers: translator.training_pair_batch(
            real, numbers, translator_settings, seed
        ),
        clean=lambda slices: translator.edges_for(translator_settings, slices),
    )
    by_roi = settings.mining_region == "roi"
    targets, recon, mined_roi = scorer.reconstruct_for_mining(
        picked,
        slice_of,
        make_inputs,
        lambda inputs: translator.translate(generator, inputs, device=device),
        folder / "mining",
        roi=roi if by_roi else None,
        # Mirrored training pairs (augment_mirror) need their ROI mirrored too; without ROIs
        # nothing reads the flags.
        mirrored=translator.mirrored_pairs(translator_settings, picked, seed)
        if settings.mining_source == "augmented" and by_roi
        else None,
    )
    pairs = scorer.mine_hard_pairs(
        targets,
        recon,
        settings,
        np.random.default_rng(seed),
        roi=mined_roi,
        folder=folder / "pairs",
    )
    scorer.keep_mined_pairs(folder / "pairs", pairs)
    # The reconstructions were only needed to cut the pairs.
    shutil.rmtree(folder / "mining")
    return pairs, len(targets)
