# AREPAS: reconstruction-based anomaly segmentation with semantic patch scoring.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# The image of containers/Containerfile, used by `--sdm apptainer` only (README, "Installing on a
# cluster"): a local .sif file, or any URL Apptainer reads (docker://..., oras://...).
container: os.environ.get("AREPAS_CONTAINER", "arepas.sif")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/translator.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/masks.smk"


# Jobs of a few seconds that read only small tables: under SLURM they run in the main process
# instead of waiting in the queue for a node ("Speed per rule and stage" in BENCHMARKS.md).
localrules:
    summary_table,
    dataset_figures,
    scorer_figure,


rule all:
    default_target: True
    input:
        final_outputs(),
