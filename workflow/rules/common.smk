import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from nibabel import load as nib_load
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from arepas import cohort
from arepas.io import InputError
from arepas.methods import CALIBRATED_METHOD, PATCH_METHODS
from arepas.v0_method import V0_METHOD, v0_method_settings
from arepas.postprocess import PostprocessSettings, evaluated_methods
from arepas.presets import PresetError, apply_preset, describe_origins
from arepas.methods import rename_deprecated

# Start-up checks (settings the networks cannot run, every scan's header, shared scans, pretrained
# models) run once, in the process that plans the run. A cluster job parses the workflow again
# to run one rule; it needs the config and the sheet, not their checks, nor torch.
MAIN = workflow.is_main_process


def apply_presets():
    """Each dataset block with its `preset` filled in under its own settings (before the schema
    fills in the published defaults), and where each setting came from."""
    origins = {}
    for name, block in (config.get("datasets") or {}).items():
        if not isinstance(block, dict):
            continue  # the schema names what is wrong with it
        try:
            config["datasets"][name], origins[name] = apply_preset(block, name)
        except PresetError as error:
            raise WorkflowError(str(error)) from None
    return origins


def rename_deprecated_config():
    """Old names in the config read under their new ones, with a warning naming the new name."""
    try:
        notes = rename_deprecated(config)
    except ValueError as error:
        raise WorkflowError(f"config: {error}") from None
    if MAIN:
        for note in notes:
            logger.warning(f"config: {note}")


rename_deprecated_config()
PRESET_ORIGINS = apply_presets()
validate(config, schema="../schemas/config.schema.yaml")

# Jobs import `arepas` from this checkout, not from an installed copy: Snakemake appends the main
# process's module search path to every rule script's, so the repository root put first here
# reaches each job, also in the conda environment of envs/arepas.yaml (`--sdm conda`), which does
# not install the package (see the comment there).
if workflow.basedir not in sys.path:
    sys.path.insert(0, workflow.basedir)

DATASETS = config["datasets"]
# Method arepas_v0 trains its own translator and scorer; their settings per dataset.
V0 = V0_METHOD in config["methods"]
V0_METHOD_SETTINGS = {
    name: v0_method_settings(settings, config["maps"], config["arepas_v0"])
    for name, settings in (DATASETS.items() if V0 else ())
}
DEMO = config["demo"].get("enabled", False)
# Every method raw and post-processed (`residual`, `residual+pp`): the maps written and evaluated.
MAP_METHODS = evaluated_methods(
    config["methods"], PostprocessSettings.from_dict(config["postprocess"])
)
SHEET_DIR = Path(config["subjects"]).parent
# Datasets whose models come trained from elsewhere: nothing is trained for them here.
PRETRAINED = {
    name: s["pretrained"] for name, s in DATASETS.items() if s.get("pretrained")
}


def check_network_settings():
    """Translator, scorer and autoencoder settings of every dataset, checked before any job runs:
    a misspelt key or a combination the networks cannot run stops the workflow here, naming the
    key (one check of the keys for all three: arepas.settings.settings_from_dict).
    """
    from arepas.autoencoder import AutoencoderSettings
    from arepas.scorer import ScorerSettings
    from arepas.translator import TranslatorSettings

    # Each section's setting that is a window of the slice, and so may not exceed it.
    for name, settings in DATASETS.items():
        for section, build, window in (
            ("translator", TranslatorSettings, "crop_size"),
            ("scorer", ScorerSettings, "patch_size"),
            ("autoencoder", AutoencoderSettings, None),
        ):
            candidates = [(f"datasets.{name}.{section}", settings.get(section) or {})]
            if V0 and section in V0_METHOD_SETTINGS[name]:
                where = f"arepas_v0.{section} (on datasets.{name}.{section})"
                candidates.append((where, V0_METHOD_SETTINGS[name][section]))
            for where, values in candidates:
                try:
                    built = build.from_dict(values)
                except (TypeError, ValueError) as error:
                    raise WorkflowError(f"config {where}: {error}") from None
                if getattr(built, "augment_mirror", False) and (
                    settings.get("slice_axis", "axial") == "sagittal"
                ):
                    # A sagittal slice's first axis runs front to back: its mirror image is
                    # no healthy slice.
                    raise WorkflowError(
                        f"config {where.split(' ')[0]}.augment_mirror: mirrors the slices "
                        f"left-right, but datasets.{name}.slice_axis is sagittal (no left-right "
                        "axis in the slice); use axial or coronal slices or set it false"
                    )
                size = getattr(built, window) if window else None
                if size is not None and size > settings["slice_size"]:
                    raise WorkflowError(
                        f"config {where.split(' ')[0]}.{window}: {size} is larger than the "
                        f"slices (datasets.{name}.slice_size = {settings['slice_size']})"
                    )
        check_autoencoder_depth(name, settings)


