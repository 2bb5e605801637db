# Imputation of targets typed at array sites, by our predictors and by Beagle / Minimac4, all from the
# same reference (the panel's train split for the demo's held-out targets, the whole panel for yours)
# and the same harmonised target: phased by the `phase` rule when it has unphased genotypes (ours and
# Minimac4 read the phased target; Beagle phases and imputes the harmonised one in one run, as its
# users run it), with the same genetic map.

# Runs Beagle and Minimac4 so that a tool that cannot take the input is left out, not the run (an input
# of their rules: a changed script runs them again).
EXTERNAL_TOOL = os.path.join(
    workflow.basedir, "workflow", "scripts", "external_tool.sh"
)


rule reference_vcf:
    input:
        panel=panel_vcf(),
        split=L.split("samples.tsv"),
        sites=L.sites("{unit}"),
    output:
        vcf=L.targets("{unit}", "reference.vcf.gz"),
        tbi=L.targets("{unit}", "reference.vcf.gz.tbi"),
    log:
        logs("reference_vcf/{unit}.log"),
    benchmark:
        bench("reference_vcf/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        **INDEL_PARAMS,
        pass_only=config["panel"]["pass_only"],
        splits=reference_splits(),
        chrom=unit_chrom,
        region=unit_region,
    script:
        "../scripts/reference_vcf.py"


# The held-out test split as targets: typed at the array sites, with the truth at every site.
rule demo_targets:
    input:
        panel=panel_vcf(),
        split=L.split("samples.tsv"),
        sites=L.sites("{unit}"),
        array=demo_target_array,
    output:
        target=L.targets("{unit}", "target.vcf.gz"),
        target_tbi=L.targets("{unit}", "target.vcf.gz.tbi"),
        truth=L.targets("{unit}", "truth.vcf.gz"),
        truth_tbi=L.targets("{unit}", "truth.vcf.gz.tbi"),
        report=L.targets("{unit}", "target.json"),
    log:
        logs("demo_targets/{unit}.log"),
    benchmark:
        bench("demo_targets/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        **INDEL_PARAMS,
        pass_only=config["panel"]["pass_only"],
        chrom=unit_chrom,
        region=unit_region,
        noise={
            "unphased": config["demo"]["unphased_targets"],
            "genotype_error": config["demo"]["genotype_error"],
            "missing_rate": config["demo"]["missing_rate"],
            "seed": config["demo"]["seed"],
        },
    script:
        "../scripts/demo_targets.py"


# A checkpoint: the target's typed sites make a mask, stored by hash beside the training masks; its
# index is built (or re-used, when the target is typed on the training array) by the `index` rule.
checkpoint target_mask:
    input:
        target=target_vcf,
        split=L.split("samples.tsv"),
        sites=L.sites("{unit}"),
        # after the training masks: both write into the same store
        masks=L.current_masks("{unit}"),
        panel=panel_vcf(),
    output:
        alignment=L.aligned("{unit}", "alignment.json"),
        vcf=L.aligned("{unit}", "target.vcf.gz"),
        tbi=L.aligned("{unit}", "target.vcf.gz.tbi"),
        unmatched=L.aligned("{unit}", "unmatched.tsv"),
    log:
        logs("target_mask/{unit}.log"),
    benchmark:
        bench("target_mask/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        store=lambda wildcards: L.mask_store(wildcards.unit),
        max_missing=config["impute"]["max_missing"],
        splits=reference_splits(),
        phase=config["impute"]["phase"],
        chrom=unit_chrom,
        region=unit_region,
    script:
        "../scripts/target_mask.py"


# The genetic map as Beagle, Minimac4 and the phaser read it: PLINK (chrom id cM bp), the reference's
# chromosome name, a point at every reference site with the cM our copying model uses (the map
# interpolated and extrapolated as Beagle does), so that every method gets the same information.
rule tool_map:
    input:
        sites=L.sites("{unit}"),
    output:
        L.targets("{unit}", "genetic_map.map"),
    log:
        logs("tool_map/{unit}.log"),
    benchmark:
        bench("tool_map/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    script:
        "../scripts/tool_map.py"


# The harmonised target phased against the imputation reference (impute.phase: auto when a
# heterozygote is unphased, always), by Beagle 5.4 (impute=false) or SHAPEIT5 phase_common
# (impute.phaser), with the genetic map when one is used. The markers, samples and called genotypes
# are checked to come back unchanged; missing calls are kept missing (every method imputes them).
rule phase:
    input:
        target=L.aligned("{unit}", "target.vcf.gz"),
        tbi=L.aligned("{unit}", "target.vcf.gz.tbi"),
        reference=L.targets("{unit}", "reference.vcf.gz"),
        reference_tbi=L.targets("{unit}", "reference.vcf.gz.tbi"),
        genetic_map=tool_map,
    output:
        vcf=L.phased("{unit}", "target.vcf.gz"),
        tbi=L.phased("{unit}", "target.vcf.gz.tbi"),
        filled=L.phased("{unit}", "filled.vcf.gz"),
        filled_tbi=L.phased("{unit}", "filled.vcf.gz.tbi"),
        report=L.phased("{unit}", "phase.json"),
    log:
        logs("phase/{unit}.log"),
    benchmark:
        bench("phase/{unit}.tsv")
    conda:
        "../../envs/phase.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=config["baselines"]["beagle"]["mem_mb"],
    params:
        phaser=config["impute"]["phaser"],
        seed=config["baselines"]["beagle"]["seed"],
        args=config["impute"]["phase_args"],
        # impute.phase always re-phases every sample, including those given phased
        keep_given_phase=config["impute"]["phase"] != "always",
        java_mb=lambda wildcards, resources: int(0.85 * resources.mem_mb),
    script:
        "../scripts/phase.py"


# Our methods. With impute.batch_samples, each batch of target samples is a job of its own and the
# batches are merged (merge_batches); otherwise one job imputes every target of the unit.
# A parameter that changes reruns the job (Snakemake's rerun triggers), so each method gets only those
# that change its output: the engine's version and settings only the methods that run it (an engine
# upgrade reruns those and not `af` or `retrieval`), retrieval.k only the network (the retrieval
# baseline has its own, in `options`). impute.batch_haplotypes, which changes nothing in the output,
# is read by the script from the config.
IMPUTE_PARAMS = dict(
    engine_version=lambda wildcards: (
        ENGINE_PARAM if wildcards.method in ENGINE_METHODS else ""
    ),
    options=lambda wildcards: config["baselines"].get(wildcards.method, {}),
    k=lambda wildcards: config["retrieval"]["k"] if wildcards.method == "model" else 0,
    device=config["impute"]["device"],
    gp=config["impute"]["gp"],
    **when_on("impute.hds"),
    engine=lambda wildcards: (
        engine_rule_settings() if wildcards.method in ENGINE_METHODS else {}
    ),
)

if config["impute"]["batch_samples"]:

    rule impute:
        input:
            unpack(impute_inputs),
        output:
            vcf=L.batch("{unit}", "{method}", "{batch}"),
            tbi=L.batch("{unit}", "{method}", "{batch}", ".vcf.gz.tbi"),
            report=L.batch("{unit}", "{method}", "{batch}", ".json"),
            stats=L.batch("{unit}", "{method}", "{batch}", ".stats.npz"),
        log:
            logs("impute/{unit}/{method}.{batch}.log"),
        benchmark:
            bench("impute/{unit}/{method}.{batch}.tsv")
        wildcard_constraints:
            method="|".join(OUR_METHODS),
            batch=r"b\d{3}",
        conda:
            "../../envs/ragimpute.yaml"
        threads: config["impute"]["threads"]
        resources:
            mem_mb=8000,
        params:
            **IMPUTE_PARAMS,
            sample_batch=lambda wildcards: [
                int(wildcards.batch[1:]) * config["impute"]["batch_samples"],
                config["impute"]["batch_samples"],
            ],
        script:
            "../scripts/impute.py"

    # The batches side by side: every target sample, INFO AF and R2 recomputed over all of them.
    rule merge_batches:
        input:
            unpack(batch_inputs),
        output:
            vcf=L.imputed("{unit}", "{method}"),
            tbi=L.imputed("{unit}", "{method}", ".vcf.gz.tbi"),
            report=L.imputed("{unit}", "{method}", ".json"),
        log:
            logs("merge_batches/{unit}/{method}.log"),
        benchmark:
            bench("merge_batches/{unit}/{method}.tsv")
        wildcard_constraints:
            method="|".join(OUR_METHODS),
        conda:
            "../../envs/ragimpute.yaml"
        script:
            "../scripts/merge_batches.py"

else:

    rule impute:
        input:
            unpack(impute_inputs),
        output:
            vcf=L.imputed("{unit}", "{method}"),
            tbi=L.imputed("{unit}", "{method}", ".vcf.gz.tbi"),
            report=L.imputed("{unit}", "{method}", ".json"),
        log:
            logs("impute/{unit}/{method}.log"),
        benchmark:
            bench("impute/{unit}/{method}.tsv")
        wildcard_constraints:
            method="|".join(OUR_METHODS),
        conda:
            "../../envs/ragimpute.yaml"
        threads: config["impute"]["threads"]
        resources:
            mem_mb=8000,
        params:
            **IMPUTE_PARAMS,
        script:
            "../scripts/impute.py"


# A chunked chromosome's VCF: each site from the chunk whose core holds it (every method alike).
rule ligate:
    input:
        chunk_vcfs,
    output:
        vcf=L.imputed("{chrom}", "{method}"),
        tbi=L.imputed("{chrom}", "{method}", ".vcf.gz.tbi"),
        report=L.imputed("{chrom}", "{method}", ".json"),
    log:
        logs("ligate/{chrom}/{method}.log"),
    benchmark:
        bench("ligate/{chrom}/{method}.tsv")
    wildcard_constraints:
        chrom=_alternation(chunked_chromosomes()),
    conda:
        "../../envs/ragimpute.yaml"
    params:
        cores=chunk_cores,
    script:
        "../scripts/ligate.py"


# Beagle 5.4 on the same reference and harmonised target; its own log is appended to ours. Through
# external_tool.sh: when Beagle cannot run on the input (e.g. a window with a single typed marker),
# its output is a placeholder that says why, and the method is left out of the comparison.
rule beagle:
    input:
        ref=L.targets("{unit}", "reference.vcf.gz"),
        target=L.aligned("{unit}", "target.vcf.gz"),
        runner=EXTERNAL_TOOL,
        genetic_map=tool_map,
    output:
        vcf=L.imputed("{unit}", "beagle"),
        tbi=L.imputed("{unit}", "beagle", ".vcf.gz.tbi"),
    log:
        logs("impute/{unit}/beagle.log"),
    benchmark:
        bench("impute/{unit}/beagle.tsv")
    conda:
        "../../envs/beagle.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=config["baselines"]["beagle"]["mem_mb"],
    params:
        tmp=lambda wildcards: L.imputed(wildcards.unit, ".beagle", ".tmp"),
        seed=config["baselines"]["beagle"]["seed"],
        args=config["baselines"]["beagle"]["args"],
        java_mb=lambda wildcards, resources: int(0.85 * resources.mem_mb),
        map=lambda wildcards, input: (
            f"map={input.genetic_map}" if input.genetic_map else ""
        ),
    shell:
        """
        export JAVA_TOOL_OPTIONS="-Xmx{params.java_mb}m"
        bash {input.runner} beagle {log} {input.target} 2 {params.tmp}.vcf.gz {output.vcf} \
            {output.tbi} -- beagle ref={input.ref} gt={input.target} out={params.tmp} \
            nthreads={threads} seed={params.seed} gp=true {params.map} {params.args}
        """


rule minimac4_reference:
    input:
        L.targets("{unit}", "reference.vcf.gz"),
    output:
        L.targets("{unit}", "reference.msav"),
    log:
        logs("minimac4_reference/{unit}.log"),
    benchmark:
        bench("minimac4_reference/{unit}.tsv")
    conda:
        "../../envs/minimac4.yaml"
    # A failed or killed run must not leave reference.msav.tmp beside the output: the trap removes it
    # on any exit (a SIGKILL runs no trap; the next run truncates it, then removes it likewise).
    shell:
        """
        trap 'rm -f {output}.tmp' EXIT
        minimac4 --compress-reference {input} >{output}.tmp 2>{log}
        mv {output}.tmp {output}
        """


# Minimac4 4.1 aborts on some missing calls at typed sites (.|., .|1). When the target was phased,
# Minimac4 takes the phaser's output with its fills of missing calls, as imputation servers give it
# the pre-phasing's; otherwise (or where a call is still missing) its target leaves those sites out,
# so that it imputes them for every sample (counted in minimac4.json and the log).
rule minimac4_target:
    input:
        minimac4_target_input,
    output:
        vcf=L.aligned("{unit}", "minimac4.vcf.gz"),
        tbi=L.aligned("{unit}", "minimac4.vcf.gz.tbi"),
        report=L.aligned("{unit}", "minimac4.json"),
    log:
        logs("minimac4_target/{unit}.log"),
    benchmark:
        bench("minimac4_target/{unit}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    script:
        "../scripts/minimac4_target.py"


rule minimac4:
    input:
        ref=L.targets("{unit}", "reference.msav"),
        target=L.aligned("{unit}", "minimac4.vcf.gz"),
        runner=EXTERNAL_TOOL,
        genetic_map=tool_map,
    output:
        vcf=L.imputed("{unit}", "minimac4"),
        tbi=L.imputed("{unit}", "minimac4", ".vcf.gz.tbi"),
    log:
        logs("impute/{unit}/minimac4.log"),
    benchmark:
        bench("impute/{unit}/minimac4.tsv")
    conda:
        "../../envs/minimac4.yaml"
    threads: config["impute"]["threads"]
    params:
        tmp=lambda wildcards: L.imputed(wildcards.unit, ".minimac4", ".tmp.vcf.gz"),
        args=config["baselines"]["minimac4"]["args"],
        map=lambda wildcards, input: (
            f"--map {input.genetic_map}" if input.genetic_map else ""
        ),
    shell:
        """
        bash {input.runner} minimac4 {log} {input.target} 1 {params.tmp} {output.vcf} \
            {output.tbi} -- minimac4 -t {threads} -f GT,DS,GP,HDS -O vcf.gz -o {params.tmp} \
            {params.map} {params.args} {input.ref} {input.target}
        """
