"""Named sets of dataset settings that depart from the published method, and the merge that
applies one to a dataset block of the config.

A dataset block without `preset` gets the published networks: the schema's and the settings
classes' defaults (256² slices, the reference implementation's translator, scorer and
autoencoders). `preset: cpu_demo` shrinks them so that the bundled demo runs in minutes on two
CPU cores; its name is in every block that uses it, so nobody inherits the miniature unseen.
Settings written in the block itself win over the preset's, key by key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

PUBLISHED = "published"
CPU_DEMO = "cpu_demo"

# The CPU demo's departures from the published sizes and training, per modality. Why each one,
# and what it costs, was measured in the studies of docs/studies.md: "Translator settings that
# make the demo translators use their edges" (dropout 0, the unaugmented copy, 5 swaps), "Translator
# training step" (discriminator first, the lazy gradient penalty), "Translator learning-rate
# schedule and mirrored copies" (the brain's schedule and mirroring), "A discriminator of half
# the channels"; BENCHMARKS.md, "What the CPU demo trades away"; README, "Fidelity to the
# reference implementation".
_CPU_DEMO_TRANSLATOR = {
    "base_channels": 16,
    "n_blocks": 4,
    "disc_channels": 16,
    "dropout": 0.0,
    "augment_keep_unaugmented": True,
    "augment_swaps": 5,
    "gan_step": "discriminator_first",
    "gp_every": 16,
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    PUBLISHED: {"ct": {}, "mri": {}},
    CPU_DEMO: {
        "ct": {
            # 3.5 mm pixels: a 64² slice then spans a chest; a 6 px patch is about the published
            # 16 px of a 256² chest CT slice (about 22 mm).
            "spacing": [3.5, 3.5, 5.0],
            "slice_size": 64,
            "translator": {**_CPU_DEMO_TRANSLATOR, "lr": 0.001, "epochs": 16},
            "scorer": {"patch_size": 6},
            "autoencoder": {"epochs": 15},
        },
        "mri": {
            # 6 px = 18 mm on this grid, about the published 16 px on 1 mm brain MRI slices.
            "spacing": [3.0, 3.0, 3.0],
            "slice_size": 64,
            # One downsampling: with 16 base channels two of them lose the positions of the
            # dense cortical edges in a 16 x 16 bottleneck.
            "translator": {
                **_CPU_DEMO_TRANSLATOR,
                "n_downsampling": 1,
                "lr": 0.002,
                "lr_decay_epochs": 6,
                "epochs": 12,
                "augment_mirror": True,
            },
            "scorer": {"patch_size": 6},
            "autoencoder": {"epochs": 15},
        },
    },
}
PRESET_NAMES = tuple(PRESETS)


class PresetError(ValueError):
    """A dataset block names a preset that does not exist or does not fit its modality."""


def _dotted(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"translator.epochs": 16, ...}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _merge(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(under))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_preset(block: Mapping[str, Any], dataset: str) -> tuple[dict[str, Any], dict]:
    """The dataset block with its preset's settings filled in under its own, and where each
    setting came from: {"preset": name, "from_preset": [dotted keys], "overridden": {dotted key:
    preset value}} (settings written in the block that the preset also sets)."""
    name = block.get("preset", PUBLISHED)
    if name not in PRESETS:
        raise PresetError(
            f"config datasets.{dataset}.preset: unknown preset {name!r}; known presets are "
            f"{list(PRESET_NAMES)}"
        )
    modality = block.get("modality")
    if modality not in PRESETS[name]:
        raise PresetError(
            f"config datasets.{dataset}.preset: preset {name!r} has settings for modalities "
            f"{sorted(PRESETS[name])}, and datasets.{dataset}.modality is {modality!r}"
        )
    preset = PRESETS[name][modality]
    own = _dotted({k: v for k, v in block.items() if k != "preset"})
    given = _dotted(preset)
    origins = {
        "preset": name,
        "from_preset": sorted(key for key in given if key not in own),
        "overridden": {key: given[key] for key in sorted(given) if key in own},
    }
    return _merge(preset, block), origins


def describe_origins(dataset: str, origins: Mapping[str, Any]) -> str | None:
    """One start-up line saying which of a dataset's settings came from its preset and which
    were set in the config over it; None for the published settings."""
    if origins["preset"] == PUBLISHED:
        return None
    text = (
        f"dataset '{dataset}': preset {origins['preset']} (not the published method) sets "
        + (", ".join(origins["from_preset"]) or "nothing")
    )
    if origins["overridden"]:
        kept = ", ".join(
            f"{key} (preset: {value!r})" for key, value in origins["overridden"].items()
        )
        text += f"; set in the config over the preset: {kept}"
    return text


def resolve_presets(config: Mapping[str, Any]) -> dict[str, Any]:
    """A whole config with every dataset block's preset filled in, as the workflow sees it
    before the schema's defaults (for code that reads a run's config file on its own)."""
    resolved = copy.deepcopy(dict(config))
    for name, block in (resolved.get("datasets") or {}).items():
        resolved["datasets"][name] = apply_preset(block, name)[0]
    return resolved
