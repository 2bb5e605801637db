from pathlib import Path

from ragimpute.genmap import write_site_map
from ragimpute.smk import run

run(
    snakemake,
    write_site_map,
    windows_dir=Path(snakemake.input.sites).parent,
    out=snakemake.output[0],
)
