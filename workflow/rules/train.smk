# The engine's P(ALT) on the panel's own haplotypes under a training mask (train: copying from the
# other train samples; val: from the train split): what the network learns to correct.
rule prior:
    input:
        sites=L.sites("{unit}"),
        windows=L.windows("{unit}", "windows.parquet"),
        reference=L.haplotypes("{unit}", "train"),
        queries=L.haplotypes("{unit}", "{split}"),
        mask=stored_mask,
    output:
        L.prior("{unit}", "{mask_hash}", "{split}"),
    log:
        logs("prior/{unit}/{mask_hash}/{split}.log"),
    benchmark:
        bench("prior/{unit}/{mask_hash}/{split}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=8000,
    params:
        store=lambda wildcards: L.mask_store(wildcards.unit),
        engine=engine_rule_settings(),
        engine_version=ENGINE_PARAM,
        reference_record=REFERENCE_RECORD_PARAM,
    script:
        "../scripts/prior.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        model=L.model("model.pt"),
        metrics=report(
            L.model("metrics.csv"),
            category="Training",
            caption="../report/train_metrics.rst",
        ),
        curves=report(
            L.model("curves.png"),
            category="Training",
            caption="../report/train_curves.rst",
        ),
        summary=L.model("train.json"),
        metrics_tsv=L.model("metrics.tsv"),
    log:
        logs("train.log"),
    benchmark:
        bench("train.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        cfg=train_rule_settings(),
        k=config["retrieval"]["k"],
        masks=lambda wildcards: {u: mask_hashes(u) for u in units()},
        reference_record=REFERENCE_RECORD_PARAM,
    script:
        "../scripts/train.py"
