from pathlib import Path

from ragimpute.smk import run
from ragimpute.windows import run_window_stage

run(
    snakemake,
    run_window_stage,
    panel_vcf=snakemake.input.panel,
    split_tsv=snakemake.input.split,
    chrom=snakemake.params.chrom,
    length=snakemake.params.length,
    overlap=snakemake.params.overlap,
    out_dir=Path(snakemake.output.sites).parent,
    pass_only=snakemake.params.pass_only,
    genetic_map=snakemake.input.genetic_map or None,
    region=snakemake.params.region,
    indels=bool(snakemake.params.get("indels")),
)
