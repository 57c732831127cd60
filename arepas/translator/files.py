"""Translator files: generator weights, settings and meta written atomically, and read back
with the settings they were trained with."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arepas.io import save_torch
from arepas.translator.network import build_generator
from arepas.translator.settings import TranslatorSettings, _saved_settings

_MODEL_FORMAT = "arepas-translator-2"
# Format 1 model files predate the newer settings (settings.V0_SETTINGS).
_LEGACY_MODEL_FORMAT = "arepas-translator-1"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"meta value of type {type(value).__name__} is not JSON-serialisable")


def save_translator(
    path: str | os.PathLike,
    generator: nn.Module,
    settings: TranslatorSettings,
    meta: dict[str, Any],
) -> None:
    """Write generator weights, settings and meta atomically to path.

    meta is stored as JSON (numpy values become Python numbers / lists) so that loading never
    needs to unpickle arbitrary objects.
    """
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    payload = {
        "format": _MODEL_FORMAT,
        "generator": state,
        "settings": settings.to_dict(),
        "meta_json": json.dumps(meta, default=_json_default),
    }
    save_torch(payload, Path(path))


def load_translator(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[nn.Module, TranslatorSettings, dict[str, Any]]:
    """Read a translator written by save_translator: (generator in eval mode, settings, meta).

    Files from before the reference-matching options get the values they were trained with
    (V0_SETTINGS), so their edges are computed and their generator built as in training.
    """
    payload = torch.load(path, map_location=device, weights_only=True)
    formats = (_MODEL_FORMAT, _LEGACY_MODEL_FORMAT)
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise ValueError(f"{path} is not a translator file written by save_translator")
    settings = _saved_settings(payload["settings"], payload["format"] == _LEGACY_MODEL_FORMAT)
    generator = build_generator(settings)
    generator.load_state_dict(payload["generator"])
    generator.to(device)
    generator.eval()
    return generator, settings, json.loads(payload["meta_json"])
