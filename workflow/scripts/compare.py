from pathlib import Path

from ragimpute.evaluate import compare
from ragimpute.smk import run

run(
    snakemake,
    compare,
    site_tables=list(snakemake.input.tables),
    out_dir=Path(snakemake.output.table).parent,
    methods=list(snakemake.params.methods),
)
