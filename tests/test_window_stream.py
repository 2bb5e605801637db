"""The streamed window stage writes byte for byte what the in-memory one wrote (kept here as the
reference implementation: the window stage before it streamed), and its memory does not grow with
the length of the chromosome."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pysam
import pytest
from conftest import vcf_text

from ragimpute import __version__, vcf_io
from ragimpute.atomic import PARQUET_WRITE, atomic_path, write_json, write_parquet, write_tsv
from ragimpute.genmap import read_genetic_map, site_cm, write_plink_map
from ragimpute.split import SPLITS, load_split
from ragimpute.vcf_io import read_panel, vcf_samples
from ragimpute.windows import (
    FORMAT_VERSION,
    owner_windows,
    run_window_stage,
    site_list_hash,
    window_bounds,
)

# -- the reference: build_windows and write_windowed as they were before the stage streamed ------


def reference_write_windowed(path, blocks, column, samples, metadata):
    """Haplotype tables: a row's alleles as bits (format 3), written whole with their metadata."""
    n_rows = 2 * len(samples)
    sample_col = pa.array(
        np.repeat(np.asarray(samples, dtype=object), 2), pa.string()
    ).dictionary_encode()
    hap_col = pa.array(np.tile(np.array([0, 1], dtype=np.int8), len(samples)))
    schema = pa.schema(
        [
            ("window", pa.int32()),
            ("sample", sample_col.type),
            ("hap", pa.int8()),
            (column, pa.binary()),
            ("n_sites", pa.int32()),
        ]
    ).with_metadata({k: str(v) for k, v in metadata.items()})
    options = {**PARQUET_WRITE, "use_dictionary": ["window", "sample", "hap", "n_sites"]}
    with atomic_path(path, suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp, schema, **options) as writer:
            for w, block in enumerate(blocks):
                length = block.shape[1]
                bits = [np.packbits(row, bitorder="little").tobytes() for row in block]
                arrays = [
                    pa.array(np.full(n_rows, w, dtype=np.int32)),
                    sample_col,
                    hap_col,
                    pa.array(bits, pa.binary()),
                    pa.array(np.full(n_rows, length, dtype=np.int32)),
                ]
                writer.write_table(
                    pa.Table.from_arrays(arrays, schema=schema), row_group_size=max(n_rows, 1)
                )


def reference_hap_columns(panel, samples):
    pos = {s: i for i, s in enumerate(panel.samples)}
    return np.array([2 * pos[s] + p for s in samples for p in (0, 1)], dtype=np.int64)


def reference_build_windows(panel, split, length, overlap, out_dir, genetic_map=None):
    out = Path(out_dir)
    n = panel.n_sites
    bounds = window_bounds(n, length, overlap)
    owner = owner_windows(bounds, n)
    ref_cols = reference_hap_columns(panel, split["train"])
    ac = np.take(panel.haplotypes, ref_cols, axis=1).sum(axis=1, dtype=np.int64)
    an = len(ref_cols)
    af = ac / an
    sites = panel.sites.copy()
    sites["site"] = np.arange(n, dtype=np.int64)
    sites["window"] = owner
    sites["ac"] = ac
    sites["an"] = an
    sites["af"] = af
    sites["maf"] = np.minimum(ac, an - ac) / an
    for name in ("val", "test"):
        cols = reference_hap_columns(panel, split[name])
        sites[f"ac_{name}"] = np.take(panel.haplotypes, cols, axis=1).sum(axis=1, dtype=np.int64)
        sites[f"an_{name}"] = len(cols)
    sites["cm"] = site_cm(sites["pos"].to_numpy(), genetic_map)
    slh = site_list_hash(sites)
    meta = {"format_version": FORMAT_VERSION, "site_list_hash": slh, "chrom": panel.chrom}
    write_parquet(out / "sites.parquet", pa.Table.from_pandas(sites, preserve_index=False), meta)
    windows = pd.DataFrame(
        {
            "window": np.arange(len(bounds), dtype=np.int32),
            "chrom": panel.chrom,
            "first_site": bounds[:, 0],
            "last_site": bounds[:, 1] - 1,
            "first_pos": sites["pos"].to_numpy()[bounds[:, 0]],
            "last_pos": sites["pos"].to_numpy()[bounds[:, 1] - 1],
            "n_sites": bounds[:, 1] - bounds[:, 0],
            "overlap": np.r_[0, np.maximum(bounds[:-1, 1] - bounds[1:, 0], 0)],
        }
    )
    write_parquet(
        out / "windows.parquet", pa.Table.from_pandas(windows, preserve_index=False), meta
    )
    for name in SPLITS:
        cols = reference_hap_columns(panel, split[name])
        blocks = [np.take(panel.haplotypes[a:b], cols, axis=1).T for a, b in bounds]
        # the digest of the alleles: each window's shape, then its rows of bits
        digest = hashlib.sha256()
        for block in blocks:
            digest.update(f"{block.shape[0]}x{block.shape[1]}\n".encode())
            digest.update(np.packbits(block, axis=1, bitorder="little").tobytes())
        reference_write_windowed(
            out / "haplotypes" / f"{name}.parquet",
            blocks,
            "alleles",
            split[name],
            {**meta, "split": name, "n_windows": len(bounds),
             "haplotypes_digest": digest.hexdigest()[:16]},
        )  # fmt: skip
    skipped = pd.DataFrame({"reason": list(panel.skipped), "records": list(panel.skipped.values())})
    write_tsv(out / "skipped.tsv", skipped)
    summary = {
        **meta,
        "ragimpute": __version__,
        "source": panel.path,
        "n_sites": n,
        "n_indels": int((sites["ref"].str.len() != sites["alt"].str.len()).sum()),
        "n_windows": len(bounds),
        "window_length": length,
        "window_overlap": overlap,
        "samples": {k: len(v) for k, v in split.items()},
        "genetic_map": genetic_map.path if genetic_map else None,
        "cm_per_mb_default": None if genetic_map else 1.0,
        "skipped": panel.skipped,
    }
    write_json(out / "windows.json", summary)
    return summary


