import functools
import json
import os
import shutil
import sys

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.utils import validate

from ragimpute.chunks import Unit, plan_chunks, plan_panel_chunks
from ragimpute.genmap import map_names_chromosomes
from ragimpute.layout import Layout
from ragimpute.methods import (
    ENGINE_METHODS,
    ENGINE_OUTPUT_NEUTRAL,
    ENGINE_PARAM,
    EXTERNAL_METHODS,
    OUR_METHODS,
    REFERENCE_RECORD_PARAM,
    STATES_RULE_SETTINGS,
    TRAIN_MACHINE_SETTINGS,
)
from ragimpute.smk import (
    check_truth_chromosomes,
    config_problems,
    config_sources,
    config_warnings,
    own_target_chromosomes,
)
from ragimpute.split import SPLITS

# Every key is checked before anything runs: a misspelt key is an error naming it, not a silent
# default (Snakemake's validate below then fills in the defaults).
_problems = config_problems(
    config,
    workflow.source_path("../../config/schema.yaml"),
    config_sources(
        workflow.configfiles,
        dict(workflow.config_settings.config),
        [str(f) for f in workflow.config_settings.configfiles],
    ),
)
if _problems:
    raise WorkflowError(
        "the configuration has errors (config/config.yaml, --configfile files, --config):\n  "
        + "\n  ".join(_problems)
        + "\nSee config/schema.yaml for every key, its type and its default."
    )
validate(config, schema="../../config/schema.yaml")
for _warning in config_warnings(config):
    print(f"ragimpute: warning: {_warning}", file=sys.stderr)

# Every path of a run comes from the layout (src/ragimpute/layout.py).
L = Layout(config["results"])


def when_on(key):
    """The parameter of a rule whose output the boolean config ``key`` ("section.name") changes,
    named ``name``, only when it is on. Snakemake compares the set of the parameters' values, not
    their names: off adds none (so that runs made before the key existed are not redone), on a value
    no other parameter has."""
    section, name = key.split(".")
    return {name: key} if config[section][name] else {}


# panel.indels changes the output of window, reference_vcf, demo_targets and evaluate
INDEL_PARAMS = when_on("panel.indels")
ADMIXED_TARGETS = "ADMIX"  # the admixed demo's target population (ragimpute.demo)
# demo keys that are not the simulation's (demo_targets and the map switch)
DEMO_NOT_SIMULATION = (
    "unphased_targets",
    "genotype_error",
    "missing_rate",
    "use_map",
)


def check_input_files():
    """Every input file the config names must exist. Checked when the DAG is built: otherwise, after a
    finished run, a misspelt path gives "Nothing to be done" and the previous input's results.
    """
    keys = [
        ("panel", "vcf"),
        ("panel", "genetic_map"),
        ("split", "table"),
        ("impute", "target_vcf"),
    ]
    if config["panel"]["vcf"]:
        keys.append(("panel", "array_manifest"))  # the demo writes its own manifest
    if config["impute"]["target_vcf"]:
        keys.append(("impute", "truth_vcf"))  # the demo writes its own truth
    problems = []
    for section, key in keys:
        path = config[section][key]
        if path and not os.path.isfile(path):
            what = (
                "is a directory, not a file"
                if os.path.isdir(path)
                else "does not exist"
            )
            problems.append(f"{section}.{key}: {path} {what}")
    if problems:
        raise WorkflowError(
            "input files named in the configuration are missing (paths are relative to "
            f"{os.getcwd()}):\n  "
            + "\n  ".join(problems)
            + '\nFix the path, or set the key to "" to use the default (see config/config.yaml).'
        )


check_input_files()


def logs(path):
    return L.log(path)


def bench(path):
    return L.bench(path)


def use_demo():
    return not config["panel"]["vcf"]


def panel_vcf():
    return L.demo("panel.vcf.gz") if use_demo() else config["panel"]["vcf"]


def array_manifest():
    if use_demo():
        return L.demo("array_sites.tsv")
    return config["panel"]["array_manifest"] or None


