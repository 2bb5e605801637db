from pathlib import Path

from ragimpute.masks import run_mask_stage_dir
from ragimpute.smk import run

run(
    snakemake,
    run_mask_stage_dir,
    windows_dir=Path(snakemake.input.sites).parent,
    cfg=dict(snakemake.params.spec),
    store=snakemake.params.store,
    current_json=snakemake.output[0],
    array_manifest=snakemake.input.array or None,
)
