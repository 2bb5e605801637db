from pathlib import Path

from ragimpute.smk import run
from ragimpute.targets import write_reference_vcf

run(
    snakemake,
    write_reference_vcf,
    panel_vcf=snakemake.input.panel,
    split_tsv=snakemake.input.split,
    windows_dir=Path(snakemake.input.sites).parent,
    chrom=snakemake.params.chrom,
    out_vcf=snakemake.output.vcf,
    pass_only=snakemake.params.pass_only,
    splits=list(snakemake.params.splits),
    indels=bool(snakemake.params.get("indels")),
)