def demo_map_used():
    """The demo's simulated map (with hotspots) is given to every method unless demo.use_map is off."""
    return (
        use_demo()
        and not config["panel"]["genetic_map"]
        and config["demo"]["hotspots"] > 0
        and config["demo"]["use_map"]
    )


def genetic_map():
    """The genetic map every method gets: panel.genetic_map, or the hotspot demo's own map."""
    if config["panel"]["genetic_map"]:
        return config["panel"]["genetic_map"]
    if demo_map_used():
        return L.demo("genetic_map.map")
    return []


def tool_map(wildcards):
    """The map as Beagle and Minimac4 read it (PLINK, the reference's chromosome name, the cM of
    every reference site as our windows hold it), when a map is used."""
    if not genetic_map():
        return []
    return L.targets(wildcards.unit, "genetic_map.map")


def check_tool_args():
    """The workflow gives the genetic map to Beagle and Minimac4 itself: not twice."""
    problems = []
    beagle = config["baselines"]["beagle"]["args"].split()
    minimac4 = config["baselines"]["minimac4"]["args"].split()
    phase = config["impute"]["phase_args"].split()
    if any(a.startswith("map=") for a in beagle + phase):
        problems.append("baselines.beagle.args / impute.phase_args name map=")
    if any(a in ("-m", "--map") or a.startswith("--map=") for a in minimac4):
        problems.append("baselines.minimac4.args names --map")
    if problems:
        raise WorkflowError(
            "; ".join(problems)
            + ": the workflow passes the genetic map (panel.genetic_map) to Beagle, Minimac4 and "
            "the phaser itself, converted to their format and chromosome naming. Remove it from the "
            "arguments and set panel.genetic_map instead."
        )
    # the phaser's other arguments that the workflow sets: refused now, not once phasing runs
    from ragimpute.errors import InputError
    from ragimpute.phasing import check_phase_args

    try:
        check_phase_args(config["impute"]["phaser"], config["impute"]["phase_args"])
    except InputError as e:
        raise WorkflowError(str(e)) from None


check_tool_args()

# Rules whose paths carry a mask hash, known only once the mask checkpoint has run.
MASK_KEYED_RULES = ("tokenize", "index", "retrieve", "states", "prior")


def check_until():
    """Snakemake's --until cannot see the jobs behind a checkpoint (snakemake#2824), so with one of
    these stages it runs nothing, not even a mask whose settings changed, and leaves the old index,
    tokens or state index standing as if current. Refused before anything runs (checked when the
    job graph is built: the settings are not there yet when the Snakefile is read)."""
    settings = getattr(workflow, "dag_settings", None)
    until = sorted(set(getattr(settings, "until", None) or ()) & set(MASK_KEYED_RULES))
    if until:
        raise WorkflowError(
            f"--until {' '.join(until)}: the paths of these stages carry the mask hash, known only "
            "once the `mask` checkpoint has run, and Snakemake's --until cannot see past a "
            "checkpoint (snakemake#2824): it would run nothing even where they are out of date. "
            "Use the stage targets instead (snakemake --cores all tokenize_all, index_all or "
            "retrieve_all: everything they need and nothing after), or --until impute for the "
            "state index (states) and train for the priors (prior). See docs/cluster.md."
        )


def reference_splits():
    """The imputation reference: the train split for the panel's held-out test samples, the whole
    panel (every split) for your own targets."""
    return ["train", "val", "test"] if own_target() else ["train"]


def demo_populations():
    """The admixed demo's populations: its ADMIX samples are the held-out targets."""
    if use_demo() and config["demo"]["admixed"] and not config["split"]["table"]:
        return L.demo("populations.tsv")
    return []


def split_table():
    return config["split"]["table"] or []


@functools.cache
def chromosomes():
    configured = [str(c) for c in config["chromosomes"]]
    if config["impute"]["target_vcf"] and not use_demo():
        try:
            chosen, notes = own_target_chromosomes(
                configured,
                config["panel"]["vcf"],
                config["impute"]["target_vcf"],
                cache_dir=L("chunks"),
            )
            if config["impute"]["truth_vcf"]:
                check_truth_chromosomes(
                    chosen, config["impute"]["truth_vcf"], cache_dir=L("chunks")
                )
        except ValueError as e:
            raise WorkflowError(str(e)) from None
        for note in notes:
            print(f"ragimpute: {note}", file=sys.stderr)
        return chosen
    if configured:
        return configured
    if use_demo():
        return [str(c) for c in config["demo"]["chromosomes"]]
    from ragimpute.vcf_io import vcf_records_contigs

    return vcf_records_contigs(config["panel"]["vcf"])


