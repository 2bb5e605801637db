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


# The haplotype dosages HDS (impute.hds) against the P(ALT) they were written from: each is that
# P(ALT) rounded to 1/65535 (the writer's one value every field comes from) and then to thousandths,
# so within half a thousandth and 1/131070 of it; HDS1 + HDS2 is DS to within one thousandth, each
# of the three being rounded on its own.
HDS_OF_P = 0.0005 + 1 / 131070 + 1e-9
HDS_SUM_OF_DS = 0.001 + 1e-9


def hds_and_ds(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, HDS (sites, 2 * samples; haplotype 1, 2 of each sample) and DS (sites, samples)
    of an imputed VCF as bcftools reads them."""
    import pysam.bcftools

    rows = [
        r.split("\t")
        for r in pysam.bcftools.query("-f", "%POS[\t%HDS\t%DS]\n", str(path)).splitlines()
    ]
    pos = np.array([int(r[0]) for r in rows])
    hds = np.array([[float(x) for h in r[1::2] for x in h.split(",")] for r in rows])
    ds = np.array([[float(x) for x in r[2::2]] for r in rows])
    return pos, hds, ds


def check_hds(path: Path, p_at: dict[int, np.ndarray]) -> None:
    """``path`` declares HDS and writes it after DS at every record; per haplotype it is the
    P(ALT) ``p_at[pos]`` the writer was given, and the two sum to DS."""
    header, records = vcf_lines(path)
    hds_lines = [h for h in header if h.startswith("##FORMAT=<ID=HDS,")]
    assert len(hds_lines) == 1 and "Number=2,Type=Float" in hds_lines[0]
    assert {r[8] for r in records} <= {"GT:DS:HDS:GP", "GT:DS:HDS"}
    pos, hds, ds = hds_and_ds(path)
    assert sorted(p_at) == list(pos)
    p = np.array([p_at[x] for x in pos])
    assert hds.shape == p.shape
    assert np.abs(hds - p).max() <= HDS_OF_P
    assert np.abs(hds[:, 0::2] + hds[:, 1::2] - ds).max() <= HDS_SUM_OF_DS


def without_hds(records: list[list[str]]) -> list[list[str]]:
    """Records of ``GT:DS:HDS(:GP)`` with HDS taken out: the records written without it."""
    out = []
    for r in records:
        keys = r[8].split(":")
        at = keys.index("HDS")
        cols = [":".join(c.split(":")[:at] + c.split(":")[at + 1 :]) for c in r[9:]]
        out.append(r[:8] + [":".join(keys[:at] + keys[at + 1 :])] + cols)
    return out


def recorded_writes(monkeypatch, module, name: str, scale: float = 1.0) -> dict[int, np.ndarray]:
    """Patch ``module.name`` (a record formatter called with chrom, sites, P(ALT) of (sites, 2n))
    to note the P(ALT) it is given per position (``scale``: its units per 1)."""
    seen: dict[int, np.ndarray] = {}
    real = getattr(module, name)

    def noting(chrom, sites, p, *args, **kw):
        for x, row in zip(sites["pos"].to_numpy(), np.asarray(p, np.float64), strict=True):
            seen[int(x)] = row / scale
        return real(chrom, sites, p, *args, **kw)

    monkeypatch.setattr(module, name, noting)
    return seen
