rule window:
    input:
        panel=panel_vcf(),
        split=res("split/samples.tsv"),
        genetic_map=genetic_map(),
    output:
        sites=res("windows/{chrom}/sites.parquet"),
        windows=res("windows/{chrom}/windows.parquet"),
        haplotypes=expand(
            res("windows/{{chrom}}/haplotypes/{split}.parquet"), split=SPLITS
        ),
        skipped=res("windows/{chrom}/skipped.tsv"),
        summary=res("windows/{chrom}/windows.json"),
    log:
        logs("window/{chrom}.log"),
    benchmark:
        bench("window/{chrom}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    resources:
        mem_mb=4000,
    params:
        length=config["windows"]["length"],
        overlap=config["windows"]["overlap"],
        pass_only=config["panel"]["pass_only"],
    script:
        "../scripts/window.py"
