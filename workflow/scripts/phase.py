from ragimpute.phasing import phase_target
from ragimpute.smk import run

run(
    snakemake,
    phase_target,
    target_vcf=snakemake.input.target,
    reference_vcf=snakemake.input.reference,
    out_vcf=snakemake.output.vcf,
    filled_vcf=snakemake.output.filled,
    report_json=snakemake.output.report,
    phaser=snakemake.params.phaser,
    genetic_map=snakemake.input.genetic_map or None,
    threads=snakemake.threads,
    seed=snakemake.params.seed,
    java_mb=snakemake.params.java_mb,
    args=snakemake.params.args,
    log_path=snakemake.log[0],
    keep_given_phase=snakemake.params.keep_given_phase,
)
