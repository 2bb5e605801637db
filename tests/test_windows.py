"""windows: window arithmetic against loop-based versions; build_windows artifacts against the panel."""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import (
    WINDOW_LENGTH,
    WINDOW_OVERLAP,
    needs_bcftools,
    random_records,
    vcf_text,
    write_vcf,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ragimpute.atomic import read_json
from ragimpute.errors import ArtifactError
from ragimpute.vcf_io import read_panel
from ragimpute.windows import (
    FORMAT_VERSION,
    WindowedTable,
    build_windows,
    load_windows,
    owner_windows,
    packed_haplotypes,
    reference_af,
    reference_counts,
    sites_with_hash,
    window_bounds,
)

# -- naive references -----------------------------------------------------------------------------


def naive_bounds(n: int, length: int, overlap: int) -> list[tuple[int, int]]:
    out, start = [], 0
    while True:
        stop = min(start + length, n)
        out.append((start, stop))
        if stop == n:
            return out
        start += length - overlap


def naive_owner(bounds: list[tuple[int, int]], n: int) -> list[int]:
    owner = []
    for s in range(n):
        best, best_w = -1, -1
        for w, (a, b) in enumerate(bounds):
            if a <= s < b and min(s - a, b - 1 - s) > best:
                best, best_w = min(s - a, b - 1 - s), w
        owner.append(best_w)
    return owner


@st.composite
def window_params(draw):
    length = draw(st.integers(1, 60))
    overlap = draw(st.integers(0, length - 1))
    n = draw(st.integers(1, 400))
    return n, length, overlap


@settings(max_examples=300, deadline=None)
@given(window_params())
def test_window_bounds_and_owner_equal_naive(params):
    n, length, overlap = params
    bounds = window_bounds(n, length, overlap)
    assert [tuple(b) for b in bounds.tolist()] == naive_bounds(n, length, overlap)
    owner = owner_windows(bounds, n)
    assert owner.tolist() == naive_owner(naive_bounds(n, length, overlap), n)
    # every site is owned, and by a window that covers it
    a, b = bounds[owner, 0], bounds[owner, 1]
    assert ((a <= np.arange(n)) & (np.arange(n) < b)).all()


@pytest.mark.parametrize(
    "n,length,overlap,expected",
    [
        (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
        (11, 4, 1, [(0, 4), (3, 7), (6, 10), (9, 11)]),
        (3, 8, 2, [(0, 3)]),
        (8, 8, 2, [(0, 8)]),
        (9, 8, 0, [(0, 8), (8, 9)]),
    ],
)
def test_window_bounds_known(n, length, overlap, expected):
    assert [tuple(b) for b in window_bounds(n, length, overlap).tolist()] == expected


def test_owner_known_example():
    # windows [0,4) [3,7) [6,10): site 3 is an edge of both 0 (margin 0) and 1 (margin 0) -> lower id
    bounds = window_bounds(10, 4, 1)
    assert owner_windows(bounds, 10).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    "n,length,overlap", [(10, 4, 4), (10, 4, 5), (10, 0, 0), (10, 4, -1), (0, 4, 1)]
)
def test_window_bounds_rejects_bad_parameters(n, length, overlap):
    with pytest.raises(ValueError):
        window_bounds(n, length, overlap)


# -- build_windows artifacts --------------------------------------------------------------------


def test_windows_parquet(demo, demo_windows):
    panel = read_panel(demo.vcf, "20")
    w = pd.read_parquet(demo_windows / "windows.parquet")
    assert list(w.columns) == [
        "window",
        "chrom",
        "first_site",
        "last_site",
        "first_pos",
        "last_pos",
        "n_sites",
        "overlap",
    ]
    expected = naive_bounds(panel.n_sites, WINDOW_LENGTH, WINDOW_OVERLAP)
    assert len(w) == len(expected) > 3
    assert w["window"].tolist() == list(range(len(expected)))
    assert list(zip(w["first_site"], w["last_site"] + 1, strict=True)) == expected
    pos = panel.sites["pos"].to_numpy()
    assert w["first_pos"].tolist() == pos[[a for a, _ in expected]].tolist()
    assert w["last_pos"].tolist() == pos[[b - 1 for _, b in expected]].tolist()
    assert w["n_sites"].tolist() == [b - a for a, b in expected]
    assert w["overlap"].tolist() == [0] + [
        expected[i - 1][1] - expected[i][0] for i in range(1, len(expected))
    ]
    assert (w["chrom"] == "20").all()


def test_haplotype_tables_equal_panel_slices(demo, demo_windows, split_dict):
    panel = read_panel(demo.vcf, "20")
    bounds = naive_bounds(panel.n_sites, WINDOW_LENGTH, WINDOW_OVERLAP)
    for split, samples in split_dict.items():
        path = demo_windows / "haplotypes" / f"{split}.parquet"
        pf = pq.ParquetFile(path)
        assert pf.num_row_groups == len(bounds)  # one row group per window
        cols = [2 * panel.samples.index(s) + p for s in samples for p in (0, 1)]
        for w, (a, b) in enumerate(bounds):
            t = pf.read_row_group(w).to_pandas()
            assert (t["window"] == w).all()
            assert t["sample"].astype(str).tolist() == [s for s in samples for _ in (0, 1)]
            assert t["hap"].tolist() == [0, 1] * len(samples)
            # a row's alleles are its bits, as a user unpacks them (docs/artifacts.md)
            assert (t["n_sites"] == b - a).all()
            got = np.stack(
                [np.unpackbits(np.frombuffer(r, np.uint8), bitorder="little") for r in t["alleles"]]
            )
            np.testing.assert_array_equal(got[:, : b - a], panel.haplotypes[a:b, cols].T)
            assert not got[:, b - a :].any()  # the last byte's unused bits are 0
        # the reader gives the same
        table = WindowedTable(path, "alleles")
        assert table.samples == samples and table.n_windows == len(bounds)
        a, b = bounds[-1]
        np.testing.assert_array_equal(table.read(len(bounds) - 1), panel.haplotypes[a:b, cols].T)
        assert table.metadata["split"] == split


@pytest.mark.parametrize("threads", [1, 3])
def test_packed_haplotypes_are_the_panels_bits_on_any_threads(
    demo, demo_windows, split_dict, threads
):
    """The reference the engine reads: every site's alleles of the train then val haplotypes as
    bits, whatever number of threads reads the windows."""
    panel = read_panel(demo.vcf, "20")
    tables = [WindowedTable(demo_windows / "haplotypes" / f"{s}.parquet", "alleles")
              for s in ("train", "val")]  # fmt: skip
    got = packed_haplotypes(tables, load_windows(demo_windows), threads)
    cols = [2 * panel.samples.index(s) + p for k in ("train", "val") for s in split_dict[k]
            for p in (0, 1)]  # fmt: skip
    want = np.packbits(panel.haplotypes[:, cols], axis=1, bitorder="little")
    np.testing.assert_array_equal(got, want)


@needs_bcftools
def test_reference_af_from_train_split_equals_bcftools(demo, demo_windows, split_dict):
    train = split_dict["train"]
    out = subprocess.run(
        [
            "bcftools",
            "view",
            "-m2",
            "-M2",
            "-v",
            "snps",
            "-s",
            ",".join(train),
            "-Ou",
            str(demo.vcf),
        ],
        check=True,
        capture_output=True,
    ).stdout
    q = subprocess.run(
        ["bcftools", "query", "-f", "%POS[\t%GT]\n", "-"],
        input=out,
        check=True,
        capture_output=True,
    ).stdout.decode()
    pos, ac = [], []
    for line in q.splitlines():
        f = line.split("\t")
        pos.append(int(f[0]))
        ac.append(sum(int(x) for gt in f[1:] for x in gt.split("|")))
    sites = pd.read_parquet(demo_windows / "sites.parquet")
    assert sites["pos"].tolist() == pos
    assert sites["ac"].tolist() == ac
    assert (sites["an"] == 2 * len(train)).all()
    af = np.array(ac) / (2 * len(train))
    np.testing.assert_allclose(sites["af"], af, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sites["maf"], np.minimum(af, 1 - af), rtol=0, atol=1e-12)
    # exactly the minor allele's count over AN, whichever allele is ALT (1 - af is off by an ulp at
    # some counts, which moves a site at a bin edge such as 5 % across it)
    minor = np.minimum(ac, 2 * len(train) - np.array(ac))
    np.testing.assert_array_equal(sites["maf"], minor / (2 * len(train)))


def test_sites_parquet_and_site_list_hash(demo, demo_windows):
    panel = read_panel(demo.vcf, "20")
    sites, slh = sites_with_hash(demo_windows)
    pd.testing.assert_frame_equal(
        sites[["chrom", "pos", "id", "ref", "alt"]], panel.sites, check_dtype=False
    )
    assert sites["site"].tolist() == list(range(panel.n_sites))
    bounds = naive_bounds(panel.n_sites, WINDOW_LENGTH, WINDOW_OVERLAP)
    assert sites["window"].tolist() == naive_owner(bounds, panel.n_sites)
    text = "".join(f"{r.chrom}\t{r.pos}\t{r.ref}\t{r.alt}\n" for r in panel.sites.itertuples())
    assert slh == hashlib.sha256(text.encode()).hexdigest()[:16]
    meta = pq.read_schema(demo_windows / "sites.parquet").metadata
    assert meta[b"format_version"] == str(FORMAT_VERSION).encode()


def test_skipped_tsv_and_summary(tmp_path, split_dict):
    rng = np.random.default_rng(4)
    samples = ["A", "B", "C", "D", "E"]
    recs = random_records(rng, 40, len(samples))
    recs.insert(5, ("20", recs[4][1] + 1, "A", "C,G", "PASS", ["0|1"] * 5))
    recs.insert(9, ("20", recs[8][1] + 1, "AT", "A", "PASS", ["0|1"] * 5))
    recs.insert(20, ("20", recs[19][1] + 1, "A", "G", "LowQual", ["0|1"] * 5))
    recs.insert(21, ("20", recs[20][1] + 1, "A", "G", "LowQual", ["0|1"] * 5))
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text(recs, samples))
    panel = read_panel(path, "20")
    split = {"train": ["A", "C", "E"], "val": ["B"], "test": ["D"]}
    summary = build_windows(panel, split, 16, 4, tmp_path / "w")
    skipped = pd.read_csv(tmp_path / "w" / "skipped.tsv", sep="\t")
    assert dict(zip(skipped["reason"], skipped["records"], strict=True)) == {
        "multiallelic": 1,
        "non_snv": 1,
        "no_alt": 0,
        "filtered": 2,
    }
    on_disk = read_json(tmp_path / "w" / "windows.json")
    assert on_disk == summary
    assert on_disk["n_sites"] == 40 and on_disk["samples"] == {"train": 3, "val": 1, "test": 1}
    assert on_disk["n_windows"] == len(naive_bounds(40, 16, 4))
    assert on_disk["skipped"]["filtered"] == 2
    # the train split decides AF; val/test do not
    sites = pd.read_parquet(tmp_path / "w" / "sites.parquet")
    cols = [0, 1, 4, 5, 8, 9]
    np.testing.assert_allclose(sites["af"], panel.haplotypes[:, cols].mean(axis=1))


