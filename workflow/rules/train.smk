# The engine's P(ALT) on the panel's own haplotypes under a training mask (train: copying from the
# other train samples; val: from the train split): what the network learns to correct.
rule prior:
    input:
        sites=res("windows/{chrom}/sites.parquet"),
        windows=res("windows/{chrom}/windows.parquet"),
        reference=res("windows/{chrom}/haplotypes/train.parquet"),
        queries=res("windows/{chrom}/haplotypes/{split}.parquet"),
        mask=stored_mask,
    output:
        res("prior/{chrom}/{mask_hash}/{split}.parquet"),
    log:
        logs("prior/{chrom}/{mask_hash}/{split}.log"),
    benchmark:
        bench("prior/{chrom}/{mask_hash}/{split}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=8000,
    params:
        store=lambda wildcards: res(f"masks/{wildcards.chrom}"),
        engine=config["engine"],
        batch_haplotypes=config["impute"]["batch_haplotypes"],
    script:
        "../scripts/prior.py"


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
