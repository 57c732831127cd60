"""Network settings from config sections: one check of their keys for every network, and the
old names of renamed settings, still read with a warning that names the new one."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
LOG = logging.getLogger(__name__)

# Settings renamed so that each name says one thing: network -> {old key: new key}.
RENAMED_KEYS = {"translator": {"augment_clean": "augment_keep_unaugmented"}}
# Setting values renamed: network -> {key: {old value: new value}}.
RENAMED_VALUES = {"scorer": {"mining_source": {"clean": "unaugmented_edges"}}}


def current_names(values: Mapping[str, Any] | None, network: str) -> tuple[dict, list[str]]:
    """(the settings with renamed keys and values under their new names, one warning per old
    name met). A mapping that holds a key under both its old and its new name is an error."""
    values = dict(values or {})
    notes = []
    for old, new in RENAMED_KEYS.get(network, {}).items():
        if old not in values:
            continue
        if new in values:
            raise ValueError(
                f"{network} settings {old!r} and {new!r} are one setting (its old and new "
                f"name); keep {new!r} only"
            )
        values[new] = values.pop(old)
        notes.append(f"{network} setting {old!r} is deprecated: it is now {new!r}")
    for key, renamed in RENAMED_VALUES.get(network, {}).items():
        value = values.get(key)
        if isinstance(value, str) and value in renamed:
            values[key] = renamed[value]
            notes.append(
                f"{network} setting {key}={value!r} is deprecated: it is now {renamed[value]!r}"
            )
    return values, notes


def settings_from_dict(cls: type[T], values: Mapping[str, Any] | None, network: str) -> T:
    """The settings dataclass ``cls`` from a config mapping; missing keys keep their defaults.

    An unknown key is an error that names it, the known key it most likely misspells, and every
    known key; ``network`` ("translator", "scorer", "autoencoder") names the section. A renamed
    key or value (RENAMED_KEYS, RENAMED_VALUES) is read under its new name, with a logged
    warning. The dataclass's own checks (``__post_init__``) then judge the values.
    """
    values, notes = current_names(values, network)
    for note in notes:
        LOG.warning(note)
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
