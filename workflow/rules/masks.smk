# A checkpoint: the hashes of the masks it makes decide the paths of the tokens and indexes.
# The content-addressed store masks/{chrom}/{hash}/ is written only when that hash is new, so an
# earlier mask setting finds its tokens and index already built.
checkpoint mask:
    input:
        sites=res("windows/{chrom}/sites.parquet"),
        array=mask_array_input,
    output:
        res("masks/{chrom}/current.json"),
    log:
        logs("mask/{chrom}.log"),
    benchmark:
        bench("mask/{chrom}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        spec=config["mask"],
        store=lambda wildcards: res(f"masks/{wildcards.chrom}"),
    script:
        "../scripts/mask.py"


rule tokenize:
    input:
        windows=res("windows/{chrom}/windows.parquet"),
        haplotypes=res("windows/{chrom}/haplotypes/{split}.parquet"),
        mask=stored_mask,
    output:
        res("tokens/{chrom}/{mask_hash}/{split}.parquet"),
    log:
        logs("tokenize/{chrom}/{mask_hash}/{split}.log"),
    benchmark:
        bench("tokenize/{chrom}/{mask_hash}/{split}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    script:
        "../scripts/tokenize.py"
