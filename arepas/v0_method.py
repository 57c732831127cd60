"""Settings of method `arepas_v0`: AREPAS with this project's earlier choices instead of the
reference implementation's, on a translator and a scorer of its own."""

from __future__ import annotations

from collections.abc import Mapping

from arepas.methods import V0_METHOD

__all__ = ["V0_MAPS", "V0_METHOD", "v0_method_settings"]

# Method `arepas_v0`: AREPAS as this project built it before it followed the reference code,
# kept as a method of its own because it did better on the lung demo (BENCHMARKS.md).
V0_MAPS = {"scoring": "dense", "stride": 1, "normalise": "slice"}


def v0_method_settings(dataset: Mapping, maps: Mapping, overrides: Mapping) -> dict:
    """Translator, scorer and maps settings of method `arepas_v0` for one dataset.

    The dataset's own sections give sizes and epochs; the earlier choices
    (`translator.V0_SETTINGS`, `scorer.V0_SETTINGS`, `V0_MAPS`) replace the
    reference's; the config's `arepas_v0` section overrides both.
    """
    from arepas.scorer import V0_SETTINGS as SCORER_CHOICES
    from arepas.translator import V0_SETTINGS as TRANSLATOR_CHOICES

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
        "maps": {**maps, **V0_MAPS, **(overrides.get("maps") or {})},
    }
