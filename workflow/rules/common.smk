import json
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from arepas import cohort

validate(config, schema="../schemas/config.schema.yaml")

DATASETS = config["datasets"]
DEMO = config["demo"].get("enabled", False)
SHEET_DIR = Path(config["subjects"]).parent


def load_subjects() -> pd.DataFrame:
    if DEMO:
        sheet = cohort.demo_sheet(config["demo"])
    else:
        sheet = cohort.read_sheet(config["subjects"])
    validate(sheet, schema="../schemas/subjects.schema.yaml")
    table = cohort.resolve_paths(sheet, SHEET_DIR)
    # Demo files are outputs of rule make_demo; a user's files must exist now.
    cohort.check_sheet(table, DATASETS, check_files=not DEMO)
    for row in table.itertuples():
        settings = DATASETS[row.dataset]
        reg = settings["registration"]
        if settings["modality"] == "mri" and reg["transform"] == "none" and not row.roi:
            raise cohort.SheetError(
                f"subject '{row.subject}', column 'roi': dataset '{row.dataset}' is MRI without "
                "registration, so the brain mask cannot come from a template; give an roi mask"
            )
    return table.set_index("subject", drop=False)


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


def preprocess_settings(wildcards):
    keys = (
        "modality",
        "spacing",
        "slice_axis",
        "slice_size",
        "intensity",
        "roi",
        "registration",
    )
    return {k: DATASETS[wildcards.dataset].get(k) for k in keys}


def preprocessed(dataset, subjects, name="slices.npz"):
    return [f"results/{dataset}/preprocessed/{s}/{name}" for s in subjects]


def map_model_files(wildcards):
    models = f"results/{wildcards.dataset}/models"
    files = {}
    if {"arepas", "patch"} & set(config["methods"]):
        files["scorer"] = f"{models}/scorer.pt"
    if "ae" in config["methods"]:
        files["autoencoder"] = f"{models}/autoencoder.pt"
    return files


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
        method=config["methods"],
        subject=subjects,
    )


def evaluation_files(wildcards):
    test = subjects_of(wildcards.dataset, ["test"])
    val = subjects_of(wildcards.dataset, ["val"])
    return {
        **map_model_files(wildcards),
        "maps": native_maps(wildcards.dataset, test + val),
        "roi": preprocessed(wildcards.dataset, test + val, "roi_native.nii.gz"),
        "lesion": [SUBJECTS.loc[s, "lesion"] for s in test],
    }


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
    for dataset in evaluated_datasets():
        outputs += expand(
            "results/{dataset}/figures/{name}.png",
            dataset=dataset,
            name=[
                "pr_curves",
                "dice_per_subject",
                "translator_training",
                "scorer_training",
            ],
        )
    if evaluated_datasets():
        outputs.append("results/summary.md")
    return outputs
