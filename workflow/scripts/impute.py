from pathlib import Path

from ragimpute.impute import run_impute_stage
from ragimpute.smk import engine_settings, known_inputs, run

inp = known_inputs(snakemake, "alignment", "target", "sites", "mask")
batch = snakemake.params.get("sample_batch")
run(
    snakemake,
    run_impute_stage,
    method=snakemake.wildcards.method,
    alignment_json=inp.alignment,
    target_vcf=inp.target,
    windows_dir=Path(inp.sites).parent,
    mask_store=Path(inp.mask).parent.parent,
    index_dir=inp.get("index"),
    out_vcf=snakemake.output.vcf,
    report_json=snakemake.output.report,
    options=dict(snakemake.params.options),
    k=snakemake.params.k,
    # not a parameter of the rule: it leaves the output as it is, so a change must not rerun the job
    batch_haplotypes=snakemake.config["impute"]["batch_haplotypes"],
    panel_vcf=inp.panel,
    checkpoint=inp.get("model"),
    device=snakemake.params.device,
    threads=snakemake.threads,
    states_dir=inp.get("states"),
    engine=engine_settings(snakemake),
    sample_batch=tuple(batch) if batch else None,
    stats_out=snakemake.output.get("stats"),
    gp=snakemake.params.gp,
    hds=bool(snakemake.params.get("hds")),
)