def reference_window_stage(panel_vcf, split_tsv, chrom, length, overlap, out_dir, genetic_map=None,
                           region=None):  # fmt: skip
    split = load_split(split_tsv)
    order = {s: i for i, s in enumerate(vcf_samples(panel_vcf))}
    samples = sorted((s for name in SPLITS for s in split[name]), key=lambda s: order.get(s, -1))
    panel = read_panel(panel_vcf, chrom, samples=samples, region=region)
    gmap = read_genetic_map(genetic_map, chrom) if genetic_map else None
    return reference_build_windows(panel, split, length, overlap, out_dir, gmap)


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# -- streamed == in memory -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def n_sites(demo):
    return read_panel(demo.vcf, "20").n_sites


def _last_window_full(n: int) -> tuple[int, int]:
    """length/overlap whose windows end exactly on the last site (no shorter last window)."""
    length, stride = 60, 45
    length += (n - length) % stride  # now (n - length) % stride == 0
    return length, length - stride


# (length, overlap) as functions of the number of sites n: the last window cut short, or ending
# exactly at the last site, a single window (shorter than, or exactly, the chromosome), stride 1.
CASES = {
    "default": lambda n: (64, 16),
    "no-overlap": lambda n: (50, 0),
    "stride-1": lambda n: (10, 9),
    "last-window-full": _last_window_full,
    "one-short-window": lambda n: (n + 5, 3),
    "one-exact-window": lambda n: (n, 0),
    "two-windows-last-of-one-site": lambda n: (n - 1, 0),
}


