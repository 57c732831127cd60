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
    keys = ("modality", "spacing", "slice_axis", "slice_size", "intensity", "roi", "registration")
    return {k: DATASETS[wildcards.dataset].get(k) for k in keys}


def preprocessed(dataset, subjects, name="slices.npz"):
    return [f"results/{dataset}/preprocessed/{s}/{name}" for s in subjects]


def final_outputs():
    outputs = []
    for dataset in used_datasets():
        outputs += preprocessed(dataset, subjects_of(dataset))
    return outputs


def map_model_files(wildcards):
    models = f"results/{wildcards.dataset}/models"
    files = {}
    if {"arepas", "patch"} & set(config["methods"]):
        files["scorer"] = f"{models}/scorer.pt"
    if "ae" in config["methods"]:
        files["autoencoder"] = f"{models}/autoencoder.pt"
    return files
