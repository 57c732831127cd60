"""Siamese patch scorer: hard pair mining, network, training with restarts, patch scoring.

Defaults are those of the reference implementation, the authors' code (Mitic & Langs, MLMI 2025,
arXiv 2509.12905; github.com/cirmuw/arepas, files model_siamese.py, train_siamese.py,
preproc.py, utils.py): 16x16 patches; 256 random patches per
slice from every 3rd sample of the augmented translator training set, anywhere in the slice; pairs
kept above the 90th MSE percentile; embedding with zero-padded 4x4 convolutions (padding 2);
contrastive loss with margin 1 on the sigmoid output p, end to end; RMSprop 1e-3, batch 1024;
restart until the last batch of the warm-up epoch is above 70 % accuracy (up to 100 tries), then
10 epochs with 20 % held out, keeping the best held-out accuracy.

Options of this project (each a named setting, so ablations can compare them):
``architecture="unpadded"`` (valid convolutions), ``loss="detached_head"`` (contrastive loss on the
raw distance plus a separately trained sigmoid head), ``warmup_rule="epoch"`` (epoch-average
accuracy), ``stall_accuracy`` (refuse a scorer whose best held-out accuracy is near chance),
``mining_source="unaugmented_edges"`` and ``mining_region="roi"``; ``max_steps``, a budget of
optimiser steps for the main training (see ScorerSettings and planned_steps).

Modules, by job: settings (ScorerSettings), pairs (hard pair mining, on disk), network
(SiameseScorer), training (train_scorer), inference (scores of a slice's patches) and files
(save_scorer, load_scorer). Their names are importable from this package.
"""

from arepas.scorer.files import load_scorer, save_scorer
from arepas.scorer.inference import (
    dense_patch_scores,
    dense_patch_scores_batch,
    patch_scores_at,
    random_positions,
    sampled_patch_scores,
)
from arepas.scorer.network import (
    ARCHITECTURE_PADDING,
    ARCHITECTURES,
    SiameseScorer,
    _pair_distance,
    build_siamese,
    smallest_patch_size,
)
from arepas.scorer.pairs import (
    MINING_CHUNK,
    PAIRS_MANIFEST,
    keep_mined_pairs,
    load_mined_pairs,
    mine_hard_pairs,
    mining_disk_bytes,
    mining_inputs,
    mining_plan,
    mining_samples,
    reconstruct_for_mining,
)
from arepas.scorer.settings import (
    LOSSES,
    MINING_REGIONS,
    MINING_SOURCES,
    V0_SETTINGS,
    WARMUP_RULES,
    ScorerSettings,
)
from arepas.scorer.training import (
    CHECKPOINT_NAME,
    HISTORY_COLUMNS,
    StalledScorerError,
    _batch_loss,
    _EpochResult,
    _passes_warmup,
    contrastive_loss,
    expected_pair_count,
    heldout_count,
    planned_steps,
    planned_steps_for_pairs,
    steps_per_epoch,
    train_scorer,
)
from arepas.v0_method import STALL_ACCURACY

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_PADDING",
    "CHECKPOINT_NAME",
    "HISTORY_COLUMNS",
    "V0_SETTINGS",
    "LOSSES",
    "MINING_CHUNK",
    "MINING_REGIONS",
    "MINING_SOURCES",
    "PAIRS_MANIFEST",
    "STALL_ACCURACY",
    "WARMUP_RULES",
    "ScorerSettings",
    "SiameseScorer",
    "StalledScorerError",
    "_EpochResult",
    "_batch_loss",
    "_pair_distance",
    "_passes_warmup",
    "build_siamese",
    "contrastive_loss",
    "dense_patch_scores",
    "dense_patch_scores_batch",
    "expected_pair_count",
    "heldout_count",
    "keep_mined_pairs",
    "load_mined_pairs",
    "load_scorer",
    "mine_hard_pairs",
    "mining_disk_bytes",
    "mining_inputs",
    "mining_plan",
    "mining_samples",
    "patch_scores_at",
    "planned_steps",
    "planned_steps_for_pairs",
    "random_positions",
    "reconstruct_for_mining",
    "sampled_patch_scores",
    "save_scorer",
    "smallest_patch_size",
    "steps_per_epoch",
    "train_scorer",
]
