# Stage targets: `snakemake --cores all index_all` builds everything up to the indexes of every
# chromosome and mask, and nothing downstream of them. Use these instead of `--until index`:
# Snakemake's --until cannot see the jobs behind a checkpoint (snakemake/snakemake#2824), and every
# stage after `mask` is behind one (its paths carry the mask hash, known once the mask exists).


rule window_all:
    input:
        lambda wildcards: [res(f"windows/{c}/windows.json") for c in chromosomes()],


rule mask_all:
    input:
        lambda wildcards: [res(f"masks/{c}/current.json") for c in chromosomes()],


rule tokenize_all:
    input:
        lambda wildcards: for_each_chromosome(
            lambda c: [
                res(f"tokens/{c}/{h}/{s}.parquet")
                for h in mask_hashes(c)
                for s in SPLITS
            ]
        ),


rule index_all:
    input:
        lambda wildcards: for_each_chromosome(
            lambda c: [res(f"index/{c}/{h}") for h in mask_hashes(c)]
        ),


rule retrieve_all:
    input:
        lambda wildcards: for_each_chromosome(
            lambda c: [
                res(f"retrieval/{c}/{h}/{s}.parquet")
                for h in mask_hashes(c)
                for s in SPLITS
            ]
        ),
