from ragimpute.ligate import merge_batch_stage
from ragimpute.smk import run

run(
    snakemake,
    merge_batch_stage,
    vcfs=list(snakemake.input.vcfs),
    stats=list(snakemake.input.stats),
    out_vcf=snakemake.output.vcf,
    report_json=snakemake.output.report,
)
