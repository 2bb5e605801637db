from ragimpute.retrieval import retrieve
from ragimpute.smk import run

run(
    snakemake,
    retrieve,
    tokens_path=snakemake.input.tokens,
    index_dir=snakemake.input.index,
    k=snakemake.params.k,
    out_path=snakemake.output[0],
    threads=snakemake.threads,
)
