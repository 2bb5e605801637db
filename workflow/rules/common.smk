import functools
import json
import os
import shutil
import sys

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.utils import validate

from ragimpute.demo import ADMIXED_TARGETS
from ragimpute.impute import EXTERNAL_METHODS, PREDICTOR_FACTORIES
from ragimpute.smk import config_problems
from ragimpute.split import SPLITS

# Every key is checked before anything runs: a misspelt key is an error naming it, not a silent
# default (Snakemake's validate below then fills in the defaults).
_problems = config_problems(config, workflow.source_path("../../config/schema.yaml"))
if _problems:
    raise WorkflowError(
        "the configuration has errors (config/config.yaml, --configfile files, --config):\n  "
        + "\n  ".join(_problems)
        + "\nSee config/schema.yaml for every key, its type and its default."
    )
validate(config, schema="../../config/schema.yaml")

RESULTS = config["results"]
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


wildcard_constraints:
    chrom=r"[^/]+",
    mask_hash=r"[0-9a-f]{16}",
    split="|".join(SPLITS),
    method="|".join([*PREDICTOR_FACTORIES, *EXTERNAL_METHODS]),


def res(path):
    """A path under the results directory (outputs, logs and Snakemake benchmarks all live there)."""
    return os.path.join(RESULTS, path)


def logs(path):
    return res(os.path.join("logs", path))


def bench(path):
    return res(os.path.join("benchmarks", path))


def use_demo():
    return not config["panel"]["vcf"]


def panel_vcf():
    return res("demo/panel.vcf.gz") if use_demo() else config["panel"]["vcf"]


def array_manifest():
    if use_demo():
        return res("demo/array_sites.tsv")
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
        return res("demo/genetic_map.map")
    return []


def tool_map(wildcards):
    """The map as Beagle and Minimac4 read it (PLINK, the reference's chromosome name, the cM of
    every reference site as our windows hold it), when a map is used."""
    if not genetic_map():
        return []
    return res(f"targets/{wildcards.chrom}/genetic_map.map")


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


check_tool_args()


def reference_splits():
    """The imputation reference: the train split for the panel's held-out test samples, the whole
    panel (every split) for your own targets."""
    return ["train", "val", "test"] if own_target() else ["train"]


def demo_populations():
    """The admixed demo's populations: its ADMIX samples are the held-out targets."""
    if use_demo() and config["demo"]["admixed"] and not config["split"]["table"]:
        return res("demo/populations.tsv")
    return []


def split_table():
    return config["split"]["table"] or []


def chromosomes():
    if config["chromosomes"]:
        return [str(c) for c in config["chromosomes"]]
    if use_demo():
        return [str(c) for c in config["demo"]["chromosomes"]]
    from ragimpute.vcf_io import vcf_records_contigs

    return vcf_records_contigs(config["panel"]["vcf"])


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


def mask_hashes(chrom):
    """Hashes of the masks the config asks for on ``chrom`` (known once the mask checkpoint ran)."""
    with checkpoints.mask.get(chrom=chrom).output[0].open() as f:
        return json.load(f)["hashes"]


def stored_mask(wildcards):
    """The content-addressed mask file; written by the mask checkpoint, which no rule can re-make."""
    path = res(f"masks/{wildcards.chrom}/{wildcards.mask_hash}/mask.parquet")
    if not os.path.exists(path):
        raise WorkflowError(
            f"{path} is missing (deleted?). It is written by the `mask` checkpoint: run "
            f"`snakemake --forcerun mask` to write it again; the index and tokens keyed on it are "
            "then re-used or rebuilt as needed."
        )
    return path


def index_outputs(chrom):
    out = []
    for h in mask_hashes(chrom):
        out.append(res(f"index/{chrom}/{h}"))
        out += [res(f"retrieval/{chrom}/{h}/{s}.parquet") for s in SPLITS]
    return out


def for_each_chromosome(paths_of):
    """``paths_of(chrom)`` gathered over all chromosomes, for input functions.

    A chromosome whose checkpoint (e.g. ``mask``) has not run yet contributes that checkpoint's
    output instead; Snakemake re-evaluates the function when it is done. Letting the first
    IncompleteCheckpointException escape would hide the other chromosomes from the DAG until that
    checkpoint finished, and the chromosomes would run one after the other instead of in parallel.
    """
    out = []
    for chrom in chromosomes():
        try:
            out += paths_of(chrom)
        except IncompleteCheckpointException as e:
            out.append(e.targetfile)
    return out


