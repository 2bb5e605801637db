"""A tiny reference + target set-up for the imputation and evaluation tests.

Built with the package's own stage functions in the standard results layout (demo panel -> split ->
windows -> array mask -> train tokens -> index), then the reference/target/truth VCFs of the held-out
test split. Helpers edit the target VCF text to make the bad inputs users send.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pysam

from ragimpute.demo import DemoSpec, make_demo
from ragimpute.index import build_index
from ragimpute.masks import run_mask_stage_dir
from ragimpute.split import load_split, run_split_stage
from ragimpute.targets import make_demo_targets, write_reference_vcf
from ragimpute.tokens import run_tokenize_stage
from ragimpute.windows import run_window_stage

CHROM = "20"


@dataclass
class Env:
    results: Path
    panel: Path
    array: Path
    split: Path
    windows: Path
    store: Path
    train_hash: str
    reference: Path
    target: Path
    truth: Path

    @property
    def sites(self) -> pd.DataFrame:
        return pd.read_parquet(self.windows / "sites.parquet")

    @property
    def split_samples(self) -> dict[str, list[str]]:
        return load_split(self.split)


def build_env(root: Path) -> Env:
    root = Path(root)
    res = root / "results"
    spec = DemoSpec(seed=3, n_samples=40, sequence_length=300_000, array_spacing_bp=2000)
    panel, array = res / "demo/panel.vcf.gz", res / "demo/array_sites.tsv"
    make_demo(spec, panel, array)
    split = res / "split/samples.tsv"
    run_split_stage(panel, split, {"train": 0.7, "val": 0.15, "test": 0.15}, 1)
    windows = res / "windows" / CHROM
    run_window_stage(panel, split, CHROM, 128, 32, windows)
    store = res / "masks" / CHROM
    (h,) = run_mask_stage_dir(windows, {"strategy": "array"}, store, store / "current.json", array)
    tokens = res / "tokens" / CHROM / h / "train.parquet"
    run_tokenize_stage(windows, store, h, "train", tokens)
    build_index(tokens, res / "index" / CHROM / h)
    t = res / "targets" / CHROM
    write_reference_vcf(panel, split, windows, CHROM, t / "reference.vcf.gz")
    make_demo_targets(panel, split, windows, array, CHROM, t / "target.vcf.gz", t / "truth.vcf.gz")
    return Env(
        res, panel, array, split, windows, store, h,
        t / "reference.vcf.gz", t / "target.vcf.gz", t / "truth.vcf.gz",
    )  # fmt: skip


def vcf_lines(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header lines and records (split on tabs) of a VCF(.gz)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    records = [ln.split("\t") for ln in lines if not ln.startswith("#")]
    return header, records


def write_vcf(path: Path, header: list[str], records: list[list[str]]) -> Path:
    """Plain-text VCF (the readers take it as it is; bgzip is not required of a target)."""
    path.write_text("\n".join(header + ["\t".join(r) for r in records]) + "\n")
    return path


def write_bgzip(path: Path, header: list[str], records: list[list[str]]) -> Path:
    plain = path.with_suffix("")
    write_vcf(plain, header, records)
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    return path


def imputed_records(path: Path) -> dict:
    """Sites, GT alleles, DS, GP and INFO of an imputed VCF, parsed with pysam (an independent reader)."""
    out = {"pos": [], "ref": [], "alt": [], "gt": [], "ds": [], "gp": [], "info": []}
    with pysam.VariantFile(str(path)) as vf:
        out["header"] = vf.header
        out["samples"] = list(vf.header.samples)
        for rec in vf:
            out["pos"].append(rec.pos)
            out["ref"].append(rec.ref)
            out["alt"].append(rec.alts[0])
            out["gt"].append([rec.samples[s]["GT"] for s in rec.samples])
            out["ds"].append([rec.samples[s]["DS"][0] for s in rec.samples])
            if "GP" in rec.format:
                out["gp"].append([rec.samples[s]["GP"] for s in rec.samples])
            out["info"].append(dict(rec.info))
    for key in ("pos", "ds", "gp"):
        out[key] = np.asarray(out[key], dtype=float)
    out["gt"] = np.asarray(out["gt"], dtype=np.int64)  # (n_sites, n_samples, 2)
    out["phased"] = True
    return out


def foreign_results(env: Env, root: Path) -> Path:
    """A copy of ``env``'s results whose windows were made from another panel file of the same layout
    (``other_panel_results``)."""
    return other_panel_results(env.results, env.panel, env.split, Path(root), (128, 32))


def other_panel_results(
    results: Path, panel: Path, split: Path, root: Path, window: tuple[int, int], drop: int = 0
) -> Path:
    """A copy of ``results`` under ``root`` whose windows were made from another panel file: the same
    samples and (``drop=0``) sites, so the same site list, split and mask hashes, with other
    haplotypes (each record's genotype columns in reverse sample order); with ``drop``, also without
    the ten records from the ``drop``-th (other sites). Everything else (tokens, indexes) is the copy's, made from
    ``panel``."""
    res = Path(root) / "results"
    shutil.copytree(results, res)
    header, records = vcf_lines(panel)
    other = [
        r[:9] + r[9:][::-1] for i, r in enumerate(records) if not drop <= i < drop + 10 or not drop
    ]
    path = write_bgzip(Path(root) / "other_panel.vcf.gz", header, other)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    run_window_stage(path, split, CHROM, window[0], window[1], res / "windows" / CHROM)
    return res


_ENV: dict[str, Env] = {}


def shared_env(tmp_path_factory) -> Env:
    """One set-up per test session, shared by the test modules (read-only for them, apart from new
    masks and indexes that a target with other typed sites adds to the store)."""
    if "env" not in _ENV:
        _ENV["env"] = build_env(tmp_path_factory.mktemp("impute-env"))
    return _ENV["env"]
