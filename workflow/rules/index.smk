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


# The engine's state index: one FAISS index per cM step over the imputation reference (the train split
# for the held-out targets, the whole panel for your own), keyed on the mask hash like the index above.
rule states:
    input:
        unpack(states_inputs),
    output:
        directory(res("states/{chrom}/{mask_hash}")),
    log:
        logs("states/{chrom}/{mask_hash}.log"),
    benchmark:
        bench("states/{chrom}/{mask_hash}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    resources:
        mem_mb=4000,
    params:
        splits=reference_splits(),
        store=lambda wildcards: res(f"masks/{wildcards.chrom}"),
        engine={k: config["engine"][k] for k in ("step_cm", "span_steps", "seed")},
    script:
        "../scripts/states.py"
