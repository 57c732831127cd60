"""Settings of method `arepas_v0`: AREPAS with this project's earlier choices instead of the
reference implementation's, on a translator and a scorer of its own."""

from __future__ import annotations

from collections.abc import Mapping

from arepas.methods import V0_METHOD

__all__ = [
    "STALL_ACCURACY",
    "V0_MAPS",
    "V0_METHOD",
    "V0_SCORER_SETTINGS",
    "V0_TRANSLATOR_SETTINGS",
    "v0_method_settings",
]

# Method `arepas_v0`: AREPAS as this project built it before it followed the reference code,
# kept as a method of its own because it did better on the lung demo (BENCHMARKS.md).
V0_MAPS = {"scoring": "dense", "stride": 1, "normalise": "slice"}
# Plain values here rather than in the scorer and translator packages, which import torch: the
# workflow's parse reads them, and a cluster job's parse must stay light.
V0_TRANSLATOR_SETTINGS = {
    "edge_detector": "skimage",
    "augment_keep_unaugmented": True,
    "swap_style": "clean_source",
    "gan_step": "discriminator_first",
    "init": "normal_0.02",
    "affine_norm": False,
    # Always saved by format 1; the fallback is that format's default.
    "perceptual": "feature_matching",
}
# Our stall rule (scorer option `stall_accuracy`): a scorer whose best held-out accuracy is at or
# below this is indistinguishable from a coin flip on balanced pairs; its maps would be noise
# times the residual. The reference has no such rule.
STALL_ACCURACY = 0.55
V0_SCORER_SETTINGS = {
    "architecture": "unpadded",
    "loss": "detached_head",
    "warmup_rule": "epoch",
    "stall_accuracy": STALL_ACCURACY,
    "mining_source": "unaugmented_edges",
    "mining_region": "roi",
}


def v0_method_settings(dataset: Mapping, maps: Mapping, overrides: Mapping) -> dict:
    """Translator, scorer and maps settings of method `arepas_v0` for one dataset.

    The dataset's own sections give sizes and epochs; the earlier choices
    (`V0_TRANSLATOR_SETTINGS`, `V0_SCORER_SETTINGS`, `V0_MAPS`) replace the
    reference's; the config's `arepas_v0` section overrides both.
    """
    return {
        "translator": {
            **(dataset.get("translator") or {}),
            **V0_TRANSLATOR_SETTINGS,
            **(overrides.get("translator") or {}),
        },
        "scorer": {
            **(dataset.get("scorer") or {}),
            **V0_SCORER_SETTINGS,
            **(overrides.get("scorer") or {}),
        },
        "maps": {**maps, **V0_MAPS, **(overrides.get("maps") or {})},
    }
