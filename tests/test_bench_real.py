"""benchmarks/bench_real.py's inputs for one fold: a target must never be in its own reference, the
target holds the array's sites only, and unphased targets are what an array writes; its SNV and
indel tables; and m3vcf_to_vcf.py, which expands the Minimac3 panel it was measured on."""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
from conftest import needs_bcftools

from ragimpute.vcf_write import write_phased_vcf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_real  # noqa: E402
import m3vcf_to_vcf  # noqa: E402


def _panel(tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    n_sites, samples = 40, [f"S{i}" for i in range(8)]
    alleles = (rng.random((n_sites, 2 * len(samples))) < 0.3).astype(np.int8)
    alleles[::5, :] = 0  # monomorphic: never on the thinned array
    sites = pd.DataFrame({"pos": 1000 * np.arange(1, n_sites + 1), "ref": "A", "alt": "G"})
    path = tmp_path / "panel.vcf.gz"
    write_phased_vcf(path, "20", sites, samples, alleles)
    return path, alleles, samples


def _gts(path: Path) -> tuple[list[str], list[list[str]]]:
    with gzip.open(path, "rt") as f:
        lines = [x.rstrip("\n").split("\t") for x in f if not x.startswith("##")]
    return lines[0][9:], lines[1:]


@needs_bcftools
def test_a_fold_is_left_out_of_its_reference_and_typed_at_the_array_only(tmp_path):
    panel, alleles, samples = _panel(tmp_path)
    args = argparse.Namespace(array=None, array_kb=3, panel=panel)
    manifest = tmp_path / "array.tsv"
    n = bench_real.array_manifest(args, manifest)
    array = pd.read_csv(manifest, sep="\t")
    pos = 1000 * np.arange(1, len(alleles) + 1)
    af = alleles.mean(1)
    assert n == len(array) > 0 and (np.diff(array["pos"]) >= 3000).all()
    common = np.minimum(af, 1 - af)[np.searchsorted(pos, array["pos"])]
    assert (common >= 0.05).all()  # only common sites, thinned to one per 3 kb

    fold = ["S5", "S1"]
    bench_real.write_fold(panel, fold, manifest, tmp_path / "fold", unphased=True)
    ref_samples, ref_rows = _gts(tmp_path / "fold" / "panel.vcf.gz")
    truth_samples, truth_rows = _gts(tmp_path / "fold" / "truth.vcf.gz")
    target_samples, target_rows = _gts(tmp_path / "fold" / "target.vcf.gz")
    assert ref_samples == [s for s in samples if s not in fold] and len(ref_rows) == len(pos)
    assert sorted(truth_samples) == sorted(fold) == sorted(target_samples)
    assert [int(r[1]) for r in target_rows] == array["pos"].tolist()
    for row in target_rows:  # unphased as an array writes it: the truth's alleles, sorted, with /
        i = int(row[1]) // 1000 - 1
        for s, gt in zip(target_samples, row[9:], strict=True):
            k = samples.index(s)
            assert gt == "/".join(sorted(map(str, alleles[i, 2 * k : 2 * k + 2])))
    assert (tmp_path / "fold" / "target.vcf.gz.tbi").exists()


def test_the_array_must_be_given_or_thinned(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_real.py", "--panel", "p.vcf.gz"])
    with pytest.raises(SystemExit):
        bench_real.main()
    assert "one of the arguments --array --array-kb is required" in capsys.readouterr().err


def _site_rows(
    rng, method: str, alleles: list[tuple[str, str]], n: int
) -> tuple[pd.DataFrame, dict]:
    """Per-site rows as the workflow's sites.tsv.gz has them, from random dosages x and truths y,
    and the genotypes themselves by site kind (for a brute-force r²)."""
    rows, raw = [], {"SNVs": ([], []), "indels": ([], [])}
    for i, (ref, alt) in enumerate(alleles):
        y = (rng.random(n) < 0.2).astype(float) + (rng.random(n) < 0.2)
        x = np.clip(y + rng.normal(0, 0.6, n), 0, 2)
        kind = "SNVs" if len(ref) == len(alt) else "indels"
        raw[kind][0].append(x)
        raw[kind][1].append(y)
        sums = dict(
            n=n, sx=x.sum(), sy=y.sum(), sxx=(x * x).sum(), syy=(y * y).sum(), sxy=(x * y).sum()
        )
        counts = dict(n_gt=n, n_conc=0, n_nonref=0, n_nonref_conc=0, tp=0, fp=0, fn=0)
        rows.append(dict(method=method, chrom="20", pos=100 + i, ref=ref, alt=alt, maf=0.2,
                         bin=i % 4, info_r2=0.5, **sums, **counts, true_r2=0.5))  # fmt: skip
    return pd.DataFrame(rows), raw


def test_snvs_and_indels_are_scored_apart_as_pooled_r2_of_their_genotypes(tmp_path):
    """``--indels``: the pooled r² of the SNVs and of the indels of every fold, each equal to the
    squared correlation of all their dosages with all their true genotypes."""
    rng = np.random.default_rng(7)
    alleles = [("A", "G"), ("C", "CT"), ("NA", "N"), ("G", "T"), ("ACG", "A"), ("T", "C")]
    tables, pooled = [], {"SNVs": ([], []), "indels": ([], [])}
    for fold in range(2):
        per_site, raw = _site_rows(rng, "copying", alleles, 30)
        path = tmp_path / f"fold{fold}.tsv.gz"
        per_site.to_csv(path, sep="\t", index=False)
        tables.append(str(path))
        for kind in pooled:
            pooled[kind][0].extend(raw[kind][0])
            pooled[kind][1].extend(raw[kind][1])
    kinds = bench_real.by_kind(tables, ["copying"])
    for kind, (xs, ys) in pooled.items():
        row = kinds[kind].set_index("maf_bin").loc["all"]
        expected = np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1] ** 2
        assert row["n_sites"] == len(xs) and row["r2"] == pytest.approx(expected, rel=1e-6)


def _m3vcf(path: Path, haps: np.ndarray, blocks: list[tuple[int, int]], alleles) -> None:
    """A Minimac3 m3vcf of ``haps`` (sites x haplotypes, two per sample) in ``blocks`` (first, last
    site, inclusive; consecutive blocks share a site): per block the unique haplotypes (reps) and,
    per haplotype, its rep; per marker the reps' alleles."""
    n_samples = haps.shape[1] // 2
    cols = [f"S{i}_HAP_{k}" for i in range(n_samples) for k in (1, 2)]
    lines = ["##fileformat=M3VCF", "##version=1.2"]
    lines.append(
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *cols])
    )
    for b, (first, last) in enumerate(blocks):
        reps, rep_of = np.unique(haps[first : last + 1].T, axis=0, return_inverse=True)
        info = f"B{b + 1};VARIANTS={last - first + 1};REPS={len(reps)}"
        block = ["20", f"{first}-{last}", f"<BLOCK:{first}-{last}>", *"....", info, "."]
        lines.append("\t".join([*block, *map(str, rep_of.ravel())]))
        for u in range(first, last + 1):
            marker = ["20", str(1000 * (u + 1)), f"m{u}", *alleles[u], ".", "."]
            rep_alleles = "".join(map(str, reps[:, u - first]))
            lines.append("\t".join([*marker, f"B{b + 1}.M{u - first + 1}", rep_alleles]))
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


