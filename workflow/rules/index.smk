rule index:
    input:
        L.tokens("{unit}", "{mask_hash}", "train"),
    output:
        directory(L.index("{unit}", "{mask_hash}")),
    log:
        logs("index/{unit}/{mask_hash}.log"),
    benchmark:
        bench("index/{unit}/{mask_hash}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["index"]["threads"]
    resources:
        mem_mb=4000,
    params:
        kind=config["index"]["kind"],
        hnsw_m=config["index"]["hnsw_m"],
        reference_record=REFERENCE_RECORD_PARAM,
    script:
        "../scripts/index.py"


rule retrieve:
    input:
        tokens=L.tokens("{unit}", "{mask_hash}", "{split}"),
        index=L.index("{unit}", "{mask_hash}"),
    output:
        L.retrieval("{unit}", "{mask_hash}", "{split}"),
    log:
        logs("retrieve/{unit}/{mask_hash}/{split}.log"),
    benchmark:
        bench("retrieve/{unit}/{mask_hash}/{split}.tsv")
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
        directory(L.states("{unit}", "{mask_hash}")),
    log:
        logs("states/{unit}/{mask_hash}.log"),
    benchmark:
        bench("states/{unit}/{mask_hash}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=4000,
    params:
        splits=reference_splits(),
        store=lambda wildcards: L.mask_store(wildcards.unit),
        engine={k: config["engine"][k] for k in STATES_RULE_SETTINGS},
        engine_version=ENGINE_PARAM,
        reference_record=REFERENCE_RECORD_PARAM,
    script:
        "../scripts/states.py"