def check_autoencoder_depth(name, settings):
    """The autoencoder halves the slice `depth` times: the slice size must allow it."""
    if "ae" not in config["methods"]:
        return
    from arepas.autoencoder import AutoencoderSettings

    depth = AutoencoderSettings.from_dict(settings.get("autoencoder")).depth
    if settings["slice_size"] % 2**depth:
        raise WorkflowError(
            f"config datasets.{name}.autoencoder.depth: {depth} halvings need a slice size "
            f"divisible by {2**depth} (datasets.{name}.slice_size = {settings['slice_size']})"
        )


if MAIN:
    check_network_settings()


def check_intensity_settings():
    """Bias-field correction only where it means something (MRI), refused at workflow start."""
    from arepas.preprocessing import bias_correction_settings

    for name, settings in DATASETS.items():
        try:
            bias_correction_settings(settings["modality"], settings["intensity"], name)
        except ValueError as error:
            raise WorkflowError(str(error)) from None


if MAIN:
    check_intensity_settings()


def check_dae_settings():
    """Method dae's settings, checked at workflow start like the other networks'."""
    from arepas.dae import DaeSettings

    if "dae" not in config["methods"]:
        return
    for name, settings in DATASETS.items():
        try:
            built = DaeSettings.from_dict(settings.get("dae"))
        except (TypeError, ValueError) as error:
            raise WorkflowError(f"config datasets.{name}.dae: {error}") from None
        if settings["slice_size"] % 2**built.depth:
            raise WorkflowError(
                f"config datasets.{name}.dae.depth: {built.depth} poolings need slices "
                f"divisible by {2**built.depth} (datasets.{name}.slice_size = "
                f"{settings['slice_size']})"
            )


if MAIN:
    check_dae_settings()

PREPROCESSING_KEYS = (
    "modality",
    "spacing",
    "slice_axis",
    "slice_size",
    "intensity",
    "roi",
    "registration",
)


# A GPU belongs to one machine: `--resources gpu=1` (profiles/default) serialises GPU jobs on it,
# but under SLURM the main process must not count GPUs across nodes; the cluster allocates them.
resource_scopes:
    gpu="local",


# Each image's grid (shape, affine) as the sheet check read it, for the training plan.
IMAGE_GRIDS = {}


def load_subjects() -> pd.DataFrame:
    if DEMO:
        sheet = cohort.demo_sheet(config["demo"])
    else:
        sheet = cohort.read_sheet(config["subjects"])
    validate(sheet, schema="../schemas/subjects.schema.yaml")
    table = cohort.resolve_paths(sheet, SHEET_DIR)
    # Demo files are outputs of rule make_demo; a user's files must exist now.
    applied = table["dataset"].isin(PRETRAINED)
    IMAGE_GRIDS.update(
        cohort.check_sheet(table[~applied], DATASETS, check_files=MAIN and not DEMO)
    )
    check_applied_rows(table, table[applied])
    for row in table.itertuples():
        settings = DATASETS[row.dataset]
        reg = settings["registration"]
        if settings["modality"] == "mri" and reg["transform"] == "none" and not row.roi:
            raise cohort.SheetError(
                f"subject '{row.subject}', column 'roi': dataset '{row.dataset}' is MRI without "
                "registration, so the brain mask cannot come from a template; give an roi mask"
            )
    return table.set_index("subject", drop=False)


