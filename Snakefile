# Retrieval-augmented genotype imputation. Configure in config/config.yaml; see README.md.
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/windows.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/impute.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/targets.smk"


rule all:
    default_target: True
    input:
        get_final_output,
