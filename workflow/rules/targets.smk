# Stage targets: `snakemake --cores all index_all` builds everything up to the indexes of every
# unit (chromosome or chunk) and mask, and nothing downstream of them. Use these instead of `--until index`:
# Snakemake's --until cannot see the jobs behind a checkpoint (snakemake/snakemake#2824), and every
# stage after `mask` is behind one (its paths carry the mask hash, known once the mask exists).


rule window_all:
    input:
        lambda wildcards: [L.windows(c, "windows.json") for c in units()],


rule mask_all:
    input:
        lambda wildcards: [L.current_masks(c) for c in units()],


rule tokenize_all:
    input:
        lambda wildcards: for_each_unit(
            lambda c: [L.tokens(c, h, s) for h in mask_hashes(c) for s in SPLITS]
        ),


rule index_all:
    input:
        lambda wildcards: for_each_unit(
            lambda c: [L.index(c, h) for h in mask_hashes(c)]
        ),


rule retrieve_all:
    input:
        lambda wildcards: for_each_unit(
            lambda c: [L.retrieval(c, h, s) for h in mask_hashes(c) for s in SPLITS]
        ),
