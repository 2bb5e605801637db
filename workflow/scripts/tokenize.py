from pathlib import Path

from ragimpute.smk import run
from ragimpute.tokens import run_tokenize_stage

run(
    snakemake,
    run_tokenize_stage,
    windows_dir=Path(snakemake.input.windows).parent,
    mask_store=Path(snakemake.input.mask).parent.parent,
    mask_hash=snakemake.wildcards.mask_hash,
    split=snakemake.wildcards.split,
    out_path=snakemake.output[0],
)
