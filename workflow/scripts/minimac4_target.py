from ragimpute.smk import run
from ragimpute.targets import write_minimac4_target

run(
    snakemake,
    write_minimac4_target,
    aligned_vcf=snakemake.input[0],
    out_vcf=snakemake.output.vcf,
    report_json=snakemake.output.report,
)
