from pathlib import Path

from ragimpute.smk import run
from ragimpute.targets import harmonise_target

run(
    snakemake,
    harmonise_target,
    target_vcf=snakemake.input.target,
    windows_dir=Path(snakemake.input.sites).parent,
    split_tsv=snakemake.input.split,
    mask_store=snakemake.params.store,
    out_dir=Path(snakemake.output.alignment).parent,
    chrom=snakemake.params.chrom,
    max_missing=snakemake.params.max_missing,
    panel_vcf=snakemake.input.panel,
    reference_splits=list(snakemake.params.splits),
    phase=snakemake.params.phase,
    region=snakemake.params.region,
)
