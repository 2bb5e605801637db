from ragimpute.ligate import ligate_stage
from ragimpute.smk import run

cores = snakemake.params.cores
run(
    snakemake,
    ligate_stage,
    parts=[(vcf, lo, hi) for vcf, (lo, hi) in zip(snakemake.input, cores, strict=True)],
    out_vcf=snakemake.output.vcf,
    report_json=snakemake.output.report,
)
