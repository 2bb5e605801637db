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
        split=res("split/samples.tsv"),
        sites=res("windows/{chrom}/sites.parquet"),
    output:
        vcf=res("targets/{chrom}/reference.vcf.gz"),
        tbi=res("targets/{chrom}/reference.vcf.gz.tbi"),
    log:
        logs("reference_vcf/{chrom}.log"),
    benchmark:
        bench("reference_vcf/{chrom}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        pass_only=config["panel"]["pass_only"],
        splits=reference_splits(),
    script:
        "../scripts/reference_vcf.py"


# The held-out test split as targets: typed at the array sites, with the truth at every site.
rule demo_targets:
    input:
        panel=panel_vcf(),
        split=res("split/samples.tsv"),
        sites=res("windows/{chrom}/sites.parquet"),
        array=demo_target_array,
    output:
        target=res("targets/{chrom}/target.vcf.gz"),
        target_tbi=res("targets/{chrom}/target.vcf.gz.tbi"),
        truth=res("targets/{chrom}/truth.vcf.gz"),
        truth_tbi=res("targets/{chrom}/truth.vcf.gz.tbi"),
        report=res("targets/{chrom}/target.json"),
    log:
        logs("demo_targets/{chrom}.log"),
    benchmark:
        bench("demo_targets/{chrom}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        pass_only=config["panel"]["pass_only"],
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
        split=res("split/samples.tsv"),
        sites=res("windows/{chrom}/sites.parquet"),
        # after the training masks: both write into the same store
        masks=res("masks/{chrom}/current.json"),
        panel=panel_vcf(),
    output:
        alignment=res("targets/{chrom}/aligned/alignment.json"),
        vcf=res("targets/{chrom}/aligned/target.vcf.gz"),
        tbi=res("targets/{chrom}/aligned/target.vcf.gz.tbi"),
        unmatched=res("targets/{chrom}/aligned/unmatched.tsv"),
    log:
        logs("target_mask/{chrom}.log"),
    benchmark:
        bench("target_mask/{chrom}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    params:
        store=lambda wildcards: res(f"masks/{wildcards.chrom}"),
        max_missing=config["impute"]["max_missing"],
        splits=reference_splits(),
        phase=config["impute"]["phase"],
    script:
        "../scripts/target_mask.py"


# The genetic map as Beagle, Minimac4 and the phaser read it: PLINK (chrom id cM bp), the reference's
# chromosome name, a point at every reference site with the cM our copying model uses (the map
# interpolated and extrapolated as Beagle does), so that every method gets the same information.
rule tool_map:
    input:
        sites=res("windows/{chrom}/sites.parquet"),
    output:
        res("targets/{chrom}/genetic_map.map"),
    log:
        logs("tool_map/{chrom}.log"),
    benchmark:
        bench("tool_map/{chrom}.tsv")
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
        target=res("targets/{chrom}/aligned/target.vcf.gz"),
        tbi=res("targets/{chrom}/aligned/target.vcf.gz.tbi"),
        reference=res("targets/{chrom}/reference.vcf.gz"),
        reference_tbi=res("targets/{chrom}/reference.vcf.gz.tbi"),
        genetic_map=tool_map,
    output:
        vcf=res("targets/{chrom}/phased/target.vcf.gz"),
        tbi=res("targets/{chrom}/phased/target.vcf.gz.tbi"),
        report=res("targets/{chrom}/phased/phase.json"),
    log:
        logs("phase/{chrom}.log"),
    benchmark:
        bench("phase/{chrom}.tsv")
    conda:
        "../../envs/phase.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=config["baselines"]["beagle"]["mem_mb"],
    params:
        phaser=config["impute"]["phaser"],
        seed=config["baselines"]["beagle"]["seed"],
        args=config["impute"]["phase_args"],
        java_mb=lambda wildcards, resources: int(0.85 * resources.mem_mb),
    script:
        "../scripts/phase.py"


rule impute:
    input:
        unpack(impute_inputs),
    output:
        vcf=res("impute/{chrom}/{method}.vcf.gz"),
        tbi=res("impute/{chrom}/{method}.vcf.gz.tbi"),
        report=res("impute/{chrom}/{method}.json"),
    log:
        logs("impute/{chrom}/{method}.log"),
    benchmark:
        bench("impute/{chrom}/{method}.tsv")
    wildcard_constraints:
        method="|".join(PREDICTOR_FACTORIES),
    conda:
        "../../envs/ragimpute.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=8000,
    params:
        options=lambda wildcards: config["baselines"].get(wildcards.method, {}),
        k=config["retrieval"]["k"],
        batch_haplotypes=config["impute"]["batch_haplotypes"],
        device=config["impute"]["device"],
        store=lambda wildcards: res(f"masks/{wildcards.chrom}"),
        index_root=lambda wildcards: res(f"index/{wildcards.chrom}"),
        states_root=lambda wildcards: res(f"states/{wildcards.chrom}"),
        engine=config["engine"],
    script:
        "../scripts/impute.py"


# Beagle 5.4 on the same reference and harmonised target; its own log is appended to ours. Through
# external_tool.sh: when Beagle cannot run on the input (e.g. a window with a single typed marker),
# its output is a placeholder that says why, and the method is left out of the comparison.
rule beagle:
    input:
        ref=res("targets/{chrom}/reference.vcf.gz"),
        target=res("targets/{chrom}/aligned/target.vcf.gz"),
        runner=EXTERNAL_TOOL,
        genetic_map=tool_map,
    output:
        vcf=res("impute/{chrom}/beagle.vcf.gz"),
        tbi=res("impute/{chrom}/beagle.vcf.gz.tbi"),
    log:
        logs("impute/{chrom}/beagle.log"),
    benchmark:
        bench("impute/{chrom}/beagle.tsv")
    conda:
        "../../envs/beagle.yaml"
    threads: config["impute"]["threads"]
    resources:
        mem_mb=config["baselines"]["beagle"]["mem_mb"],
    params:
        tmp=lambda wildcards: res(f"impute/{wildcards.chrom}/.beagle.tmp"),
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
        res("targets/{chrom}/reference.vcf.gz"),
    output:
        res("targets/{chrom}/reference.msav"),
    log:
        logs("minimac4_reference/{chrom}.log"),
    benchmark:
        bench("minimac4_reference/{chrom}.tsv")
    conda:
        "../../envs/minimac4.yaml"
    shell:
        "minimac4 --compress-reference {input} > {output}.tmp 2> {log} && mv {output}.tmp {output}"


# Minimac4 4.1 aborts on some missing calls at typed sites (.|., .|1): its target (made from the
# phased target when the target was phased) leaves those sites out, so that it imputes them for every
# sample (counted in minimac4.json and the log).
rule minimac4_target:
    input:
        imputation_target_input,
    output:
        vcf=res("targets/{chrom}/aligned/minimac4.vcf.gz"),
        tbi=res("targets/{chrom}/aligned/minimac4.vcf.gz.tbi"),
        report=res("targets/{chrom}/aligned/minimac4.json"),
    log:
        logs("minimac4_target/{chrom}.log"),
    benchmark:
        bench("minimac4_target/{chrom}.tsv")
    conda:
        "../../envs/ragimpute.yaml"
    script:
        "../scripts/minimac4_target.py"


rule minimac4:
    input:
        ref=res("targets/{chrom}/reference.msav"),
        target=res("targets/{chrom}/aligned/minimac4.vcf.gz"),
        runner=EXTERNAL_TOOL,
        genetic_map=tool_map,
    output:
        vcf=res("impute/{chrom}/minimac4.vcf.gz"),
        tbi=res("impute/{chrom}/minimac4.vcf.gz.tbi"),
    log:
        logs("impute/{chrom}/minimac4.log"),
    benchmark:
        bench("impute/{chrom}/minimac4.tsv")
    conda:
        "../../envs/minimac4.yaml"
    threads: config["impute"]["threads"]
    params:
        tmp=lambda wildcards: res(f"impute/{wildcards.chrom}/.minimac4.tmp.vcf.gz"),
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