def check_applied_rows(table, rows):
    """The sheet checks for datasets with pretrained models, which need no `train` rows."""
    dupes = table["subject"][table["subject"].duplicated()].unique().tolist()
    if dupes:
        raise cohort.SheetError(
            f"subject id(s) {dupes} appear more than once in the sheet"
        )
    for row in rows.itertuples(index=False):
        if row.split not in cohort.SPLITS:
            problem = f"unknown split '{row.split}', expected one of {cohort.SPLITS}"
            raise InputError(row.subject, "split", row.image, problem)
        if row.split == "test" and not row.lesion:
            raise InputError(
                row.subject, "lesion", "", "a test subject needs a lesion mask"
            )
        if MAIN and not DEMO:
            cohort.check_subject_files(row._asdict())
    for name, group in rows.groupby("dataset"):
        if "test" in set(group["split"]) and "val" not in set(group["split"]):
            raise cohort.SheetError(
                f"dataset '{name}' has 'test' subjects but no 'val' subjects; the val "
                "threshold is chosen on the healthy val scans, also with a pretrained model"
            )


SUBJECTS = load_subjects()


wildcard_constraints:
    dataset="|".join(DATASETS),
    subject="[A-Za-z0-9_-]+",


def subjects_of(dataset, splits=("train", "val", "test", "predict")):
    rows = SUBJECTS[(SUBJECTS["dataset"] == dataset) & SUBJECTS["split"].isin(splits)]
    return rows["subject"].tolist()


def used_datasets():
    return sorted(set(SUBJECTS["dataset"]))


def subject_files(wildcards):
    row = SUBJECTS.loc[wildcards.subject]
    files = {"image": row.image}
    for column in ("lesion", "roi"):
        if row[column]:
            files[column] = row[column]
    return files


def template_files(wildcards):
    if DATASETS[wildcards.dataset]["registration"]["transform"] == "none":
        return {}
    return {
        "template": f"results/{wildcards.dataset}/template/template.nii.gz",
        "template_mask": f"results/{wildcards.dataset}/template/mask.nii.gz",
    }


def preprocessing_of(dataset):
    return {k: DATASETS[dataset].get(k) for k in PREPROCESSING_KEYS}


def preprocess_settings(wildcards):
    return preprocessing_of(wildcards.dataset)


def needed_models():
    names = ["translator"]
    if set(PATCH_METHODS) & set(config["methods"]):
        names.append("scorer")
    if "ae" in config["methods"]:
        names.append("autoencoder")
    if "dae" in config["methods"]:
        names.append("dae")
    if V0:
        names += [f"{V0_METHOD}/translator", f"{V0_METHOD}/scorer"]
    return names


def model_file(dataset, name):
    """A trained model: from the dataset's `pretrained` folder, else its train_* rule's output."""
    folder = PRETRAINED.get(dataset)
    return f"{folder}/{name}.pt" if folder else f"results/{dataset}/models/{name}.pt"


def setting_differences(trained, current, prefix=""):
    """(dotted key, trained value, current value) for every setting that differs."""
    found = []
    for key in sorted(set(trained) | set(current)):
        old, new, name = trained.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            found += setting_differences(old, new, f"{name}.")
        elif old != new:
            found.append((name, old, new))
    return found


