from ragimpute.ligate import ligate
from ragimpute.smk import run

cores = snakemake.params.cores
run(
    snakemake,
    ligate,
    parts=[(vcf, lo, hi) for vcf, (lo, hi) in zip(snakemake.input, cores, strict=True)],
    out_vcf=snakemake.output.vcf,
)
