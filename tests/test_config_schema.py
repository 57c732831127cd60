"""The config schema accepts the shipped configs and rejects the common mistakes."""

import copy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def shipped() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["tiny.yaml", "full.yaml"])
def test_shipped_configs_validate(name):
    merged_with_presets(name)


def merged_with_presets(*names: str) -> dict:
    """config.yaml with the named overlays merged key by key (snakemake.utils.update_config, as
    `--configfile` does), presets applied and the schema's defaults filled, as the workflow does."""
    from snakemake.utils import update_config

    from arepas.presets import apply_preset

    config = shipped()
    for name in names:
        update_config(config, yaml.safe_load((REPO / "config" / name).read_text()))
    for dataset, block in config["datasets"].items():
        config["datasets"][dataset] = apply_preset(block, dataset)[0]
    validate(config, SCHEMA)
    return config


def test_full_config_gives_the_published_networks_whatever_the_demo_sets():
    """A demo departure that config/full.yaml does not take back would leak into it."""
    from arepas.autoencoder import AutoencoderSettings
    from arepas.dae import DaeSettings
    from arepas.scorer import ScorerSettings
    from arepas.translator import TranslatorSettings

    config = merged_with_presets("full.yaml")
    for name, dataset in config["datasets"].items():
        translator = TranslatorSettings.from_dict(dataset["translator"])
        # The training length is set per cohort (a step budget); everything else is published.
        published = TranslatorSettings(**{
            key: getattr(translator, key) for key in ("epochs", "max_steps")
            if hasattr(translator, key)
        })
        assert translator == published, name
        assert not translator.amp, name  # the reference trains in fp32
        assert ScorerSettings.from_dict(dataset["scorer"]).patch_size == 16, name
        assert AutoencoderSettings.from_dict(dataset["autoencoder"]).depth
        assert DaeSettings.from_dict(dataset["dae"]).base_channels
        assert dataset["slice_size"] == 256, name


def test_the_demo_config_names_its_preset_in_every_dataset():
    """Nobody inherits the CPU miniature without the word `cpu_demo` in the block they copy."""
    for name, block in shipped()["datasets"].items():
        assert block.get("preset") == "cpu_demo", name
        assert "translator" not in block and "slice_size" not in block, name
    config = merged_with_presets()
    assert {d["slice_size"] for d in config["datasets"].values()} == {64}


def test_defaults_are_filled_in():
    config = {
        "subjects": "s.tsv",
        "datasets": {
            "x": {"modality": "ct", "spacing": [1, 1, 1], "intensity": {}}
        },
    }
    validate(config, SCHEMA)
    # The reference implementation's patch map: sampled positions, one seed-42 draw, whole-slice
    # scaling.
    assert config["maps"]["normalise"] == "reference"
    assert config["maps"]["scoring"] == "sampled"
    assert (config["maps"]["positions"], config["maps"]["sampling_seed"]) == ("fixed", 42)
    assert config["datasets"]["x"]["registration"]["transform"] == "none"
    assert config["scorer_stall"] == "error"
    # No preset: the published slices and networks.
    assert config["datasets"]["x"]["preset"] == "published"
    assert config["datasets"]["x"]["slice_size"] == 256
    assert config["datasets"]["x"]["translator"] == {}


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c["datasets"]["lung_ct"].update(slice_size=100), "multiple"),
        (lambda c: c["datasets"]["lung_ct"].update(slice_sise=64), "slice_sise"),
        (lambda c: c.update(method=["arepas"]), "method"),
        (lambda c: c["maps"].update(median=3), "median"),
        (lambda c: c["datasets"]["lung_ct"].update(modality="pet"), "pet"),
        (lambda c: c["datasets"]["lung_ct"]["registration"].update(transform="bspline"), "bspline"),
        (lambda c: c["datasets"]["lung_ct"].update(spacing=[1.0, 0.0, 1.0]), "0.0"),
        (lambda c: c.update(methods=["arepas", "vae"]), "vae"),
    ],
)
def test_bad_configs_are_rejected(mutate, fragment):
    config = copy.deepcopy(merged_with_presets())
    mutate(config)
    with pytest.raises(WorkflowError) as err:
        validate(config, SCHEMA)
    assert fragment in str(err.value)


