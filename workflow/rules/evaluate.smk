# Every method scored by the same code on the same sites: reference sites in the truth, not typed in
# the target.


rule evaluate:
    input:
        imputed=res("impute/{chrom}/{method}.vcf.gz"),
        truth=truth_vcf,
        sites=res("windows/{chrom}/sites.parquet"),
        typed=res("targets/{chrom}/aligned/target.vcf.gz"),
    output:
        sites=res("evaluation/{chrom}/{method}/sites.tsv.gz"),
        bins=res("evaluation/{chrom}/{method}/bins.tsv"),
        summary=res("evaluation/{chrom}/{method}/summary.json"),
    log:
        logs("evaluate/{chrom}/{method}.log"),
    benchmark:
        bench("evaluate/{chrom}/{method}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        evaluation_tables,
    output:
        table=report(
            res("evaluation/comparison.tsv"),
            category="Imputation accuracy",
            caption="../report/comparison.rst",
        ),
        calibration=report(
            res("evaluation/calibration.tsv"),
            category="Imputation accuracy",
            caption="../report/calibration.rst",
        ),
        r2_plot=report(
            res("evaluation/r2_by_maf.png"),
            category="Imputation accuracy",
            caption="../report/r2_by_maf.rst",
        ),
        calibration_plot=report(
            res("evaluation/r2_calibration.png"),
            category="Imputation accuracy",
            caption="../report/r2_calibration.rst",
        ),
    log:
        logs("compare.log"),
    benchmark:
        bench("compare.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        methods=methods(),
    script:
        "../scripts/compare.py"
