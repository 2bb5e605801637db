rule window:
    input:
        panel=panel_vcf(),
        split=L.split("samples.tsv"),
        genetic_map=genetic_map(),
    output:
        sites=L.sites("{unit}"),
        windows=L.windows("{unit}", "windows.parquet"),
        haplotypes=[L.haplotypes("{unit}", s) for s in SPLITS],
        skipped=L.windows("{unit}", "skipped.tsv"),
        summary=L.windows("{unit}", "windows.json"),
    log:
        logs("window/{unit}.log"),
    benchmark:
        bench("window/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    resources:
        mem_mb=4000,
    params:
        **INDEL_PARAMS,
        length=config["windows"]["length"],
        overlap=config["windows"]["overlap"],
        pass_only=config["panel"]["pass_only"],
        chrom=unit_chrom,
        region=unit_region,
    script:
        "../scripts/window.py"
