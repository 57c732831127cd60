"""The scorer's settings (ScorerSettings): mining, network and training, each named, and the
choices of the files written before the settings existed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from arepas.progress import check_max_steps
from arepas.scorer.network import (
    ARCHITECTURE_PADDING,
    ARCHITECTURES,
    _feature_size,
    smallest_patch_size,
)
from arepas.settings import settings_from_dict
from arepas.v0_method import V0_SCORER_SETTINGS

LOSSES = ("reference", "detached_head")
WARMUP_RULES = ("last_batch", "epoch")
MINING_SOURCES = ("augmented", "unaugmented_edges")
MINING_REGIONS = ("slice", "roi")
# The choices of method arepas_v0, the project's earlier version; scorer files written before these
# settings existed were trained with them. They live in arepas.v0_method, which the workflow's
# parse imports without torch.
V0_SETTINGS = V0_SCORER_SETTINGS


@dataclass
class ScorerSettings:
    """Mining, network and training settings; the defaults are the reference's.

    max_steps (ours; None: no cap) caps the optimiser steps of the main training, epochs 1 to
    `epochs` of the try that passed its warm-up: training stops when they are spent, mid-epoch
    if need be, and that epoch is evaluated, logged and checkpointed as any other. Warm-up
    epochs are neither counted nor cut: the restart rule judges whole warm-up epochs, and how
    many tries it takes is not known beforehand. planned_steps counts one warm-up epoch (the
    first try passing) plus the capped main training; every failed try adds one epoch more.
    """

    patch_size: int = 16
    patches_per_slice: int = 256
    percentile: float = 90.0
    slice_step: int = 3
    embedding_dim: int = 10
    margin: float = 1.0
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 10
    holdout: float = 0.2
    warmup_accuracy: float = 0.7
    max_restarts: int = 100
    architecture: str = "reference"
    loss: str = "reference"
    warmup_rule: str = "last_batch"
    # None: no stall rule after warm-up (reference); a number: refuse a best held-out accuracy at
    # or below it (ours: 0.55).
    stall_accuracy: float | None = None
    mining_source: str = "augmented"
    mining_region: str = "slice"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_max_steps(self.max_steps)
        for name, choices in (
            ("architecture", ARCHITECTURES),
            ("loss", LOSSES),
            ("warmup_rule", WARMUP_RULES),
            ("mining_source", MINING_SOURCES),
            ("mining_region", MINING_REGIONS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"scorer setting {name}={getattr(self, name)!r} is not one of {choices}"
                )
        if self.patch_size < 1 or _feature_size(self.patch_size, self.padding) < 1:
            raise ValueError(
                f"patch_size={self.patch_size} is too small for the {self.architecture} "
                f"network (two 4x4 conv + 2x2 pool stages with padding {self.padding}); "
                f"the smallest that works is {smallest_patch_size(self.architecture)}"
            )
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must lie in (0, 1), got {self.holdout}")
        if not 0.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile must lie in [0, 100), got {self.percentile}")
        for name in ("patches_per_slice", "slice_step", "embedding_dim", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 1:
            raise ValueError(f"max_restarts must be >= 1, got {self.max_restarts}")

    @property
    def padding(self) -> int:
        return ARCHITECTURE_PADDING[self.architecture]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScorerSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        return settings_from_dict(cls, values, "scorer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
