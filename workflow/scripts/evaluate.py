import json
from pathlib import Path

from ragimpute.evaluate import evaluate
from ragimpute.smk import run

# Minimac4's harmonised target leaves out typed sites with a missing call (its report says how many)
report = snakemake.input.get("typed_report")
given = json.loads(Path(report).read_text())["sites_kept"] if report else None
run(
    snakemake,
    evaluate,
    imputed_vcf=snakemake.input.imputed,
    truth_vcf=snakemake.input.truth,
    sites_parquet=snakemake.input.sites,
    typed_vcf=snakemake.input.typed,
    method=snakemake.wildcards.method,
    out_dir=Path(snakemake.output.bins).parent,
    core=snakemake.params.core,
    typed_sites_given=given,
    reference_splits=snakemake.params.splits,
)