def check_pretrained(dataset):
    """Refuse, before any job runs, models that are missing or fit other preprocessing."""
    folder = Path(PRETRAINED[dataset])
    missing = [f"{n}.pt" for n in needed_models() if not (folder / f"{n}.pt").is_file()]
    if missing:
        raise WorkflowError(
            f"dataset '{dataset}': pretrained folder '{folder}' lacks {missing}, "
            f"needed for methods {config['methods']}"
        )
    from arepas import translator

    path = folder / "translator.pt"
    trained = translator.load_translator(path)[2].get("preprocessing")
    if trained is None:
        raise WorkflowError(
            f"dataset '{dataset}': pretrained translator '{path}' does not record the "
            "preprocessing it was trained with; it cannot be checked against the config"
        )
    # The model's meta went through JSON (tuples became lists); compare the config the same way.
    current = json.loads(json.dumps(preprocessing_of(dataset)))
    differences = setting_differences(trained, current)
    if differences:
        details = "; ".join(
            f"datasets.{dataset}.{key}: model {old!r}, config {new!r}"
            for key, old, new in differences
        )
        raise WorkflowError(
            f"dataset '{dataset}': the pretrained translator '{path}' was trained with other "
            f"preprocessing ({details}). Preprocess as the model was trained, or remove "
            f"'pretrained' to train on this data."
        )


for _dataset in sorted(PRETRAINED.keys() & set(SUBJECTS["dataset"]) if MAIN else ()):
    check_pretrained(_dataset)


def report_presets():
    """Which settings of each dataset in the sheet came from a preset, and which from the config."""
    for dataset in used_datasets():
        message = describe_origins(dataset, PRESET_ORIGINS[dataset])
        if message:
            logger.info(message)


def report_training_steps():
    """Each training job's planned steps, printed before anything runs: what a user waiting on
    a cluster job needs to know before submitting. Slice counts come from the preprocessed
    stacks once they exist, else are bounded from the image headers (not for demo scans,
    which do not exist yet)."""
    from arepas.planning import (
        describe_training_steps,
        planned_training_steps,
        training_slices,
    )

    for dataset in used_datasets():
        train = subjects_of(dataset, ["train"])
        if dataset in PRETRAINED or not train:
            continue
        stacks = preprocessed(dataset, train)
        images = [SUBJECTS.loc[s, "image"] for s in train]
        if DEMO and not all(os.path.exists(p) for p in stacks):
            logger.info(
                f"dataset '{dataset}': training steps are printed once its demo scans exist "
                "(the next run), and each training log shows its own"
            )
            continue
        networks = [n for n in needed_models() if "/" not in n]
        n_slices, exact = training_slices(
            images, stacks, DATASETS[dataset], IMAGE_GRIDS
        )
        steps = planned_training_steps(DATASETS[dataset], n_slices, networks)
        logger.info(describe_training_steps(dataset, n_slices, exact, steps))


def preprocessed(dataset, subjects, name="slices.npz"):
    return [f"results/{dataset}/preprocessed/{s}/{name}" for s in subjects]


if MAIN:
    report_presets()
    report_training_steps()


def map_model_files(wildcards):
    """Models the map rule reads, keyed scorer, autoencoder, dae and v0_scorer (arepas_v0)."""
    return {
        name.replace(f"{V0_METHOD}/", "v0_"): model_file(wildcards.dataset, name)
        for name in needed_models()
        if not name.endswith("translator")
    }


def map_reconstructions(wildcards):
    """The subject's reconstructions: the reference translator's, and arepas_v0's own."""
    folder = f"results/{wildcards.dataset}/reconstruction"
    files = {"reconstruction": f"{folder}/{wildcards.subject}.npz"}
    if V0:
        files["v0_reconstruction"] = f"{folder}/{V0_METHOD}/{wildcards.subject}.npz"
    return files


CALIBRATED = CALIBRATED_METHOD in config["methods"]


