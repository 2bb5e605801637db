rule index:
    input:
        res("tokens/{chrom}/{mask_hash}/train.parquet"),
    output:
        directory(res("index/{chrom}/{mask_hash}")),
    log:
        logs("index/{chrom}/{mask_hash}.log"),
    benchmark:
        bench("index/{chrom}/{mask_hash}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["index"]["threads"]
    resources:
        mem_mb=4000,
    params:
        kind=config["index"]["kind"],
        hnsw_m=config["index"]["hnsw_m"],
    script:
        "../scripts/index.py"


rule retrieve:
    input:
        tokens=res("tokens/{chrom}/{mask_hash}/{split}.parquet"),
        index=res("index/{chrom}/{mask_hash}"),
    output:
        res("retrieval/{chrom}/{mask_hash}/{split}.parquet"),
    log:
        logs("retrieve/{chrom}/{mask_hash}/{split}.log"),
    benchmark:
        bench("retrieve/{chrom}/{mask_hash}/{split}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["index"]["threads"]
    params:
        k=config["retrieval"]["k"],
    script:
        "../scripts/retrieve.py"
