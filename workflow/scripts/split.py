from ragimpute.smk import run
from ragimpute.split import run_split_stage

run(
    snakemake,
    run_split_stage,
    panel_vcf=snakemake.input.panel,
    out_tsv=snakemake.output.tsv,
    fractions=dict(snakemake.params.fractions),
    seed=snakemake.params.seed,
    table=snakemake.input.table or None,
    populations=snakemake.input.populations or None,
    target_population=snakemake.params.target_population,
)