@needs_bcftools
def test_an_m3vcf_expands_to_the_phased_haplotypes_it_encodes(tmp_path):
    rng = np.random.default_rng(11)
    n_sites, n_samples = 9, 5
    haps = (rng.random((n_sites, 2 * n_samples)) < 0.4).astype(np.int64)
    haps[:, 3] = haps[:, 6]  # a repeated haplotype: one rep for two columns
    alleles = [
        ("A", "G"),
        ("C", "CT"),
        ("G", "T"),
        ("TTA", "T"),
        ("A", "C"),
        ("G", "A"),
        ("C", "T"),
        ("A", "AG"),
        ("T", "G"),
    ]
    src = tmp_path / "panel.m3vcf.gz"
    blocks = [(0, 3), (3, 6), (6, 8)]  # sites 3 and 6 end one block and start the next
    _m3vcf(src, haps, blocks, alleles)
    out = tmp_path / "panel.vcf.gz"
    assert m3vcf_to_vcf.convert(src, out) == n_sites
    query = pysam.bcftools.query("-f", "%POS %REF %ALT[ %GT]\\n", str(out)).splitlines()
    assert len(query) == n_sites
    for u, line in enumerate(query):
        pos, ref, alt, *gts = line.split(" ")
        assert (int(pos), ref, alt) == (1000 * (u + 1), *alleles[u])
        assert gts == [f"{haps[u, 2 * i]}|{haps[u, 2 * i + 1]}" for i in range(n_samples)]
    assert pysam.VariantFile(str(out)).header.samples[0] == "S0"
