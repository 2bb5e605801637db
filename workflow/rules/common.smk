import json
import os

from snakemake.exceptions import WorkflowError
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


def train_inputs(wildcards):
    """Windows of every chromosome, and the train/val tokens (and retrieval tables) of every mask."""
    out = {"sites": [], "truth": [], "tokens": [], "retrieval": []}
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
    return out


def get_final_output(wildcards):
    out = []
    for chrom in chromosomes():
        out.append(res(f"windows/{chrom}/windows.json"))
        out += index_outputs(chrom)
    out.append(res("model/model.pt"))
    return out