def train_inputs(wildcards):
    """Windows of every chromosome, and the train/val tokens (and retrieval tables) of every mask."""
    out = {"sites": [], "truth": [], "tokens": [], "retrieval": [], "prior": []}
    for chrom in chromosomes():
        out["sites"].append(res(f"windows/{chrom}/sites.parquet"))
        out["truth"] += [
            res(f"windows/{chrom}/haplotypes/{s}.parquet") for s in ("train", "val")
        ]
        for h in mask_hashes(chrom):
            for s in ("train", "val"):
                out["tokens"].append(res(f"tokens/{chrom}/{h}/{s}.parquet"))
                if config["train"]["mode"] == "token":
                    out["retrieval"].append(res(f"retrieval/{chrom}/{h}/{s}.parquet"))
                if config["train"]["prior"]:
                    out["prior"].append(res(f"prior/{chrom}/{h}/{s}.parquet"))
    return out


def get_final_output(wildcards):
    out = for_each_chromosome(
        lambda chrom: [res(f"windows/{chrom}/windows.json"), *index_outputs(chrom)]
    )
    if "model" in config["evaluate"]["methods"]:  # the network is opt-in (docs/model.md)
        out.append(res("model/model.pt"))
    out += imputation_outputs()
    return out


# -- imputation and evaluation -------------------------------------------------------------------


def own_target():
    """The user's target VCF, or None: then the panel's held-out test split is the target."""
    return config["impute"]["target_vcf"] or None


def target_vcf(wildcards):
    return own_target() or res(f"targets/{wildcards.chrom}/target.vcf.gz")


def truth_vcf(wildcards):
    if own_target():
        return config["impute"]["truth_vcf"]
    return res(f"targets/{wildcards.chrom}/truth.vcf.gz")


def can_evaluate():
    return not own_target() or bool(config["impute"]["truth_vcf"])


def demo_target_array(wildcards):
    manifest = array_manifest()
    if not manifest:
        raise WorkflowError(
            "no target to impute: set impute.target_vcf to your phased target VCF, or "
            "panel.array_manifest so that the panel's held-out test samples are typed at the array "
            "sites and imputed"
        )
    return manifest


def target_hash(chrom):
    """Hash of the target's mask (known once the target_mask checkpoint ran)."""
    with checkpoints.target_mask.get(chrom=chrom).output.alignment.open() as f:
        return json.load(f)["hash"]


def alignment(chrom):
    """The target_mask checkpoint's alignment.json (known once it ran)."""
    with checkpoints.target_mask.get(chrom=chrom).output.alignment.open() as f:
        return json.load(f)


def needs_phasing(chrom):
    """impute.phase always, or auto and the target has an unphased heterozygote."""
    return bool(alignment(chrom).get("phasing", {}).get("needs_phasing"))


def imputation_target(chrom):
    """The target our methods and Minimac4 impute: phased by the `phase` rule when it needs phasing,
    else the harmonised target as it is."""
    if needs_phasing(chrom):
        phaser = config["impute"]["phaser"]
        if not phaser_available(phaser):
            raise WorkflowError(
                f"the target of chromosome {chrom} has unphased genotypes "
                f"({alignment(chrom)['phasing']['unphased_heterozygotes']} heterozygotes) and "
                f"impute.phaser is {phaser}, which is not installed (not on PATH). Install it "
                "(apt-get install beagle; or SHAPEIT5's phase_common), choose the other phaser "
                "(impute.phaser), or give a phased target (and impute.phase: never)."
            )
        return res(f"targets/{chrom}/phased/target.vcf.gz")
    return res(f"targets/{chrom}/aligned/target.vcf.gz")


def imputation_target_input(wildcards):
    return imputation_target(wildcards.chrom)


def impute_inputs(wildcards):
    chrom = wildcards.chrom
    out = {
        "alignment": res(f"targets/{chrom}/aligned/alignment.json"),
        "target": imputation_target(chrom),
        "sites": res(f"windows/{chrom}/sites.parquet"),
        "windows": res(f"windows/{chrom}/windows.parquet"),
        "reference": res(f"windows/{chrom}/haplotypes/train.parquet"),
        "index": res(f"index/{chrom}/{target_hash(chrom)}"),
        "panel": panel_vcf(),
    }
    if wildcards.method == "model":
        out["model"] = res("model/model.pt")
    if wildcards.method in ("copying", "model"):
        out["states"] = res(f"states/{chrom}/{target_hash(chrom)}")
    return out


def states_inputs(wildcards):
    return {
        "sites": res(f"windows/{wildcards.chrom}/sites.parquet"),
        "windows": res(f"windows/{wildcards.chrom}/windows.parquet"),
        "haplotypes": [
            res(f"windows/{wildcards.chrom}/haplotypes/{s}.parquet")
            for s in reference_splits()
        ],
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


def imputed_vcfs(chrom):
    return [res(f"impute/{chrom}/{m}.vcf.gz") for m in methods()]


def evaluation_tables(wildcards):
    return [
        res(f"evaluation/{chrom}/{m}/sites.tsv.gz")
        for chrom in chromosomes()
        for m in methods()
    ]


def imputation_outputs():
    if can_evaluate():
        return [res("evaluation/comparison.tsv")]
    return [vcf for chrom in chromosomes() for vcf in imputed_vcfs(chrom)]