def dry_run_with(config: dict, path: Path) -> subprocess.CompletedProcess:
    """`snakemake -n` of the workflow with `config` written to `path` as its config file."""
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1",
         "--configfile", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def refused_at_start(tmp_path, section: str, settings: dict) -> str:
    """Dry-run the workflow on the shipped config with lung_ct's `section` settings updated
    (section "": lung_ct's own keys); the run must fail, and its output (which should name the
    key) is returned."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    dataset = config["datasets"]["lung_ct"]
    (dataset.setdefault(section, {}) if section else dataset).update(settings)
    result = dry_run_with(config, tmp_path / "bad.yaml")
    assert result.returncode != 0
    return result.stdout + result.stderr


# Network settings that cannot run, each with what the refusal must say.
START_REFUSALS = [
    (
        "scorer",
        {"architecture": "unpadded", "patch_size": 8},
        "datasets.lung_ct.scorer: patch_size=8 is too small for the unpadded network",
    ),
    (
        "scorer",
        {"patch_size": 80},
        "datasets.lung_ct.scorer.patch_size: 80 is larger than the slices",
    ),
    ("scorer", {"archtecture": "unpadded"}, "datasets.lung_ct.scorer: unknown scorer setting"),
    (
        "scorer",
        {"loss": "bce"},
        "datasets.lung_ct.scorer: scorer setting loss='bce' is not one of",
    ),
    (
        "translator",
        {"crop_size": 96},
        "datasets.lung_ct.translator.crop_size: 96 is larger than the slices",
    ),
    (
        "translator",
        {"n_block": 4},
        "datasets.lung_ct.translator: unknown translator setting(s) ['n_block'] "
        "(did you mean 'n_block' -> 'n_blocks'?)",
    ),
    (
        "autoencoder",
        {"epoch": 3},
        "datasets.lung_ct.autoencoder: unknown autoencoder setting(s) ['epoch'] "
        "(did you mean 'epoch' -> 'epochs'?)",
    ),
    (
        "autoencoder",
        {"depth": 0},
        "datasets.lung_ct.autoencoder: depth must be >= 1",
    ),
    (
        "",
        {"slice_axis": "sagittal", "translator": {"augment_mirror": True}},
        "datasets.lung_ct.translator.augment_mirror: mirrors the slices left-right, but "
        "datasets.lung_ct.slice_axis is sagittal",
    ),
    (
        "translator",
        {"max_steps": 0},
        "datasets.lung_ct.translator: max_steps must be a positive whole number of steps or "
        "null, got 0",
    ),
    (
        "autoencoder",
        {"max_steps": "2k"},
        "datasets.lung_ct.autoencoder: max_steps must be a positive whole number of steps or "
        "null, got '2k'",
    ),
    (
        "autoencoder",
        {"depth": 7},
        "datasets.lung_ct.autoencoder.depth: 7 halvings need a slice size divisible by 128",
    ),
]


@pytest.fixture(scope="module")
def start_refusals(tmp_path_factory) -> list[str]:
    """The output of a refused dry run per START_REFUSALS case. Each is a Snakemake start of a
    few seconds on one core, so two run at a time."""
    root = tmp_path_factory.mktemp("refusals")

    def refuse(number: int) -> str:
        section, settings, _ = START_REFUSALS[number]
        folder = root / str(number)
        folder.mkdir()
        return refused_at_start(folder, section, settings)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(refuse, range(len(START_REFUSALS))))


@pytest.mark.parametrize(
    "number",
    range(len(START_REFUSALS)),
    ids=[f"{section}-{'-'.join(settings)}" for section, settings, _ in START_REFUSALS],
)
def test_network_settings_that_cannot_run_stop_the_workflow_at_start(start_refusals, number):
    assert START_REFUSALS[number][2] in start_refusals[number]


def test_v0_method_keeps_the_dataset_sizes_and_takes_the_earlier_choices():
    from arepas.scorer import V0_SETTINGS as SCORER_CHOICES
    from arepas.translator import V0_SETTINGS as TRANSLATOR_CHOICES
    from arepas.v0_method import v0_method_settings

    dataset = {
        "translator": {"base_channels": 16, "epochs": 12, "swap_style": "reference"},
        "scorer": {"patch_size": 12},
    }
    maps = {"scoring": "sampled", "n_patches": 10000, "median_size": 3, "normalise": "reference"}
    settings = v0_method_settings(dataset, maps, {"scorer": {"stall_accuracy": None}})
    assert settings["translator"] == {"base_channels": 16, "epochs": 12, **TRANSLATOR_CHOICES}
    assert settings["scorer"] == {"patch_size": 12, **SCORER_CHOICES, "stall_accuracy": None}
    assert settings["maps"] == {
        "scoring": "dense",
        "stride": 1,
        "n_patches": 10000,
        "median_size": 3,
        "normalise": "slice",
    }
    # The caller's sections are not changed.
    assert dataset["translator"]["swap_style"] == "reference"


def test_v0_method_settings_are_checked_at_start(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["methods"] = ["arepas", "arepas_v0"]
    config["arepas_v0"] = {"scorer": {"archtecture": "unpadded"}}
    result = dry_run_with(config, tmp_path / "bad.yaml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config arepas_v0.scorer (on datasets." in output
    assert "unknown scorer setting(s) ['archtecture']" in output


def test_the_old_method_name_still_runs_with_a_warning_naming_the_new_one(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["methods"] = ["arepas", "arepas_clean"]
    config["arepas_clean"] = config.pop("arepas_v0")
    config["datasets"]["lung_ct"]["translator"] = {"augment_clean": True}
    result = dry_run_with(config, tmp_path / "old.yaml")
    output = result.stdout + result.stderr
    assert "method 'arepas_clean' is deprecated: it is now 'arepas_v0'" in output
    assert "'augment_clean' is deprecated: it is now 'augment_keep_unaugmented'" in output
