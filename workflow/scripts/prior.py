from pathlib import Path

from ragimpute.impute import engine_device, engine_params
from ragimpute.prior import run_prior_stage
from ragimpute.smk import engine_settings, run

engine = engine_settings(snakemake)

run(
    snakemake,
    run_prior_stage,
    windows_dir=Path(snakemake.input.sites).parent,
    mask_store=snakemake.params.store,
    mask_hash=snakemake.wildcards.mask_hash,
    split=snakemake.wildcards.split,
    out=snakemake.output[0],
    params=engine_params(engine),
    # not a parameter of the rule: the output is the same for any batch (see the impute rule)
    batch_haplotypes=snakemake.config["impute"]["batch_haplotypes"],
    threads=snakemake.threads,
    device=engine_device(engine),
)
