# Every method scored by the same code on the same sites: reference sites in the truth, not typed in
# the target.


rule evaluate:
    input:
        unpack(typed_given),
        imputed=L.imputed("{unit}", "{method}"),
        truth=truth_vcf,
        sites=L.sites("{unit}"),
        typed=L.aligned("{unit}", "target.vcf.gz"),
    output:
        sites=L.evaluation("{unit}", "{method}", "sites.tsv.gz"),
        bins=L.evaluation("{unit}", "{method}", "bins.tsv"),
        summary=L.evaluation("{unit}", "{method}", "summary.json"),
    log:
        logs("evaluate/{unit}/{method}.log"),
    benchmark:
        bench("evaluate/{unit}/{method}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        **INDEL_PARAMS,
        core=unit_core,
        # the imputation reference, whose counts (sites.parquet) bin the sites by MAF
        splits=reference_splits(),
    script:
        "../scripts/evaluate.py"


rule compare:
    input:
        tables=evaluation_tables,
        summaries=evaluation_summaries,
    output:
        table=report(
            L.comparison("comparison.tsv"),
            category="Imputation accuracy",
            caption="../report/comparison.rst",
        ),
        calibration=report(
            L.comparison("calibration.tsv"),
            category="Imputation accuracy",
            caption="../report/calibration.rst",
        ),
        r2_plot=report(
            L.comparison("r2_by_maf.png"),
            category="Imputation accuracy",
            caption="../report/r2_by_maf.rst",
        ),
        calibration_plot=report(
            L.comparison("r2_calibration.png"),
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
