# AREPAS: reconstruction-based anomaly segmentation with semantic patch scoring.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/translator.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/masks.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
