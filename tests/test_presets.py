"""Presets: the CPU demo's miniature is named where it is used, and explicit settings win."""

import subprocess
import sys
from pathlib import Path

import pytest

from arepas.presets import PresetError, apply_preset, describe_origins

REPO = Path(__file__).resolve().parents[1]


def test_a_block_without_preset_is_left_to_the_published_defaults():
    block = {"modality": "ct", "spacing": [1, 1, 2.5], "intensity": {}}
    merged, origins = apply_preset(block, "mine")
    assert merged == block
    assert origins["preset"] == "published" and not origins["from_preset"]
    assert describe_origins("mine", origins) is None


def test_explicit_settings_win_over_the_preset_and_are_named():
    block = {
        "preset": "cpu_demo",
        "modality": "ct",
        "intensity": {},
        "slice_size": 128,
        "translator": {"epochs": 3, "max_steps": 50},
    }
    merged, origins = apply_preset(block, "lung")
    assert merged["slice_size"] == 128
    # The section is merged key by key: the preset's other translator settings stay.
    assert merged["translator"]["epochs"] == 3 and merged["translator"]["base_channels"] == 16
    assert merged["translator"]["max_steps"] == 50
    assert origins["overridden"] == {"slice_size": 64, "translator.epochs": 16}
    assert "translator.base_channels" in origins["from_preset"]
    assert "translator.max_steps" not in origins["from_preset"]
    message = describe_origins("lung", origins)
    assert "preset cpu_demo" in message and "not the published method" in message
    assert "slice_size (preset: 64)" in message and "translator.epochs (preset: 16)" in message
    # The block itself is not changed.
    assert block["translator"] == {"epochs": 3, "max_steps": 50}


def test_the_mri_preset_differs_from_the_ct_one():
    ct, _ = apply_preset({"preset": "cpu_demo", "modality": "ct"}, "a")
    mri, _ = apply_preset({"preset": "cpu_demo", "modality": "mri"}, "b")
    assert mri["translator"]["n_downsampling"] == 1 and "n_downsampling" not in ct["translator"]


@pytest.mark.parametrize(
    "block, fragment",
    [
        ({"preset": "gpu_demo", "modality": "ct"}, "unknown preset 'gpu_demo'"),
        ({"preset": "cpu_demo", "modality": "pet"}, "datasets.d.modality is 'pet'"),
    ],
)
def test_bad_presets_name_the_key(block, fragment):
    with pytest.raises(PresetError, match="datasets.d.preset") as error:
        apply_preset(block, "d")
    assert fragment in str(error.value)


def test_start_up_says_which_settings_came_from_where(tmp_path):
    overlay = tmp_path / "mixed.yaml"
    overlay.write_text("datasets:\n  lung_ct:\n    translator: {epochs: 2}\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1",
         "--configfile", str(overlay)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    output = (result.stdout + result.stderr).splitlines()
    lines = [line for line in output if line.startswith("dataset 'lung_ct'")]
    assert lines and "translator.epochs (preset: 16)" in lines[0]
    assert "translator.base_channels" in lines[0]