def check_map_chromosomes():
    """One chromosome's HapMap map (Position Rate Map) names no chromosome, and read_genetic_map
    gives its points to any chromosome asked for: in a run of several chromosomes each would
    silently get that chromosome's map."""
    path = config["panel"]["genetic_map"]
    if path and len(chromosomes()) > 1 and not map_names_chromosomes(path):
        raise WorkflowError(
            f"{path}: panel.genetic_map is one chromosome's HapMap map (Position Rate Map, no "
            f"Chromosome column), and this run imputes {', '.join(chromosomes())}: every one "
            "would get that chromosome's map. Give one map with a chromosome column that covers "
            "them all (a PLINK .map, as Beagle's map=: Beagle's per-chromosome files join with "
            "`cat plink.chr*.GRCh38.map > plink.GRCh38.map`; or a HapMap map with a Chromosome "
            "column), or run one chromosome per configuration (`chromosomes: [NAME]`)"
        )


check_map_chromosomes()


# -- units: a chromosome, or the chunks of one (chunks.length; src/ragimpute/chunks.py) ------------


@functools.cache
def chunk_plan():
    """chromosome -> its units, in order: chunks over the span of the panel's records, none in a
    gap (ragimpute.chunks.plan_panel_chunks, through the panel's index: milliseconds); the demo's
    over its sequence_length (its panel is made by the workflow)."""
    c = config["chunks"]
    plan = {}
    for chrom in chromosomes():
        if not c["length"]:
            plan[chrom] = (Unit(chrom, chrom, 0, 0, 0, 0),)
            continue
        gmap = None
        if c["unit"] == "cm" and config["panel"]["genetic_map"]:
            from ragimpute.genmap import read_genetic_map

            gmap = read_genetic_map(config["panel"]["genetic_map"], chrom)
        settings = (c["length"], c["overlap"], c["unit"], gmap)
        if use_demo():
            length = int(config["demo"]["sequence_length"])
            units_ = plan_chunks(chrom, 1, length, *settings)
        else:
            units_ = plan_panel_chunks(
                panel_vcf(),
                chrom,
                *settings,
                pass_only=config["panel"]["pass_only"],
                cache_dir=L("chunks"),
                indels=config["panel"]["indels"],
            )
        plan[chrom] = tuple(units_)
    return plan


def units():
    """Every unit of the run: chromosomes, or their chunks."""
    return [u.name for chrom in chromosomes() for u in chunk_plan()[chrom]]


@functools.cache
def unit_info(name):
    for chrom in chromosomes():
        for u in chunk_plan()[chrom]:
            if u.name == name:
                return u
    raise WorkflowError(
        f"{name} is not a unit of this run (chromosomes: {chromosomes()})"
    )


def unit_chrom(wildcards):
    """The chromosome a unit lies on, as the panel names it."""
    return unit_info(wildcards.unit).chrom


def unit_region(wildcards):
    """(first, last) bp of a chunk; None for a whole chromosome."""
    u = unit_info(wildcards.unit)
    return None if u.name == u.chrom else [u.start, u.end]


def unit_core(wildcards):
    """(first, last) bp of the sites a chunk contributes to the ligated output; None if whole."""
    u = unit_info(wildcards.unit)
    return None if u.name == u.chrom else [u.core_start, u.core_end]


def chunked_chromosomes():
    return [c for c in chromosomes() if len(chunk_plan()[c]) > 1]


def _alternation(names):
    """A regex matching exactly these names (none: a regex that matches nothing)."""
    import re

    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


wildcard_constraints:
    unit=_alternation(units()),
    chrom=_alternation(chromosomes()),
    mask_hash=r"[0-9a-f]{16}",
    split="|".join(SPLITS),
    method="|".join([*OUR_METHODS, *EXTERNAL_METHODS]),


