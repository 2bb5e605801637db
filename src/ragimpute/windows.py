"""Cut a chromosome into windows of consecutive biallelic SNVs and store haplotypes per window.

Artifacts (one directory per chromosome):
- ``sites.parquet``: chrom, pos, id, ref, alt, site (0-based index), window (the window whose centre
  is nearest; used to stitch overlapping windows), reference AC/AN/AF/MAF (train split only), cm
  (genetic position: from ``panel.genetic_map``, or 1 cM/Mb);
- ``windows.parquet``: window, chrom, first/last site and position, n_sites, overlap with the previous;
- ``haplotypes/<split>.parquet``: one row per (window, sample, hap) with ``alleles`` (its 0/1 over
  the window's ``n_sites`` sites, as bits) and ``n_sites``, one Parquet row group per window so that
  a window is read without the rest;
- ``skipped.tsv``: records skipped per reason (multi-allelic, non-SNV, ...).

The stage streams the panel (``write_windows``): a window's haplotypes are written as soon as its
last site has been read, so that its memory is a window and a block of records, not a chromosome.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
from .vcf_io import Panel, PanelStream, Site, SitePositions, snv_sites

FORMAT_VERSION = 3  # 2: the cm column; 3: haplotype alleles as packed bits
BITS_COLUMN = "n_sites"  # in a table of bits (the haplotype tables): the sites of the row's window
# In a haplotype table's schema metadata: the digest of its alleles (``AllelesDigest``), which the
# artifacts made from the table (tokens, the index, the state index, model.pt) record, so that they are
# never used with other haplotypes of the same layout (another panel file, the same samples and sites).
DIGEST_KEY = "haplotypes_digest"


def window_bounds(n_sites: int, length: int, overlap: int) -> np.ndarray:
    """``[start, stop)`` site indices of each window; consecutive windows share ``overlap`` sites.

    The last window may be shorter than ``length`` (the model pads it and masks the padding).
    """
    check_window_params(length, overlap)
    if n_sites < 1:
        raise ValueError("no sites to window")
    stride = length - overlap
    starts = [0]
    while starts[-1] + length < n_sites:
        starts.append(starts[-1] + stride)
    starts = np.asarray(starts, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + length, n_sites)], axis=1)


def check_window_params(length: int, overlap: int) -> None:
    if length < 1 or not 0 <= overlap < length:
        raise InputError(
            "windows",
            f"need length >= 1 and 0 <= overlap < length, got length {length}, overlap {overlap}",
            "Fix windows.length / windows.overlap in the config (--length / --overlap)",
        )


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


class AllelesDigest:
    """16 hex of SHA-256 over a haplotype table's windows in order: each window's shape and its rows
    of bits (as ``WindowedWriter`` stores them). Computed while the table is written, and from the
    table (``haplotypes_digest``) where an earlier version wrote none."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, packed: np.ndarray, n_sites: int) -> None:
        self._h.update(f"{packed.shape[0]}x{n_sites}\n".encode())
        self._h.update(np.ascontiguousarray(packed).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


def haplotypes_digest(table: WindowedTable) -> str:
    """The digest of a haplotype table's alleles: as its metadata records it, or (a table written by
    an earlier version) computed from its windows, which gives the same value."""
    recorded = table.metadata.get(DIGEST_KEY)
    if recorded:
        return recorded
    st = os.stat(table.path)
    return _computed_digest(str(table.path), table.column, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _computed_digest(path: str, column: str, size: int, mtime_ns: int) -> str:
    """``haplotypes_digest`` of a table that records none: it reads the whole table, so once per
    process for each version of the file (size and time), not at every check that asks."""
    digest = AllelesDigest()
    for _, alleles in WindowedTable(path, column):
        digest.add(np.packbits(alleles, axis=1, bitorder="little"), alleles.shape[1])
    return digest.hexdigest()


def reference_identity(windows_dir: str | os.PathLike) -> dict[str, str]:
    """What identifies the reference a model is trained on and imputes with, without paths: the site
    list hash and the digest of the train split's haplotypes (the table neighbour ids index)."""
    train = WindowedTable(Path(windows_dir) / "haplotypes" / "train.parquet", "alleles")
    return {"site_list_hash": sites_hash(windows_dir), DIGEST_KEY: haplotypes_digest(train)}


def hap_columns(panel_samples: list[str], samples: list[str]) -> np.ndarray:
    """Haplotype columns (``2 * j + phase``) of ``samples`` among a panel's ``panel_samples``."""
    pos = {s: i for i, s in enumerate(panel_samples)}
    cols = np.empty(2 * len(samples), dtype=np.int64)
    for j, s in enumerate(samples):
        cols[2 * j] = 2 * pos[s]
        cols[2 * j + 1] = 2 * pos[s] + 1
    return cols


class PanelBlocks:
    """A panel already in memory as ``PanelStream`` gives one: blocks of (sites, haplotypes)."""

    def __init__(self, panel: Panel, block: int = 2048):
        self.path, self.chrom, self.samples = panel.path, panel.chrom, panel.samples
        self.skipped = panel.skipped
        self._panel, self._block = panel, block

    def __iter__(self) -> Iterator[tuple[list[Site], np.ndarray]]:
        rows = self._panel.sites[["chrom", "pos", "id", "ref", "alt"]]
        for a in range(0, self._panel.n_sites, self._block):
            b = min(a + self._block, self._panel.n_sites)
            yield (
                list(rows.iloc[a:b].itertuples(index=False, name=None)),
                self._panel.haplotypes[a:b],
            )


def build_windows(
    panel: Panel,
    split: dict[str, list[str]],
    length: int,
    overlap: int,
    out_dir: str | os.PathLike,
    genetic_map: GeneticMap | None = None,
) -> dict:
    """Write sites, windows and per-split haplotype tables for one chromosome held in memory (the
    window stage streams it instead: ``write_windows``, which this calls)."""
    return write_windows(PanelBlocks(panel), split, length, overlap, out_dir, genetic_map)


def write_windows(
    panel: PanelStream | PanelBlocks,
    split: dict[str, list[str]],
    length: int,
    overlap: int,
    out_dir: str | os.PathLike,
    genetic_map: GeneticMap | None = None,
) -> dict:
    """Write sites, windows and per-split haplotype tables for one chromosome, read block by block:
    each window's haplotypes go out as soon as its last site has been read, so that memory holds
    one window (and a block being read) of haplotypes, plus a few numbers per site for
    ``sites.parquet``, whatever the length of the chromosome.

    Nothing is replaced unless the whole panel was read: the tables are written to temporary files
    until then. Their schema metadata (the site list hash, the number of windows) is known only at
    the end; it is then written into their footers (``WindowedWriter``).
    """
    check_window_params(length, overlap)
    out = Path(out_dir)
    cols = {name: hap_columns(panel.samples, split[name]) for name in SPLITS}
    sites = _SiteColumns(cols)
    cutter = _WindowCutter(length, overlap)
    with contextlib.ExitStack() as stack:
        writers = {
            name: stack.enter_context(
                windowed_writer(
                    out / "haplotypes" / f"{name}.parquet", "alleles", split[name], value_type=bool
                )
            )
            for name in SPLITS
        }

        def write(windows: Iterator[np.ndarray]) -> None:
            for haplotypes in windows:
                for name, writer in writers.items():
                    writer.write(haplotype_rows(haplotypes, cols[name]))

        for block_sites, haplotypes in panel:
            sites.add(block_sites, haplotypes)
            write(cutter.add(haplotypes))
        write(cutter.finish())
        bounds = np.asarray(cutter.bounds, dtype=np.int64)
        table, meta = _write_sites(sites, bounds, panel.chrom, out, genetic_map)
        for name, writer in writers.items():
            writer.metadata = {
                **meta,
                "split": name,
                "n_windows": len(bounds),
                DIGEST_KEY: writer.digest.hexdigest(),
            }
    return _summary(panel, out, meta, table, bounds, split, length, overlap, genetic_map)


def _write_sites(
    sites: _SiteColumns,
    bounds: np.ndarray,
    chrom: str,
    out: Path,
    genetic_map: GeneticMap | None,
) -> tuple[pd.DataFrame, dict]:
    """``sites.parquet`` and ``windows.parquet``; returns the sites and the tables' metadata."""
    table = sites.table(owner_windows(bounds, sites.n), genetic_map)
    meta = {"format_version": FORMAT_VERSION, "site_list_hash": sites.hash(), "chrom": chrom}
    write_parquet(out / "sites.parquet", pa.Table.from_pandas(table, preserve_index=False), meta)
    pos = table["pos"].to_numpy()
    windows = pd.DataFrame(
        {
            "window": np.arange(len(bounds), dtype=np.int32),
            "chrom": chrom,
            "first_site": bounds[:, 0],
            "last_site": bounds[:, 1] - 1,
            "first_pos": pos[bounds[:, 0]],
            "last_pos": pos[bounds[:, 1] - 1],
            "n_sites": bounds[:, 1] - bounds[:, 0],
            "overlap": np.r_[0, np.maximum(bounds[:-1, 1] - bounds[1:, 0], 0)],
        }
    )
    write_parquet(
        out / "windows.parquet", pa.Table.from_pandas(windows, preserve_index=False), meta
    )
    return table, meta


def _summary(
    panel: PanelStream | PanelBlocks,
    out: Path,
    meta: dict,
    sites: pd.DataFrame,
    bounds: np.ndarray,
    split: dict[str, list[str]],
    length: int,
    overlap: int,
    genetic_map: GeneticMap | None,
) -> dict:
    """``skipped.tsv`` and ``windows.json`` (returned), and the log line, of the ``sites`` table."""
    n, n_indels = len(sites), int((~snv_sites(sites)).sum())  # panel.indels: the rest are SNVs
    skipped = pd.DataFrame({"reason": list(panel.skipped), "records": list(panel.skipped.values())})
    write_tsv(out / "skipped.tsv", skipped)
    summary = {
        **meta,
        "ragimpute": __version__,
        "source": panel.path,
        "n_sites": n,
        "n_indels": n_indels,
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
        "%s: %d sites (%d of them indels) in %d windows (length %d, overlap %d); skipped %s",
        panel.chrom,
        n,
        n_indels,
        len(bounds),
        length,
        overlap,
        ", ".join(f"{k}={v}" for k, v in panel.skipped.items()) or "none",
    )
    return summary


class _SiteColumns:
    """What ``sites.parquet`` holds of each site as the blocks go by: the five VCF columns, each
    split's ALT count (``split_cols``: the split's haplotype columns) and the site list hash
    (``site_list_hash``, fed line by line). A few pointers and numbers per site, no genotype."""

    def __init__(self, split_cols: dict[str, np.ndarray]):
        self.split_cols = split_cols
        self.columns: dict[str, list] = {c: [] for c in ("chrom", "id", "ref", "alt")}
        self.pos: list[np.ndarray] = []
        self.ac: dict[str, list[np.ndarray]] = {name: [] for name in split_cols}
        self._names: dict[str, str] = {}  # one string object per chromosome name
        self._hash = hashlib.sha256()
        self.n = 0

    def add(self, sites: list[Site], haplotypes: np.ndarray) -> None:
        chrom = [self._names.setdefault(s[0], s[0]) for s in sites]
        self.columns["chrom"] += chrom
        for i, c in ((2, "id"), (3, "ref"), (4, "alt")):
            self.columns[c] += [s[i] for s in sites]
        self.pos.append(np.fromiter((s[1] for s in sites), dtype=np.int64, count=len(sites)))
        for name, cols in self.split_cols.items():
            # np.take: fancy indexing along axis 1 is several times slower on large panels
            self.ac[name].append(np.take(haplotypes, cols, axis=1).sum(axis=1, dtype=np.int64))
        self._hash.update("".join(f"{s[0]}\t{s[1]}\t{s[3]}\t{s[4]}\n" for s in sites).encode())
        self.n += len(sites)

    def hash(self) -> str:
        """``site_list_hash`` of the sites added."""
        return self._hash.hexdigest()[:16]

    def table(self, owner: np.ndarray, genetic_map: GeneticMap | None) -> pd.DataFrame:
        """The ``sites.parquet`` table: the VCF columns, site index, owner window, the train split's
        AC/AN/AF/MAF, the other splits' AC/AN (``ac_val an_val ac_test an_test``) and cM."""
        concat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
        sites = pd.DataFrame(
            {
                "chrom": self.columns["chrom"],
                "pos": concat(self.pos),
                **{c: self.columns[c] for c in ("id", "ref", "alt")},
            }
        )
        ac = concat(self.ac["train"])
        an = len(self.split_cols["train"])
        sites["site"] = np.arange(self.n, dtype=np.int64)
        sites["window"] = owner
        sites["ac"] = ac
        sites["an"] = an
        sites["af"] = ac / an
        # from the counts: 1 - af is not always the minor count's frequency to the bit (AC 456 of
        # 480 gives 0.050000000000000044), and MAF bins and thresholds are closed at such values
        sites["maf"] = np.minimum(ac, an - ac) / an
        for name in (n for n in self.split_cols if n != "train"):
            sites[f"ac_{name}"] = concat(self.ac[name])
            sites[f"an_{name}"] = len(self.split_cols[name])
        sites["cm"] = site_cm(sites["pos"].to_numpy(), genetic_map)
        return sites


def reference_counts(
    sites: pd.DataFrame, splits: Iterable[str], windows_dir: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """ALT count and number of haplotypes at every site of ``sites`` (all of ``sites.parquet``, in
    order) over the samples of ``splits``: the imputation reference's counts (the whole panel for
    one's own targets, whose frequencies are not the train split's). From the split columns of
    ``sites.parquet``, or, in one written before they were, from the splits' haplotype tables."""
    ac = np.zeros(len(sites), dtype=np.int64)
    an = np.zeros(len(sites), dtype=np.int64)
    for split in splits:
        if split == "train":
            ac += sites["ac"].to_numpy(np.int64)
            an += sites["an"].to_numpy(np.int64)
        elif f"ac_{split}" in sites:
            ac += sites[f"ac_{split}"].to_numpy(np.int64)
            an += sites[f"an_{split}"].to_numpy(np.int64)
        else:
            more, n_hap = _split_counts(Path(windows_dir), split)
            ac, an = ac + more, an + n_hap
    return ac, an


def reference_af(
    sites: pd.DataFrame, splits: Iterable[str], windows_dir: str | os.PathLike
) -> np.ndarray:
    """The ALT frequency over the samples of ``splits`` at every site (``reference_counts``): for
    the train split alone, ``sites.parquet``'s ``af``."""
    ac, an = reference_counts(sites, splits, windows_dir)
    return ac / np.maximum(an, 1)


def _split_counts(windows_dir: Path, split: str) -> tuple[np.ndarray, int]:
    """ALT counts of a split's haplotypes at every site (each from its owner window), and how many
    haplotypes it has: for a ``sites.parquet`` without the split's columns."""
    sites = read_parquet_df(windows_dir / "sites.parquet", "window", columns=["site", "window"])
    first = read_parquet_df(windows_dir / "windows.parquet", "window", columns=["first_site"])
    table = WindowedTable(windows_dir / "haplotypes" / f"{split}.parquet", "alleles")
    owner, site = sites["window"].to_numpy(), sites["site"].to_numpy()
    ac = np.zeros(len(sites), dtype=np.int64)
    for w, alleles in table:
        rows = np.flatnonzero(owner == w)
        if len(alleles):
            ac[rows] = alleles[:, site[rows] - first["first_site"].iloc[w]].sum(axis=0)
    return ac, table.n_haplotypes


class _WindowCutter:
    """``window_bounds``, as the sites arrive in blocks: windows of ``length`` consecutive sites,
    each starting ``length - overlap`` after the previous one, the last cut at the end. A window is
    given out (its haplotypes) as soon as its last site has arrived, and the sites before the next
    window's start are dropped; the last (shorter) window waits for ``finish``. ``bounds`` collects
    the ``[start, stop)`` of the windows given out."""

    def __init__(self, length: int, overlap: int):
        check_window_params(length, overlap)
        self.length, self.stride = length, length - overlap
        self.bounds: list[tuple[int, int]] = []
        self.next_start = 0  # first site of the next window
        self.held: np.ndarray | None = None  # haplotypes of the sites from ``held_start`` on
        self.held_start = 0
        self.n = 0  # sites so far

    def add(self, haplotypes: np.ndarray) -> Iterator[np.ndarray]:
        """Take a block of sites' haplotypes; yield the windows it completes."""
        if self.held is None or not len(self.held):
            self.held = haplotypes
        else:
            self.held = np.concatenate([self.held, haplotypes])
        self.n += len(haplotypes)
        while self.next_start + self.length <= self.n:
            yield self._window(self.next_start, self.next_start + self.length)
            self.next_start += self.stride
        # drop what no later window needs (a view: the memory goes with the next concatenate)
        self.held = self.held[min(self.next_start, self.n) - self.held_start :]
        self.held_start = min(self.next_start, self.n)

    def finish(self) -> Iterator[np.ndarray]:
        """After the last block: the window that ends at the last site, unless one just did."""
        if self.n < 1:
            raise ValueError("no sites to window")
        if not self.bounds or self.bounds[-1][0] + self.length < self.n:
            yield self._window(self.next_start, self.n)

    def _window(self, a: int, b: int) -> np.ndarray:
        self.bounds.append((a, b))
        return self.held[a - self.held_start : b - self.held_start]


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
    with windowed_writer(path, column, samples, metadata, extra_columns, value_type) as writer:
        for block in blocks:
            writer.write(block)


def haplotype_rows(block: np.ndarray, cols: np.ndarray, band: int = 256) -> np.ndarray:
    """``block[:, cols].T`` (haplotypes, sites), C-contiguous, copied a band of sites at a time: a
    band stays in the cache, where a whole window's transposed copy strides through memory (7x
    slower, measured on 5,000 haplotypes)."""
    out = np.empty((len(cols), block.shape[0]), dtype=block.dtype)
    for a in range(0, block.shape[0], band):
        out[:, a : a + band] = block[a : a + band, cols].T
    return out


@contextlib.contextmanager
def windowed_writer(
    path: str | os.PathLike,
    column: str,
    samples: list[str],
    metadata: dict | None = None,
    extra_columns: dict[str, str] | None = None,
    value_type: type = np.uint8,
) -> Iterator[WindowedWriter]:
    """A WindowedWriter for ``path``; the table appears there when the block ends without an error.

    Its ``metadata`` (the schema metadata) may be changed until then: what it holds at the end is
    written into the footer (``_set_footer_schema``), so that a table streamed before its metadata
    was known is byte for byte the table written with that metadata from the start.
    """
    writer = WindowedWriter(column, samples, metadata, extra_columns, value_type)
    with atomic_path(path, suffix=".parquet") as tmp:
        started = writer.schema()
        with pq.ParquetWriter(tmp, started, **writer.options) as parquet:
            writer.parquet = parquet
            yield writer
        if writer.schema().metadata != started.metadata:
            _set_footer_schema(tmp, writer.schema(), writer.options)


class WindowedWriter:
    """Writes the rows of a windowed table (``write_windowed``) one window, a row group, at a time.

    Values of ``value_type`` ``bool`` (the haplotype tables' alleles) are stored as bits: a row's
    ``column`` is binary, bit j % 8 of byte j // 8 the value at the window's site j, and
    ``BITS_COLUMN`` gives the number of sites. Parquet writes lists of values with a level per value
    (~15 ns each, most of the window stage's time); a row's bits are one value (30x faster), and as
    small once compressed."""

    def __init__(
        self,
        column: str,
        samples: list[str],
        metadata: dict | None = None,
        extra_columns: dict[str, str] | None = None,
        value_type: type = np.uint8,
    ):
        self.metadata = dict(metadata or {})
        self.n_rows = 2 * len(samples)
        self.extra_columns = extra_columns or {}
        self.sample_col = pa.array(
            np.repeat(np.asarray(samples, dtype=object), 2), pa.string()
        ).dictionary_encode()
        self.hap_col = pa.array(np.tile(np.array([0, 1], dtype=np.int8), len(samples)))
        self.bits = value_type is bool
        values = (
            [(column, pa.binary()), (BITS_COLUMN, pa.int32())]
            if self.bits
            else [(column, pa.list_(pa.from_numpy_dtype(value_type)))]
        )
        self.fields = pa.schema(
            [("window", pa.int32()), ("sample", self.sample_col.type), ("hap", pa.int8())]
            + values
            + [(k, pa.string()) for k in self.extra_columns]
        )
        # a dictionary of distinct rows of bits is tried, found too large and dropped: not tried
        self.options = (
            {**PARQUET_WRITE, "use_dictionary": [f for f in self.fields.names if f != column]}
            if self.bits
            else PARQUET_WRITE
        )
        self.parquet: pq.ParquetWriter | None = None
        self.n_windows = 0
        self.digest = AllelesDigest()  # of the rows of bits written (tables of bits only)

    def schema(self) -> pa.Schema:
        return self.fields.with_metadata({k: str(v) for k, v in self.metadata.items()})

    def write(self, block: np.ndarray) -> None:
        """The next window: (2 * samples, window length) values."""
        w, n_rows = self.n_windows, self.n_rows
        if block.shape[0] != n_rows:
            raise ValueError(f"window {w}: {block.shape[0]} rows, expected {n_rows}")
        length = block.shape[1]
        arrays = [pa.array(np.full(n_rows, w, dtype=np.int32)), self.sample_col, self.hap_col]
        if self.bits:
            packed = np.packbits(block, axis=1, bitorder="little")
            self.digest.add(packed, length)
            offsets = np.arange(n_rows + 1, dtype=np.int32) * packed.shape[1]
            arrays += [
                pa.BinaryArray.from_buffers(
                    pa.binary(), n_rows, [None, pa.py_buffer(offsets), pa.py_buffer(packed)]
                ),
                pa.array(np.full(n_rows, length, dtype=np.int32)),
            ]
        else:
            offsets = pa.array(np.arange(n_rows + 1, dtype=np.int32) * length)
            arrays.append(
                pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(block).ravel()))
            )
        arrays += [pa.array([v] * n_rows, pa.string()) for v in self.extra_columns.values()]
        # an empty split (no sample) still gets one (empty) row group per window
        self.parquet.write_table(
            pa.Table.from_arrays(arrays, schema=self.parquet.schema), row_group_size=max(n_rows, 1)
        )
        self.n_windows += 1


def _set_footer_schema(path: Path, schema: pa.Schema, options: dict) -> None:
    """Give the Parquet file at ``path`` (written by a ParquetWriter with ``options``, with the same
    fields) the schema ``schema`` and its metadata: its footer is replaced by the one pyarrow writes
    for ``schema`` and the same row groups, and the data pages stay as they are."""
    empty = io.BytesIO()
    pq.ParquetWriter(empty, schema, **options).close()
    footer = pq.read_metadata(io.BytesIO(empty.getvalue()))
    footer.append_row_groups(pq.read_metadata(path))
    new = io.BytesIO()
    footer.write_metadata_file(new)  # magic, footer, its length, magic
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        old_length = int.from_bytes(f.read(4), "little")
        f.seek(-8 - old_length, os.SEEK_END)
        f.write(new.getvalue()[4:])
        f.truncate()


READ_ROWS = 256  # rows of a windowed table decoded at a time


@dataclass
class WindowedTable:
    """Read access to a windowed Parquet table, one window at a time."""

    path: Path
    column: str

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        # the stage that writes it, named when the file is missing or corrupt
        self.stage = {"tokens": "tokenize", "prior": "prior"}.get(self.column, "window")
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
        self.bits = BITS_COLUMN in self._file.schema_arrow.names

    @property
    def n_haplotypes(self) -> int:
        return 2 * len(self.samples)

    def read(self, window: int) -> np.ndarray:
        """(2 * n_samples, window length) uint8 matrix of one window.

        Decoded ``READ_ROWS`` rows at a time: Arrow's decoding of a whole row group of list values
        takes several times the matrix's memory (levels, offsets, buffers the allocator keeps), and
        is slower too (measured: 5,000 haplotypes, 3.1 s and 400 MB against 4.6 s and 720 MB)."""
        parts, got = [], None
        columns = ["window", self.column] + ([BITS_COLUMN] if self.bits else [])
        with reading(self.path, self.stage):
            batches = self._file.iter_batches(
                READ_ROWS, row_groups=[window], columns=columns, use_threads=False
            )
            for batch in batches:
                if got is None:
                    got = batch.column(0)[0].as_py()
                col = batch.column(1)
                if self.bits:
                    parts.append(_unpack_rows(col, batch.column(2)[0].as_py()))
                else:
                    flat = col.flatten().to_numpy(zero_copy_only=False)
                    parts.append(flat.reshape(len(col), -1))
        if not parts:  # a split without samples
            return np.zeros((0, 0), dtype=np.uint8)
        if got != window:
            raise ArtifactError(
                f"{self.path}: row group {window} holds window {got}; the file is corrupt"
            )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for w in range(self.n_windows):
            yield w, self.read(w)


def _unpack_rows(col: pa.BinaryArray, n_sites: int) -> np.ndarray:
    """(rows, n_sites) uint8 from rows of bits (``WindowedWriter``), each of the same length."""
    n_bytes = -(-n_sites // 8)
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
    data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    if len(data) != n_bytes * len(col):
        raise ValueError(f"rows of bits of {len(data)} bytes, expected {n_bytes} per row")
    return np.unpackbits(data.reshape(len(col), n_bytes), axis=1, count=n_sites, bitorder="little")


def packed_haplotypes(
    tables: list[WindowedTable], windows: pd.DataFrame, threads: int = 1
) -> np.ndarray:
    """(sites, ceil(haplotypes / 8)) bits of every site for the haplotypes of ``tables`` one after the
    other (little bit order: byte j holds haplotypes 8j..8j+7), read window by window so that one
    window per thread is held unpacked at a time. Decoding Parquet's list columns is most of the
    time, and pyarrow does it without the GIL: windows are read on ``threads`` threads, each with its
    own file handles."""
    n_sites = int(windows["last_site"].max()) + 1 if len(windows) else 0
    n_hap = sum(t.n_haplotypes for t in tables)
    out = np.zeros((n_sites, -(-n_hap // 8)), dtype=np.uint8)
    parts, done = [], 0  # (window, its first site, the first site not read before)
    for w, (a, b) in enumerate(windows[["first_site", "last_site"]].to_numpy()):
        if b >= done:
            parts.append((w, int(a), done))
            done = int(b) + 1
    local = threading.local()

    def pack(part: tuple[int, int, int]) -> None:
        if not hasattr(local, "tables"):
            local.tables = [WindowedTable(t.path, t.column) for t in tables]
        w, a, new = part
        block = np.concatenate([t.read(w)[:, new - a :] for t in local.tables])  # (haps, new sites)
        out[new : new + block.shape[1]] = np.packbits(block.T, axis=1, bitorder="little")

    if threads > 1 and len(parts) > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(pack, parts))
    else:
        local.tables = tables
        for part in parts:
            pack(part)
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
    indels: bool = False,
) -> dict:
    """The window stage of a chromosome, or of one chunk of it (``region``: first, last bp): the
    panel is streamed (``write_windows``), so that memory does not grow with its length. With
    ``indels`` the panel's biallelic indels are sites too (``panel.indels``)."""
    from .split import load_split
    from .vcf_io import vcf_samples

    check_window_params(length, overlap)
    split = load_split(split_tsv)
    # Ask for the samples in file order: write_windows picks each split's columns anyway, and
    # the reader then has no columns to shuffle.
    order = {s: i for i, s in enumerate(vcf_samples(panel_vcf))}
    samples = sorted((s for name in SPLITS for s in split[name]), key=lambda s: order.get(s, -1))
    panel = PanelStream(panel_vcf, chrom, samples, pass_only, region, indels)
    try:
        gmap = read_genetic_map(genetic_map, chrom) if genetic_map else None
    except InputError:
        # a chromosome (or chunk) the panel holds no record of: that, not the map, is the error
        with SitePositions(panel_vcf, chrom, pass_only, indels=indels) as at:
            if at.next_at(*(region or (1, None))) is None:
                raise panel._none_kept() from None
        raise
    return write_windows(panel, split, length, overlap, out_dir, gmap)


def sites_hash(windows_dir: str | os.PathLike) -> str:
    """The site list hash of ``sites.parquet``, from its metadata (the table is not read)."""
    path = Path(windows_dir) / "sites.parquet"
    if not path.exists():
        raise ArtifactError(f"{path} is missing; run the window stage first")
    meta = parquet_metadata(path, "window")
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format {meta.get('format_version')}, expected {FORMAT_VERSION}; re-run windowing"
        )
    return meta["site_list_hash"]


def sites_with_hash(windows_dir: str | os.PathLike) -> tuple[pd.DataFrame, str]:
    slh = sites_hash(windows_dir)
    return read_parquet_df(Path(windows_dir) / "sites.parquet", "window"), slh
