"""Settings of method `arepas_clean`: AREPAS with this project's earlier choices instead of the
reference implementation's, on a translator and a scorer of its own."""

from __future__ import annotations

from collections.abc import Mapping

from arepas.methods import CLEAN_METHOD

__all__ = ["CLEAN_MAPS", "CLEAN_METHOD", "clean_method_settings"]

# Method `arepas_clean`: AREPAS as this project built it before it followed the reference code,
# kept as a method of its own because it did better on the lung demo (BENCHMARKS.md).
CLEAN_MAPS = {"scoring": "dense", "stride": 1, "normalise": "slice"}


def clean_method_settings(dataset: Mapping, maps: Mapping, overrides: Mapping) -> dict:
    """Translator, scorer and maps settings of method `arepas_clean` for one dataset.

    The dataset's own sections give sizes and epochs; the earlier choices
    (`translator.LEGACY_SETTINGS`, `scorer.LEGACY_SETTINGS`, `CLEAN_MAPS`) replace the
    reference's; the config's `arepas_clean` section overrides both.
    """
    from arepas.scorer import LEGACY_SETTINGS as SCORER_CHOICES
    from arepas.translator import LEGACY_SETTINGS as TRANSLATOR_CHOICES

    return {
        "translator": {
            **(dataset.get("translator") or {}),
            **TRANSLATOR_CHOICES,
            **(overrides.get("translator") or {}),
        },
        "scorer": {
            **(dataset.get("scorer") or {}),
            **SCORER_CHOICES,
            **(overrides.get("scorer") or {}),
        },
        "maps": {**maps, **CLEAN_MAPS, **(overrides.get("maps") or {})},
    }
