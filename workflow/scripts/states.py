from pathlib import Path

from ragimpute.impute import engine_params
from ragimpute.smk import run
from ragimpute.states import build_states

run(
    snakemake,
    build_states,
    windows_dir=Path(snakemake.input.sites).parent,
    mask_store=snakemake.params.store,
    mask_hash=snakemake.wildcards.mask_hash,
    splits=list(snakemake.params.splits),
    out_dir=snakemake.output[0],
    params=engine_params(snakemake.params.engine),
    threads=snakemake.threads,
)
