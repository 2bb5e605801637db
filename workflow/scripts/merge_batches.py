from ragimpute.ligate import merge_batch_stage
from ragimpute.smk import known_inputs, run

inp = known_inputs(snakemake, "vcfs", "stats")
run(
    snakemake,
    merge_batch_stage,
    vcfs=list(inp.vcfs),
    stats=list(inp.stats),
    out_vcf=snakemake.output.vcf,
    report_json=snakemake.output.report,
)
