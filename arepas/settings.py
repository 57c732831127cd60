"""Network settings from config sections: one check of their keys for every network."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def settings_from_dict(cls: type[T], values: Mapping[str, Any] | None, network: str) -> T:
    """The settings dataclass ``cls`` from a config mapping; missing keys keep their defaults.

    An unknown key is an error that names it, the known key it most likely misspells, and every
    known key; ``network`` ("translator", "scorer", "autoencoder") names the section. The
    dataclass's own checks (``__post_init__``) then judge the values.
    """
    values = dict(values or {})
    known = sorted(field.name for field in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(known))
    if unknown:
        guesses = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        meant = ", ".join(f"{key!r} -> {match[0]!r}" for key, match in guesses.items() if match)
        hint = f" (did you mean {meant}?)" if meant else ""
        raise ValueError(
            f"unknown {network} setting(s) {unknown}{hint}; known settings are {known}"
        )
    return cls(**values)
