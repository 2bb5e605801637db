from pathlib import Path

from ragimpute.evaluate import evaluate, sites_in_core
from ragimpute.smk import run

# Minimac4's target can leave out typed sites with a missing call: those of this unit's core it has
given_vcf = snakemake.input.get("typed_given")
given = sites_in_core(given_vcf, snakemake.params.core) if given_vcf else None
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
    indels=bool(snakemake.params.get("indels")),
)
