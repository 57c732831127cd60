"""Names of the anomaly-map methods that more than one stage needs, importable without torch
(the workflow reads them while it builds its job graph), and the config's old names read under
the new ones."""

from arepas.settings import RENAMED_KEYS, RENAMED_VALUES, current_names

# Ours, beyond the paper: the patch dissimilarity as its quantile among the healthy val subjects'
# patch scores, times the residual (arepas.maps.calibrated_patch_map).
CALIBRATED_METHOD = "arepas_calibrated"
# Methods that need the Siamese scorer's patch map.
PATCH_METHODS = ("patch", "arepas", CALIBRATED_METHOD)
# AREPAS as this project built it before it followed the reference code (version 0), kept as a
# method of its own on its own translator and scorer (arepas.v0_method).
V0_METHOD = "arepas_v0"
# Old method names a config may still use: old -> new (rename_deprecated, below).
RENAMED_METHODS = {"arepas_clean": V0_METHOD}


def rename_deprecated(config: dict) -> list[str]:
    """Move the config's old names to their new ones in place, before presets and the schema
    see it: method `arepas_clean` (now `arepas_v0`) in `methods` and as a section, and the
    renamed translator and scorer settings of every dataset and of that section. Returns one
    warning per old name, each naming the new one."""
    notes = []
    methods = config.get("methods")
    if isinstance(methods, list):
        for index, method in enumerate(methods):
            if method in RENAMED_METHODS:
                methods[index] = RENAMED_METHODS[method]
                notes.append(
                    f"method {method!r} is deprecated: it is now {RENAMED_METHODS[method]!r}"
                )
    for old, new in RENAMED_METHODS.items():
        if old in config:
            # Under both names (the shipped config.yaml has the new one, an older overlay the
            # old one): the old section's keys win, as the overlay's would.
            section, merged = config.pop(old), config.get(new)
            if isinstance(section, dict) and isinstance(merged, dict):
                for key, value in section.items():
                    inner = merged.get(key)
                    both = isinstance(value, dict) and isinstance(inner, dict)
                    merged[key] = {**inner, **value} if both else value
                section = merged
            config[new] = section
            notes.append(f"config section {old!r} is deprecated: it is now {new!r}")
    blocks = [
        block for block in (config.get("datasets") or {}).values() if isinstance(block, dict)
    ]
    if isinstance(config.get(V0_METHOD), dict):
        blocks.append(config[V0_METHOD])
    for block in blocks:
        for network in sorted(set(RENAMED_KEYS) | set(RENAMED_VALUES)):
            if isinstance(block.get(network), dict):
                block[network], found = current_names(block[network], network)
                notes += found
    return notes
