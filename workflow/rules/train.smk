rule train:
    input:
        unpack(train_inputs),
    output:
        model=res("model/model.pt"),
        metrics=report(
            res("model/metrics.csv"),
            category="Training",
            caption="../report/train_metrics.rst",
        ),
        curves=report(
            res("model/curves.png"),
            category="Training",
            caption="../report/train_curves.rst",
        ),
        summary=res("model/train.json"),
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
        cfg=config["train"],
        k=config["retrieval"]["k"],
        masks=lambda wildcards: {c: mask_hashes(c) for c in chromosomes()},
    script:
        "../scripts/train.py"
