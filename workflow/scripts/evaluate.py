from pathlib import Path

from ragimpute.evaluate import evaluate
from ragimpute.smk import run

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
)
