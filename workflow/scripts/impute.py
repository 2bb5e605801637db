from pathlib import Path

from ragimpute.impute import run_impute_stage
from ragimpute.smk import run

run(
    snakemake,
    run_impute_stage,
    method=snakemake.wildcards.method,
    alignment_json=snakemake.input.alignment,
    target_vcf=snakemake.input.target,
    windows_dir=Path(snakemake.input.sites).parent,
    mask_store=snakemake.params.store,
    index_root=snakemake.params.index_root,
    out_vcf=snakemake.output.vcf,
    report_json=snakemake.output.report,
    options=dict(snakemake.params.options),
    k=snakemake.params.k,
    batch_haplotypes=snakemake.params.batch_haplotypes,
    panel_vcf=snakemake.input.panel,
    checkpoint=snakemake.input.get("model"),
    device=snakemake.params.device,
    threads=snakemake.threads,
    states_root=snakemake.params.states_root,
    engine=dict(snakemake.params.engine),
)
