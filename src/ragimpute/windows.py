"""Cut a chromosome into windows of consecutive biallelic SNVs and store haplotypes per window.

Artifacts (one directory per chromosome):
- ``sites.parquet``: chrom, pos, id, ref, alt, site (0-based index), window (the window whose centre
  is nearest; used to stitch overlapping windows), reference AC/AN/AF/MAF (train split only), cm
  (genetic position: from ``panel.genetic_map``, or 1 cM/Mb);
- ``windows.parquet``: window, chrom, first/last site and position, n_sites, overlap with the previous;
- ``haplotypes/<split>.parquet``: one row per (window, sample, hap) with ``alleles`` (list of 0/1),
  one Parquet row group per window so that a window is read without the rest;
- ``skipped.tsv``: records skipped per reason (multi-allelic, non-SNV, ...).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .atomic import (
    PARQUET_WRITE,
    atomic_path,
    open_parquet,
    parquet_metadata,
    read_parquet_df,
    reading,
    write_json,
    write_parquet,
    write_tsv,
)
from .errors import ArtifactError, InputError
from .genmap import GeneticMap, read_genetic_map, site_cm
from .logs import log
from .split import SPLITS
from .vcf_io import Panel

FORMAT_VERSION = 2  # 2: the cm column


def window_bounds(n_sites: int, length: int, overlap: int) -> np.ndarray:
    """``[start, stop)`` site indices of each window; consecutive windows share ``overlap`` sites.

    The last window may be shorter than ``length`` (the model pads it and masks the padding).
    """
    if length < 1 or not 0 <= overlap < length:
        raise InputError(
            "windows",
            f"need length >= 1 and 0 <= overlap < length, got length {length}, overlap {overlap}",
            "Fix windows.length / windows.overlap in the config (--length / --overlap)",
        )
    if n_sites < 1:
        raise ValueError("no sites to window")
    stride = length - overlap
    starts = [0]
    while starts[-1] + length < n_sites:
        starts.append(starts[-1] + stride)
    starts = np.asarray(starts, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + length, n_sites)], axis=1)


def owner_windows(bounds: np.ndarray, n_sites: int) -> np.ndarray:
    """For each site, the covering window in which it lies farthest from an edge (lower id on ties)."""
    owner = np.full(n_sites, -1, dtype=np.int32)
    best = np.full(n_sites, -1, dtype=np.int64)
    idx = np.arange(n_sites)
    for w, (a, b) in enumerate(bounds):
        s = idx[a:b]
        margin = np.minimum(s - a, b - 1 - s)
        better = margin > best[a:b]
        owner[a:b][better] = w
        best[a:b][better] = margin[better]
    return owner


def site_list_hash(sites: pd.DataFrame) -> str:
    """16 hex of SHA-256 over ``chrom pos ref alt`` lines: identifies the site list a mask applies to."""
    columns = [sites[c].astype(str).tolist() for c in ("chrom", "pos", "ref", "alt")]
    text = "".join(f"{c}\t{p}\t{r}\t{a}\n" for c, p, r, a in zip(*columns, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hap_columns(panel: Panel, samples: list[str]) -> np.ndarray:
    pos = {s: i for i, s in enumerate(panel.samples)}
    cols = np.empty(2 * len(samples), dtype=np.int64)
    for j, s in enumerate(samples):
        cols[2 * j] = 2 * pos[s]
        cols[2 * j + 1] = 2 * pos[s] + 1
    return cols


def build_windows(
    panel: Panel,
    split: dict[str, list[str]],
    length: int,
    overlap: int,
    out_dir: str | os.PathLike,
    genetic_map: GeneticMap | None = None,
) -> dict:
    """Write sites, windows and per-split haplotype tables for one chromosome."""
    out = Path(out_dir)
    n = panel.n_sites
    bounds = window_bounds(n, length, overlap)
    owner = owner_windows(bounds, n)

    # np.take here and below: fancy indexing along axis 1 is several times slower on large panels.
    ref_cols = hap_columns(panel, split["train"])
    ac = np.take(panel.haplotypes, ref_cols, axis=1).sum(axis=1, dtype=np.int64)
    an = len(ref_cols)
    af = ac / an
    sites = panel.sites.copy()
    sites["site"] = np.arange(n, dtype=np.int64)
    sites["window"] = owner
    sites["ac"] = ac
    sites["an"] = an
    sites["af"] = af
    sites["maf"] = np.minimum(af, 1 - af)
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
        cols = hap_columns(panel, split[name])
        # transposed window by window: small blocks stay in cache, a whole-chromosome .T does not
        blocks = (np.take(panel.haplotypes[a:b], cols, axis=1).T for a, b in bounds)
        write_windowed(
            out / "haplotypes" / f"{name}.parquet",
            blocks,
            "alleles",
            split[name],
            {**meta, "split": name, "n_windows": len(bounds)},
        )

    skipped = pd.DataFrame({"reason": list(panel.skipped), "records": list(panel.skipped.values())})
    write_tsv(out / "skipped.tsv", skipped)
    summary = {
        **meta,
        "ragimpute": __version__,
        "source": panel.path,
        "n_sites": n,
        "n_windows": len(bounds),
        "window_length": length,
        "window_overlap": overlap,
        "samples": {k: len(v) for k, v in split.items()},
        "genetic_map": genetic_map.path if genetic_map else None,
        "cm_per_mb_default": None if genetic_map else 1.0,
        "skipped": panel.skipped,
    }
    write_json(out / "windows.json", summary)
    log.info(
        "%s: %d sites in %d windows (length %d, overlap %d); skipped %s",
        panel.chrom,
        n,
        len(bounds),
        length,
        overlap,
        ", ".join(f"{k}={v}" for k, v in panel.skipped.items()) or "none",
    )
    return summary


# -- windowed tables: shared by haplotypes (``alleles``) and tokens (``tokens``) -------------------


def write_windowed(
    path: str | os.PathLike,
    blocks: Iterator[np.ndarray],
    column: str,
    samples: list[str],
    metadata: dict,
    extra_columns: dict[str, str] | None = None,
    value_type: type = np.uint8,
) -> None:
    """One row group per window; rows are (sample, hap) in ``samples`` order, hap 0 then 1.

    ``extra_columns`` are constant string columns (the mask hash on token tables): redundant with the
    schema metadata, but visible to anyone who opens the table in pandas or duckdb.
    """
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
            (column, pa.list_(pa.from_numpy_dtype(value_type))),
        ]
        + [(k, pa.string()) for k in (extra_columns or {})]
    ).with_metadata({k: str(v) for k, v in metadata.items()})
    with atomic_path(path, suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp, schema, **PARQUET_WRITE) as writer:
            for w, block in enumerate(blocks):
                if block.shape[0] != n_rows:
                    raise ValueError(f"window {w}: {block.shape[0]} rows, expected {n_rows}")
                length = block.shape[1]
                offsets = pa.array(np.arange(n_rows + 1, dtype=np.int32) * length)
                values = pa.ListArray.from_arrays(
                    offsets, pa.array(np.ascontiguousarray(block).ravel())
                )
                arrays = [pa.array(np.full(n_rows, w, dtype=np.int32)), sample_col, hap_col, values]
                arrays += [
                    pa.array([v] * n_rows, pa.string()) for v in (extra_columns or {}).values()
                ]
                # an empty split (no sample) still gets one (empty) row group per window
                writer.write_table(
                    pa.Table.from_arrays(arrays, schema=schema), row_group_size=max(n_rows, 1)
                )


@dataclass
class WindowedTable:
    """Read access to a windowed Parquet table, one window at a time."""

    path: Path
    column: str

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        # the stage that writes it, named when the file is missing or corrupt
        self.stage = "tokenize" if self.column == "tokens" else "window"
        if not self.path.exists():
            raise ArtifactError(f"{self.path} is missing; re-run the stage that writes it")
        self._file = open_parquet(self.path, self.stage)
        self.metadata = parquet_metadata(self.path, self.stage)
        self.n_windows = self._file.num_row_groups
        with reading(self.path, self.stage):
            first = self._file.read_row_group(0, columns=["sample"]) if self.n_windows else None
        self.samples: list[str] = (
            first.column("sample").to_pylist()[0::2] if first is not None else []
        )

    @property
    def n_haplotypes(self) -> int:
        return 2 * len(self.samples)

    def read(self, window: int) -> np.ndarray:
        """(2 * n_samples, window length) uint8 matrix of one window."""
        with reading(self.path, self.stage):
            t = self._file.read_row_group(window, columns=["window", self.column])
        if t.num_rows == 0:  # a split without samples
            return np.zeros((0, 0), dtype=np.uint8)
        got = t.column("window")[0].as_py()
        if got != window:
            raise ArtifactError(
                f"{self.path}: row group {window} holds window {got}; the file is corrupt"
            )
        col = t.column(self.column).combine_chunks()
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for w in range(self.n_windows):
            yield w, self.read(w)


def packed_haplotypes(tables: list[WindowedTable], windows: pd.DataFrame) -> np.ndarray:
    """(sites, ceil(haplotypes / 8)) bits of every site for the haplotypes of ``tables`` one after the
    other (little bit order: byte j holds haplotypes 8j..8j+7), read window by window so that one
    window is held unpacked at a time."""
    n_sites = int(windows["last_site"].max()) + 1 if len(windows) else 0
    n_hap = sum(t.n_haplotypes for t in tables)
    out = np.zeros((n_sites, -(-n_hap // 8)), dtype=np.uint8)
    done = 0
    for w, (a, b) in enumerate(windows[["first_site", "last_site"]].to_numpy()):
        if b < done:
            continue
        block = np.concatenate(
            [t.read(w)[:, done - a :] for t in tables]
        )  # (haplotypes, new sites)
        out[done : b + 1] = np.packbits(block.T, axis=1, bitorder="little")
        done = b + 1
    return out


def load_sites(windows_dir: str | os.PathLike) -> pd.DataFrame:
    return read_parquet_df(_stage_file(windows_dir, "sites.parquet"), "window")


def load_windows(windows_dir: str | os.PathLike) -> pd.DataFrame:
    return read_parquet_df(_stage_file(windows_dir, "windows.parquet"), "window")


def _stage_file(windows_dir: str | os.PathLike, name: str) -> Path:
    path = Path(windows_dir) / name
    if not path.exists():
        raise ArtifactError(f"{path} is missing; run the window stage first (`ragimpute window`)")
    return path


def run_window_stage(
    panel_vcf: str | os.PathLike,
    split_tsv: str | os.PathLike,
    chrom: str,
    length: int,
    overlap: int,
    out_dir: str | os.PathLike,
    pass_only: bool = True,
    genetic_map: str | os.PathLike | None = None,
    region: tuple[int, int] | None = None,
) -> dict:
    """The window stage of a chromosome, or of one chunk of it (``region``: first, last bp)."""
    from .split import load_split
    from .vcf_io import read_panel, vcf_samples

    split = load_split(split_tsv)
    # Ask for the samples in file order: build_windows picks each split's columns anyway, and
    # read_panel then has no columns to shuffle.
    order = {s: i for i, s in enumerate(vcf_samples(panel_vcf))}
    samples = sorted((s for name in SPLITS for s in split[name]), key=lambda s: order.get(s, -1))
    panel = read_panel(panel_vcf, chrom, samples=samples, pass_only=pass_only, region=region)
    gmap = read_genetic_map(genetic_map, chrom) if genetic_map else None
    return build_windows(panel, split, length, overlap, out_dir, gmap)


def sites_with_hash(windows_dir: str | os.PathLike) -> tuple[pd.DataFrame, str]:
    path = Path(windows_dir) / "sites.parquet"
    if not path.exists():
        raise ArtifactError(f"{path} is missing; run the window stage first")
    meta = parquet_metadata(path, "window")
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format {meta.get('format_version')}, expected {FORMAT_VERSION}; re-run windowing"
        )
    return read_parquet_df(path, "window"), meta["site_list_hash"]