def check_calibration_subjects():
    """arepas_calibrated calibrates each val subject on the other val subjects: two at least."""
    if not CALIBRATED:
        return
    for dataset in sorted(set(SUBJECTS["dataset"])):
        val = subjects_of(dataset, ["val"])
        if len(val) < 2:
            raise WorkflowError(
                f"method {CALIBRATED_METHOD}: dataset '{dataset}' has {len(val)} val subjects "
                f"({', '.join(val) or 'none'}); its patch scores are calibrated on healthy val "
                "subjects other than the one being mapped, so it needs at least 2"
            )


check_calibration_subjects()


def map_calibration(wildcards):
    """The healthy val subjects' patch scores, read by the map rule for arepas_calibrated."""
    if not CALIBRATED:
        return {}
    return {"calibration": f"results/{wildcards.dataset}/models/patch_calibration.npz"}


def translator_file(wildcards):
    return model_file(wildcards.dataset, "translator")


def evaluated_datasets():
    return [d for d in used_datasets() if subjects_of(d, ["test"])]


def subject_rows(dataset, splits):
    """Sheet rows as plain dicts, so that scripts see paths and a changed row reruns the rule."""
    rows = SUBJECTS[(SUBJECTS["dataset"] == dataset) & SUBJECTS["split"].isin(splits)]
    return rows.reset_index(drop=True).to_dict("records")


def native_maps(dataset, subjects):
    return expand(
        "results/{dataset}/maps/{method}/{subject}_native.nii.gz",
        dataset=dataset,
        method=MAP_METHODS,
        subject=subjects,
    )


def evaluation_files(wildcards):
    """Everything rule evaluate reads. Lists follow the order of its params `test` + `val`
    (lesions: `test` only), and maps come as `maps_<method>`, so that the script takes each file
    from its input by subject instead of building a path of its own."""
    test = subjects_of(wildcards.dataset, ["test"])
    val = subjects_of(wildcards.dataset, ["val"])
    maps = {
        f"maps_{method}": expand(
            "results/{dataset}/maps/{method}/{subject}_native.nii.gz",
            dataset=wildcards.dataset,
            method=method,
            subject=test + val,
        )
        for method in MAP_METHODS
    }
    return {
        **map_model_files(wildcards),
        **maps,
        "roi": preprocessed(wildcards.dataset, test + val, "roi_native.nii.gz"),
        "lesion": [SUBJECTS.loc[s, "lesion"] for s in test],
    }


def check_mask_methods():
    """`masks.methods` must name maps that are computed: a raw method or its `+pp` variant.
    Unset, it is `arepas` where that is computed, else the first method, so that a config
    without the section still gets masks."""
    methods = config["masks"].get("methods")
    if methods is None:
        return ["arepas"] if "arepas" in config["methods"] else config["methods"][:1]
    unknown = [m for m in methods if m not in MAP_METHODS]
    if unknown:
        raise WorkflowError(
            f"config masks.methods: {unknown} are not among the maps computed, {MAP_METHODS} "
            "(the `methods`, and their `+pp` variants where `postprocess` is on); name some of "
            "those, or [] for no masks"
        )
    return list(methods)


MASK_METHODS = check_mask_methods()


def masked_subjects(dataset):
    """`test` and `predict` subjects that get binary masks: those of datasets with healthy `val`
    subjects to choose the threshold on."""
    if not MASK_METHODS or not subjects_of(dataset, ["val"]):
        return []
    return subjects_of(dataset, ["test", "predict"])


for _dataset in used_datasets():
    if subjects_of(_dataset, ["predict"]) and not subjects_of(_dataset, ["val"]):
        logger.warning(
            f"dataset '{_dataset}': no binary masks for its 'predict' subjects, only continuous "
            "maps; the mask threshold is chosen on healthy 'val' subjects, and it has none"
        )


