"""benchmarks/bench_real.py's inputs for one fold: a target must never be in its own reference, the
target holds the array's sites only, and unphased targets are what an array writes."""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import needs_bcftools

from ragimpute.vcf_write import write_phased_vcf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_real  # noqa: E402


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
