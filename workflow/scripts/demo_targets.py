from pathlib import Path

from ragimpute.smk import run
from ragimpute.targets import make_demo_targets

run(
    snakemake,
    make_demo_targets,
    panel_vcf=snakemake.input.panel,
    split_tsv=snakemake.input.split,
    windows_dir=Path(snakemake.input.sites).parent,
    array_manifest=snakemake.input.array,
    chrom=snakemake.params.chrom,
    target_vcf=snakemake.output.target,
    truth_vcf=snakemake.output.truth,
    pass_only=snakemake.params.pass_only,
    noise=dict(snakemake.params.noise),
    report_json=snakemake.output.report,
    indels=bool(snakemake.params.get("indels")),
)