def mask_threshold_files(wildcards):
    """Rule mask_thresholds' input: the val subjects' maps as `maps_<method>` and ROIs, in the
    order of its params `val`."""
    val = subjects_of(wildcards.dataset, ["val"])
    maps = {
        f"maps_{method}": expand(
            "results/{dataset}/maps/{method}/{subject}_native.nii.gz",
            dataset=wildcards.dataset,
            method=method,
            subject=val,
        )
        for method in MASK_METHODS
    }
    return {**maps, "roi": preprocessed(wildcards.dataset, val, "roi_native.nii.gz")}


def mask_map_files(dataset, subject):
    """One subject's native maps of the masked methods, in the order of MASK_METHODS."""
    return [
        f"results/{dataset}/maps/{method}/{subject}_native.nii.gz"
        for method in MASK_METHODS
    ]


def final_outputs():
    outputs = []
    for dataset in used_datasets():
        mapped = subjects_of(dataset, ["val", "test", "predict"])
        outputs += native_maps(dataset, mapped)
        outputs += expand(
            "results/{dataset}/figures/subjects/{subject}.png",
            dataset=dataset,
            subject=subjects_of(dataset, ["test"]),
        )
        masked = masked_subjects(dataset)
        outputs += expand(
            "results/{dataset}/masks/{method}/{subject}.nii.gz",
            dataset=dataset,
            method=MASK_METHODS,
            subject=masked,
        )
        outputs += expand(
            "results/{dataset}/figures/masks/{subject}.png",
            dataset=dataset,
            subject=masked,
        )
    for dataset in evaluated_datasets():
        names = ["pr_curves", "dice_per_subject"]
        # Training curves belong to the run that trained the models.
        if dataset not in PRETRAINED:
            names.append("translator_training")
            if "scorer" in needed_models():
                names.append("scorer_training")
        outputs += expand(
            "results/{dataset}/figures/{name}.png", dataset=dataset, name=names
        )
    if evaluated_datasets():
        outputs.append("results/summary.md")
    return outputs


def script_code(name):
    """Digest of a rule's script and the library code it runs (arepas.provenance), passed as a
    parameter of that rule: changing that code reruns the rule and what follows, and changes its
    cache key; changing other library code does not."""
    import arepas
    from arepas.provenance import code_digest

    package_root = Path(arepas.__file__).resolve().parents[1]
    return code_digest(
        Path(workflow.basedir) / "workflow" / "scripts" / name, package_root
    )


REPORT_SUBJECTS = config["report"]["subjects"]


def subject_report(path, **kwargs):
    """An output shown in the report unless it shows a subject's images or rows and the config
    asks for a report to share (`report: {subjects: false}`)."""
    return report(path, **kwargs) if REPORT_SUBJECTS else path


KEEP_INTERMEDIATES = config["keep_intermediates"]


def intermediate(paths):
    """Large intermediate outputs: removed once consumed unless `keep_intermediates` (default)."""
    if KEEP_INTERMEDIATES:
        return paths
    if isinstance(paths, str):
        return temp(paths)
    return [temp(path) for path in paths]


MAX_RUNTIME_MIN = config["cluster"]["max_runtime_min"]


@functools.cache
def subject_size(dataset, subject):
    """(network slices, native voxels) of a subject: its stack's count once preprocessed, else
    the bound from its image's header."""
    from arepas import planning

    image = SUBJECTS.loc[subject, "image"]
    if image in IMAGE_GRIDS:
        shape, affine = IMAGE_GRIDS[image]
    elif os.path.exists(image):
        header = nib_load(image)
        shape, affine = header.shape[:3], header.affine
    else:  # a demo scan not generated yet: a clinical-size guess
        shape, affine = (512, 512, 256), np.diag([0.8, 0.8, 1.25, 1.0])
    stack = preprocessed(dataset, [subject])[0]
    if os.path.exists(stack):
        slices = planning.stored_slice_count(stack)
    else:
        settings = DATASETS[dataset]
        slices = planning.slice_count_bound(
            shape, affine, settings["spacing"], settings.get("slice_axis", "axial")
        )
    return slices, int(np.prod(shape))