def test_windowed_table_detects_a_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        WindowedTable(tmp_path / "nope.parquet", "alleles")
    with pytest.raises(ArtifactError, match="run the window stage first"):
        sites_with_hash(tmp_path)


@needs_bcftools
@pytest.mark.parametrize("split", ["val", "test"])
def test_other_splits_counts_equal_bcftools(demo, demo_windows, split_dict, split):
    """sites.parquet counts every split, so that one's own targets get the whole panel's
    frequencies (``reference_af``) without reading the haplotype tables again."""
    samples = split_dict[split]
    gts = subprocess.run(
        ["bcftools", "query", "-s", ",".join(samples), "-f", "%POS[\t%GT]\n", str(demo.vcf)],
        check=True,
        capture_output=True,
    ).stdout.decode()
    counts = {}
    for line in gts.splitlines():
        f = line.split("\t")
        counts[int(f[0])] = sum(int(x) for gt in f[1:] for x in gt.split("|"))
    sites = pd.read_parquet(demo_windows / "sites.parquet")
    np.testing.assert_array_equal(sites[f"ac_{split}"], [counts[p] for p in sites["pos"]])
    assert (sites[f"an_{split}"] == 2 * len(samples)).all()


def test_reference_counts_from_columns_equal_the_haplotype_tables(demo_windows, tmp_path):
    """A sites.parquet written before the split columns: the counts come from the split's
    haplotype tables, the same numbers."""
    sites = pd.read_parquet(demo_windows / "sites.parquet")
    splits = ("train", "val", "test")
    ac, an = reference_counts(sites, splits, demo_windows)
    old = sites.drop(columns=["ac_val", "an_val", "ac_test", "an_test"])
    ac_old, an_old = reference_counts(old, splits, demo_windows)
    np.testing.assert_array_equal(ac, ac_old)
    np.testing.assert_array_equal(an, an_old)
    assert (an == sum(sites[c].iloc[0] for c in ("an", "an_val", "an_test"))).all()
    np.testing.assert_array_equal(reference_af(sites, splits, demo_windows), ac / an)
    np.testing.assert_array_equal(reference_af(sites, ["train"], demo_windows), sites["af"])