def mask_array_input(wildcards):
    if config["mask"]["strategy"] != "array":
        return []
    manifest = array_manifest()
    if not manifest:
        raise WorkflowError(
            "mask.strategy is 'array' but panel.array_manifest is empty: give the array's "
            "sites (TSV chrom, pos, ref, alt, or a VCF), or choose mask.strategy random/af"
        )
    return manifest


def checkpoint_json(path, stage):
    """A checkpoint's JSON record, read while Snakemake builds its job graph: a truncated or garbled
    one is named, with the rerun that rebuilds it (not a JSONDecodeError traceback)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkflowError(
            f"{path} is corrupt or truncated ({e}): rebuild it with snakemake --forcerun {stage} "
            "(and the targets you ran)"
        ) from None


def mask_hashes(unit):
    """Hashes of the masks the config asks for on ``unit`` (known once the mask checkpoint ran)."""
    path = checkpoints.mask.get(unit=unit).output[0]
    record = checkpoint_json(path, "mask")
    if not isinstance(record, dict) or "hashes" not in record:
        raise WorkflowError(
            f"{path} holds no mask hashes: rebuild it with snakemake --forcerun mask"
        )
    return record["hashes"]


def stored_mask(wildcards):
    """The content-addressed mask file; written by the mask checkpoint, which no rule can re-make."""
    path = L.mask(wildcards.unit, wildcards.mask_hash)
    if not os.path.exists(path):
        raise WorkflowError(
            f"{path} is missing (deleted?). It is written by the `mask` checkpoint: run "
            f"`snakemake --forcerun mask` to write it again; the index and tokens keyed on it are "
            "then re-used or rebuilt as needed."
        )
    return path


def index_outputs(unit):
    """The window index of every mask; the retrieval tables too when the network is trained (they are
    its training data: `snakemake retrieve_all` builds them in any case)."""
    out = []
    for h in mask_hashes(unit):
        out.append(L.index(unit, h))
        if "model" in config["evaluate"]["methods"]:
            out += [L.retrieval(unit, h, s) for s in SPLITS]
    return out


def for_each_unit(paths_of):
    """``paths_of(unit)`` gathered over all units, for input functions.

    A unit whose checkpoint (e.g. ``mask``) has not run yet contributes that checkpoint's output
    instead; Snakemake re-evaluates the function when it is done. Letting the first
    IncompleteCheckpointException escape would hide the other units from the DAG until that
    checkpoint finished, and the units would run one after the other instead of in parallel.
    """
    check_until()
    out = []
    for unit in units():
        try:
            out += paths_of(unit)
        except IncompleteCheckpointException as e:
            out.append(e.targetfile)
    return out


def train_inputs(wildcards):
    """Windows of every unit, and the train/val tokens (retrieval tables, priors) of every mask."""
    out = {"sites": [], "truth": [], "tokens": [], "retrieval": [], "prior": []}
    for unit in units():
        out["sites"].append(L.sites(unit))
        out["truth"] += [L.haplotypes(unit, s) for s in ("train", "val")]
        for h in mask_hashes(unit):
            for s in ("train", "val"):
                out["tokens"].append(L.tokens(unit, h, s))
                if config["train"]["mode"] == "token":
                    out["retrieval"].append(L.retrieval(unit, h, s))
                if config["train"]["prior"]:
                    out["prior"].append(L.prior(unit, h, s))
    return out


def get_final_output(wildcards):
    out = for_each_unit(
        lambda unit: [L.windows(unit, "windows.json"), *index_outputs(unit)]
    )
    if (
        "model" in config["evaluate"]["methods"]
    ):  # the network is opt-in (docs/model.md)
        out.append(L.model("model.pt"))
    out += imputation_outputs()
    return out


# -- imputation and evaluation -------------------------------------------------------------------


def demo_cohort():
    """The demo's simulated target cohort (demo.cohort_samples) is the target, unless the user gives
    one: imputed like your own targets, from the whole panel."""
    return (
        use_demo()
        and config["demo"]["cohort_samples"] > 0
        and not config["impute"]["target_vcf"]
    )


def own_target():
    """The target VCF (yours, or the demo's cohort), or None: then the panel's held-out test split is
    the target."""
    if demo_cohort():
        return L.demo("cohort.vcf.gz")
    return config["impute"]["target_vcf"] or None


def target_vcf(wildcards):
    return own_target() or L.targets(wildcards.unit, "target.vcf.gz")


def truth_vcf(wildcards):
    if demo_cohort():
        return L.demo("cohort_truth.vcf.gz")
    if own_target():
        return config["impute"]["truth_vcf"]
    return L.targets(wildcards.unit, "truth.vcf.gz")


def can_evaluate():
    return not own_target() or demo_cohort() or bool(config["impute"]["truth_vcf"])


def demo_target_array(wildcards):
    manifest = array_manifest()
    if not manifest:
        raise WorkflowError(
            "no target to impute: set impute.target_vcf to your phased target VCF, or "
            "panel.array_manifest so that the panel's held-out test samples are typed at the array "
            "sites and imputed"
        )
    return manifest


def alignment(unit):
    """The target_mask checkpoint's alignment.json of a unit (known once it ran)."""
    return checkpoint_json(
        checkpoints.target_mask.get(unit=unit).output.alignment, "target_mask"
    )


def target_hash(unit):
    """Hash of the target's mask (known once the target_mask checkpoint ran)."""
    return alignment(unit)["hash"]


def needs_phasing(unit):
    """impute.phase always, or auto and the target has an unphased heterozygote."""
    return bool(alignment(unit).get("phasing", {}).get("needs_phasing"))


def imputation_target(unit):
    """The target our methods and Minimac4 impute: phased by the `phase` rule when it needs phasing,
    else the harmonised target as it is."""
    if needs_phasing(unit):
        phaser = config["impute"]["phaser"]
        if not phaser_available(phaser):
            n = alignment(unit)["phasing"]["unphased_heterozygotes"]
            # impute.phase always phases a target that has no unphased heterozygote too
            why, own = (
                (f"has unphased genotypes ({n} heterozygotes)", "impute.phase: never")
                if n
                else ("is to be phased (impute.phase: always)", "impute.phase: auto")
            )
            raise WorkflowError(
                f"the target of {unit} {why} and impute.phaser is {phaser}, which is not "
                "installed (not on PATH). Install it (apt-get install beagle; or SHAPEIT5's "
                f"phase_common), choose the other phaser (impute.phaser), or give a phased target "
                f"(and {own})."
            )
        return L.phased(unit, "target.vcf.gz")
    return L.aligned(unit, "target.vcf.gz")


def imputation_target_input(wildcards):
    return imputation_target(wildcards.unit)


def minimac4_target_input(wildcards):
    """Minimac4's target: the phaser's output with its fills of missing calls when the target was
    phased (Minimac4 aborts on missing calls; every other method imputes them itself).
    """
    target = imputation_target(wildcards.unit)
    if target == L.phased(wildcards.unit, "target.vcf.gz"):
        return L.phased(wildcards.unit, "filled.vcf.gz")
    return target


def impute_inputs(wildcards):
    unit = wildcards.unit
    out = {
        "alignment": L.aligned(unit, "alignment.json"),
        "target": imputation_target(unit),
        "sites": L.sites(unit),
        "windows": L.windows(unit, "windows.parquet"),
        "reference": L.haplotypes(unit, "train"),
        "mask": L.mask(unit, target_hash(unit)),
        "panel": panel_vcf(),
    }
    if wildcards.method in ("retrieval", "model"):  # the window index
        out["index"] = L.index(unit, target_hash(unit))
    if wildcards.method == "model":
        out["model"] = L.model("model.pt")
    if wildcards.method in ("copying", "model"):
        out["states"] = L.states(unit, target_hash(unit))
    return out


def states_inputs(wildcards):
    return {
        "sites": L.sites(wildcards.unit),
        "windows": L.windows(wildcards.unit, "windows.parquet"),
        "haplotypes": [L.haplotypes(wildcards.unit, s) for s in reference_splits()],
        "mask": stored_mask(wildcards),
    }


def tool_available(tool):
    """Beagle/Minimac4 run when on PATH, or from their conda env with --sdm conda."""
    from snakemake.settings.types import DeploymentMethod

    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return True
    return shutil.which(tool) is not None


def phaser_available(phaser):
    """Beagle or SHAPEIT5's phase_common on PATH, or from the phase env with --sdm conda."""
    from snakemake.settings.types import DeploymentMethod

    from ragimpute.phasing import phaser_binary

    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return True
    return phaser_binary(phaser) is not None


def methods():
    """Methods imputed and scored side by side (evaluate.methods; absent external tools left out)."""
    return list(_methods())


@functools.cache
def _methods():
    # Cached: the input functions ask many times per run, and the PATH does not change meanwhile;
    # the message about a missing tool is printed once.
    out = []
    for m in config["evaluate"]["methods"]:
        if m in EXTERNAL_METHODS and not tool_available(m):
            print(
                f"ragimpute: {m} is not installed (not on PATH); it is left out of the comparison",
                file=sys.stderr,
            )
            continue
        out.append(m)
    return tuple(out)


# -- sample batches and chunks: one VCF per chromosome ---------------------------------------------


def batch_count(unit):
    """Target sample batches of a unit (impute.batch_samples; 1 when not batching)."""
    size = config["impute"]["batch_samples"]
    if not size:
        return 1
    return max(1, -(-int(alignment(unit)["samples"]) // size))


def batch_names(unit):
    return [f"b{i:03d}" for i in range(batch_count(unit))]


def batch_inputs(wildcards):
    """The batch VCFs of one unit and method, with the sums their INFO is recomputed from."""
    names = batch_names(wildcards.unit)
    return {
        "vcfs": [L.batch(wildcards.unit, wildcards.method, b) for b in names],
        "stats": [
            L.batch(wildcards.unit, wildcards.method, b, ".stats.npz") for b in names
        ],
    }


def chunk_vcfs(wildcards):
    """The imputed VCFs of a chunked chromosome's chunks, in order."""
    return [L.imputed(u.name, wildcards.method) for u in chunk_plan()[wildcards.chrom]]


def chunk_cores(wildcards):
    return [[u.core_start, u.core_end] for u in chunk_plan()[wildcards.chrom]]


def imputed_vcfs(chrom):
    """A chromosome's imputed VCFs (ligated from its chunks when it is chunked)."""
    return [L.imputed(chrom, m) for m in methods()]


def engine_rule_settings():
    """The engine section less the settings that leave its output as it is (the scripts add them
    back from the config): a change of those reruns nothing."""
    return {k: v for k, v in config["engine"].items() if k not in ENGINE_OUTPUT_NEUTRAL}


def train_rule_settings():
    """The train section less the settings of the machine (log_every, device, ...; the script adds
    them back from the config): a change of those neither retrains nor reimputes."""
    return {k: v for k, v in config["train"].items() if k not in TRAIN_MACHINE_SETTINGS}


def typed_given(wildcards):
    """Minimac4's target (the typed sites it was given), for the evaluation to count those of the
    unit's core: a chunk's report counts its overlaps too."""
    if wildcards.method == "minimac4":
        return {"typed_given": L.aligned(wildcards.unit, "minimac4.vcf.gz")}
    return {}


def evaluation_tables(wildcards):
    return [
        L.evaluation(unit, m, "sites.tsv.gz") for unit in units() for m in methods()
    ]


def evaluation_summaries(wildcards):
    """The summary.json beside each per-site table: compare reads them too (a deleted one is made
    again, not left out with its method's not-run reason or caveat)."""
    return [
        L.evaluation(unit, m, "summary.json") for unit in units() for m in methods()
    ]


def imputation_outputs():
    """Every chromosome's imputed VCF per method (ligated from its chunks when chunked), and the
    comparison when there is a truth to score against."""
    out = [vcf for chrom in chromosomes() for vcf in imputed_vcfs(chrom)]
    if can_evaluate():
        out.append(L.comparison("comparison.tsv"))
    return out
