# With demo.cohort_samples, the demo also simulates a target cohort (demo/cohort*.vcf.gz).
DEMO_COHORT = (
    {
        "cohort": L.demo("cohort.vcf.gz"),
        "cohort_tbi": L.demo("cohort.vcf.gz.tbi"),
        "cohort_truth": L.demo("cohort_truth.vcf.gz"),
        "cohort_truth_tbi": L.demo("cohort_truth.vcf.gz.tbi"),
    }
    if config["demo"]["cohort_samples"] > 0
    else {}
)


rule demo_panel:
    output:
        **DEMO_COHORT,
        vcf=L.demo("panel.vcf.gz"),
        tbi=L.demo("panel.vcf.gz.tbi"),
        array=L.demo("array_sites.tsv"),
        info=L.demo("demo.json"),
        populations=L.demo("populations.tsv"),
        genetic_map=L.demo("genetic_map.map"),
    log:
        logs("demo_panel.log"),
    benchmark:
        bench("demo_panel.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        # the simulation's keys only: the targets' array noise and use_map change no simulated data
        spec={k: v for k, v in config["demo"].items() if k not in DEMO_NOT_SIMULATION},
    script:
        "../scripts/demo_panel.py"


rule split:
    input:
        panel=panel_vcf(),
        table=split_table(),
        populations=demo_populations(),
    output:
        tsv=L.split("samples.tsv"),
        json=L.split("samples.json"),
    log:
        logs("split.log"),
    benchmark:
        bench("split.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        fractions=config["split"]["fractions"],
        seed=config["split"]["seed"],
        target_population=ADMIXED_TARGETS,
    script:
        "../scripts/split.py"
