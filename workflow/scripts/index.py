from ragimpute.index import build_index
from ragimpute.smk import run

run(
    snakemake,
    build_index,
    train_tokens=snakemake.input[0],
    out_dir=snakemake.output[0],
    kind=snakemake.params.kind,
    hnsw_m=snakemake.params.hnsw_m,
    threads=snakemake.threads,
)
