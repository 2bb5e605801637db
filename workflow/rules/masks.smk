# A checkpoint: the hashes of the masks it makes decide the paths of the tokens and indexes.
# The content-addressed store masks/{unit}/{hash}/ is written only when that hash is new, so an
# earlier mask setting finds its tokens and index already built.
checkpoint mask:
    input:
        sites=L.sites("{unit}"),
        array=mask_array_input,
    output:
        L.current_masks("{unit}"),
    log:
        logs("mask/{unit}.log"),
    benchmark:
        bench("mask/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        spec=config["mask"],
        store=lambda wildcards: L.mask_store(wildcards.unit),
    script:
        "../scripts/mask.py"


rule tokenize:
    input:
        windows=L.windows("{unit}", "windows.parquet"),
        haplotypes=L.haplotypes("{unit}", "{split}"),
        mask=stored_mask,
    output:
        L.tokens("{unit}", "{mask_hash}", "{split}"),
    log:
        logs("tokenize/{unit}/{mask_hash}/{split}.log"),
    benchmark:
        bench("tokenize/{unit}/{mask_hash}/{split}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        reference_record=REFERENCE_RECORD_PARAM,
    script:
        "../scripts/tokenize.py"