def subject_resources(rule_name):
    """mem_mb and runtime (minutes) of a per-subject rule's job, from the subject's size."""
    from arepas import resources

    def estimate(wildcards):
        return resources.subject_estimate(
            rule_name, *subject_size(wildcards.dataset, wildcards.subject)
        )

    return {
        "mem_mb": lambda wildcards, attempt: resources.mem_mb(
            estimate(wildcards)[1], attempt
        ),
        "runtime": lambda wildcards, attempt: resources.runtime_min(
            estimate(wildcards)[0], attempt, MAX_RUNTIME_MIN
        ),
    }


@functools.cache
def planned_steps_of(dataset):
    """Each network's planned training steps for a dataset (as printed at start)."""
    from arepas.planning import planned_training_steps, training_slices

    train = subjects_of(dataset, ["train"])
    images = [SUBJECTS.loc[s, "image"] for s in train]
    if DEMO and not all(os.path.exists(p) for p in images):
        n_slices = sum(subject_size(dataset, s)[0] for s in train)
    else:
        n_slices = training_slices(
            images, preprocessed(dataset, train), DATASETS[dataset], IMAGE_GRIDS
        )[0]
    networks = [n for n in needed_models() if "/" not in n]
    return planned_training_steps(DATASETS[dataset], n_slices, networks)


def training_resources(network):
    """mem_mb and runtime of a training job, from its planned steps; `tasks_per_gpu: 0` keeps
    the SLURM plugin from adding --ntasks-per-gpu, which some clusters refuse."""
    from arepas import resources

    def estimate(wildcards):
        if not MAIN:
            # A job on its node: its request was made when it was submitted, and planning the
            # steps again would import torch into the job's parse.
            return 0.0, 0.0
        steps = planned_steps_of(wildcards.dataset).get(network, 0)
        return resources.training_estimate(network, steps, MAX_RUNTIME_MIN)

    return {
        "mem_mb": lambda wildcards, attempt: resources.mem_mb(
            estimate(wildcards)[1], attempt
        ),
        "runtime": lambda wildcards, attempt: resources.runtime_min(
            estimate(wildcards)[0], attempt, MAX_RUNTIME_MIN
        ),
        "tasks_per_gpu": 0,
    }


def check_runtime_limits():
    """Warn, before submitting, about jobs whose estimate exceeds the partition's limit: training
    resumes from its checkpoint on the next attempt, any other job would fail."""
    from arepas import resources

    for dataset in used_datasets():
        if dataset not in PRETRAINED and subjects_of(dataset, ["train"]):
            for network, steps in planned_steps_of(dataset).items():
                seconds, _ = resources.training_estimate(
                    network, steps, MAX_RUNTIME_MIN
                )
                wanted = resources.runtime_min(seconds, 1, 10**9)
                if network in resources.GPU_S_PER_STEP and wanted > MAX_RUNTIME_MIN:
                    logger.warning(
                        f"train_{network} (dataset '{dataset}'): about {wanted} min for "
                        f"{steps:,} steps on a GPU, above cluster.max_runtime_min "
                        f"({MAX_RUNTIME_MIN}); it trains over several attempts, each resuming "
                        "from the last checkpoint, so give it enough `retries` or set max_steps"
                    )
        for rule_name in resources.SUBJECT_RATES:
            longest = max(
                resources.subject_estimate(rule_name, *subject_size(dataset, s))[0]
                for s in subjects_of(dataset)
            )
            wanted = resources.runtime_min(longest, 1, 10**9)
            if wanted > MAX_RUNTIME_MIN:
                logger.warning(
                    f"{rule_name} (dataset '{dataset}'): its largest subject's job is "
                    f"estimated at {wanted} min, above cluster.max_runtime_min "
                    f"({MAX_RUNTIME_MIN}); it cannot resume, so raise the limit"
                )


if MAIN:
    check_runtime_limits()