@pytest.mark.parametrize("chunk", [2048, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_windows_equal_the_in_memory_ones(demo, demo_split, n_sites, tmp_path,
                                                   monkeypatch, case, chunk):  # fmt: skip
    length, overlap = CASES[case](n_sites)
    bounds = window_bounds(n_sites, length, overlap)
    if case == "last-window-full":
        assert bounds[-1, 1] - bounds[-1, 0] == length
    reference_window_stage(demo.vcf, demo_split, "20", length, overlap, tmp_path / "memory")
    monkeypatch.setattr(vcf_io, "_CHUNK_RECORDS", chunk)  # blocks that end anywhere in a window
    summary = run_window_stage(demo.vcf, demo_split, "20", length, overlap, tmp_path / "stream")
    want, got = files(tmp_path / "memory"), files(tmp_path / "stream")
    assert (
        sorted(got)
        == sorted(want)
        == [
            "haplotypes/test.parquet",
            "haplotypes/train.parquet",
            "haplotypes/val.parquet",
            "sites.parquet",
            "skipped.tsv",
            "windows.json",
            "windows.parquet",
        ]
    )
    for name in want:
        assert got[name] == want[name], name
    assert summary == json.loads(want["windows.json"])
    assert summary["n_windows"] == len(bounds)


def test_streamed_region_and_genetic_map_equal_the_in_memory_ones(demo, demo_split, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    panel = read_panel(demo.vcf, "20")
    pos = panel.sites["pos"].to_numpy()
    gmap = tmp_path / "map.map"
    write_plink_map(gmap, "20", pos[::40], np.linspace(0, 0.7, len(pos[::40])) ** 2)
    region = (int(pos[50]), int(pos[300]))
    args = ("20", 32, 8)
    reference_window_stage(demo.vcf, demo_split, *args, tmp_path / "memory", gmap, region)
    monkeypatch.setattr(vcf_io, "_CHUNK_RECORDS", 19)
    run_window_stage(demo.vcf, demo_split, *args, tmp_path / "stream", genetic_map=gmap,
                     region=region)  # fmt: skip
    assert files(tmp_path / "stream") == files(tmp_path / "memory")
    sites = pd.read_parquet(tmp_path / "stream" / "sites.parquet")
    assert sites["pos"].iloc[0] == region[0] and sites["pos"].iloc[-1] == region[1]


# -- memory: independent of the chromosome's length ------------------------------------------------

PEAK_RSS = textwrap.dedent(
    """
    import json, sys
    from ragimpute.windows import run_window_stage

    def vm_hwm_kb():  # this process's own peak RSS since exec (ru_maxrss counts the parent's too)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    vcf, split, out = sys.argv[1:4]
    before = vm_hwm_kb()  # the interpreter with numpy, pandas, pyarrow and pysam imported
    run_window_stage(vcf, split, "20", 256, 64, out)
    print(json.dumps({"before_kb": before, "peak_kb": vm_hwm_kb()}))
    """
)


def random_panel(path: Path, n_sites: int, n_samples: int, seed: int = 0) -> Path:
    """A bgzipped, indexed panel of random phased genotypes, written with numpy (fast at this size)."""
    rng = np.random.default_rng(seed)
    gts = np.array([b"0|0\t", b"0|1\t", b"1|0\t", b"1|1\t"])
    samples = [f"S{i}" for i in range(n_samples)]
    head = vcf_text([], samples).encode()
    with open(path.with_suffix(""), "wb") as f:
        f.write(head)
        for a in range(0, n_sites, 1000):
            codes = rng.integers(0, 4, (min(1000, n_sites - a), n_samples))
            body = gts[codes].view(np.uint8).reshape(len(codes), -1)
            for i, row in enumerate(body):
                pos = 1000 + 10 * (a + i)
                f.write(f"20\t{pos}\t.\tA\tG\t.\tPASS\t.\tGT\t".encode())
                f.write(row[:-1].tobytes() + b"\n")
    pysam.tabix_compress(str(path.with_suffix("")), str(path), force=True)
    path.with_suffix("").unlink()
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def peak_rss_growth_mb(vcf: Path, split: Path, out: Path) -> float:
    r = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(vcf), str(split), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return (m["peak_kb"] - m["before_kb"]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_window_stage_memory_does_not_grow_with_the_chromosome(tmp_path):
    """Window a panel, then one twice as long: the stage's peak memory grows by a small fraction of
    the haplotypes added (the per-site table: a few numbers per site), where holding the chromosome
    would grow it by at least all of them."""
    n_samples, n_sites = 2000, 6000
    samples = [f"S{i}" for i in range(n_samples)]
    split = tmp_path / "split.tsv"
    pd.DataFrame(
        {"sample": samples, "split": np.resize(["train", "val", "test"], n_samples)}
    ).to_csv(split, sep="\t", index=False)
    growth = {}
    for k in (1, 2):
        vcf = random_panel(tmp_path / f"panel{k}.vcf.gz", k * n_sites, n_samples, seed=k)
        growth[k] = peak_rss_growth_mb(vcf, split, tmp_path / f"w{k}")
    added_mb = n_sites * 2 * n_samples / 2**20  # the haplotypes the longer chromosome adds
    assert growth[2] - growth[1] < 0.3 * added_mb, (growth, added_mb)
