"""Scorer files: weights, settings and meta written atomically, and read back on any device."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from arepas.io import save_torch
from arepas.scorer.network import SiameseScorer, build_siamese
from arepas.scorer.settings import V0_SETTINGS, ScorerSettings


def save_scorer(
    path: str | os.PathLike,
    model: SiameseScorer,
    settings: ScorerSettings,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write weights, settings and a JSON-serialisable meta dict atomically."""
    payload = {
        # CPU tensors: the file loads on any machine, with or without a GPU.
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "settings": settings.to_dict(),
        "meta_json": json.dumps(meta or {}),
    }
    save_torch(payload, path)


def load_scorer(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[SiameseScorer, ScorerSettings, dict[str, Any]]:
    """Read a scorer written by save_scorer; the model is returned in eval mode on ``device``,
    where the scoring functions then run."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = dict(payload["settings"])
    if "architecture" not in saved:
        # Written before the reference network became the default: it is one of ours.
        saved = {**V0_SETTINGS, **saved}
    settings = ScorerSettings.from_dict(saved)
    model = build_siamese(settings)
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    model.eval()
    return model, settings, json.loads(payload["meta_json"])
