import json
import os

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.utils import validate

from ragimpute.split import SPLITS

validate(config, schema="../../config/schema.yaml")

RESULTS = config["results"]


wildcard_constraints:
    chrom=r"[^/]+",
    mask_hash=r"[0-9a-f]{16}",
    split="|".join(SPLITS),


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


def get_final_output(wildcards):
    return for_each_chromosome(
        lambda chrom: [res(f"windows/{chrom}/windows.json"), *index_outputs(chrom)]
    )
