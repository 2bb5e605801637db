"""The engine's P(ALT) for many haplotypes, computed in batches and read back by site ranges.

The engine returns, per batch of haplotypes, P(ALT) at every site of the chromosome. Holding that for
every target at once would take sites x haplotypes x 4 bytes; instead each batch is written to a
temporary file as 16-bit fixed point (resolution 1.5e-5, far below the VCF's three decimals), site
major, and the VCF writer reads back a window of sites for every haplotype at a time. Memory is thus
bounded by ``batch_haplotypes`` x sites (and by ``ENGINE_BATCH_BYTES``), whatever the number of
targets.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit, prange

from .atomic import new_scratch_dir
from .devices import on_cuda
from .engine import Engine, EngineParams
from .logs import Progress, log

SCALE = 65535  # = vcf_write.STATS_SCALE: the VCF writer formats the stored values as they are
PRIOR_FORMAT_VERSION = 1
# A batch's P(ALT) over every site of the chunk is held as float32 and then as 16 bits (6 bytes per
# site and haplotype; on a GPU also its state tables, ``batch_bytes_per_haplotype``): batches are made
# smaller where ``batch_haplotypes`` of them would take more than this, so that a whole chromosome of
# millions of sites does not take gigabytes (the output does not depend on the batch size).
ENGINE_BATCH_BYTES = 512 * 2**20
# On a GPU a batch should be large (the same kernels run per batch whatever its size), so its cap is
# larger: a GPU node's host and device memory both hold a batch's state tables and P(ALT).
ENGINE_GPU_BATCH_BYTES = 8 * 2**30


@njit(parallel=True, cache=True)
def _quantize_transposed(p, scale, out):
    """out (sites, rows) = rint(clip(p, 0, 1) x scale) of p (rows, sites), a band of 64 sites at a
    time (the band's rows of out stay in the cache: a plain transpose strides through memory)."""
    rows, n_sites = p.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    band = 64
    for t in prange((n_sites + band - 1) // band):
        s0 = t * band
        s1 = min(s0 + band, n_sites)
        for r in range(rows):
            for s in range(s0, s1):
                x = min(max(p[r, s], zero), one) * scale  # in float32, as numpy rounds it
                out[s, r] = np.uint16(np.rint(x))


class PriorStore:
    """P(ALT) of ``n_hap`` haplotypes at ``n_sites`` sites, written batch by batch."""

    def __init__(self, n_sites: int, n_hap: int, where: str | os.PathLike):
        # named for this host and process: a store a killed job left (2 bytes per site and
        # haplotype) is removed by the next one here
        self.dir = new_scratch_dir(Path(where) / "prior")
        self.n_sites, self.n_hap = n_sites, n_hap
        self.batches: list[tuple[int, int, Path]] = []  # first row, rows, file

    def write(self, first: int, p: np.ndarray) -> None:
        """``p`` (rows, n_sites): the batch of haplotypes ``first``, ``first + 1``, ..."""
        path = self.dir / f"b{len(self.batches):05d}.u16"
        p = np.ascontiguousarray(p, dtype=np.float32)
        q = np.empty((p.shape[1], p.shape[0]), dtype=np.uint16)
        _quantize_transposed(p, np.float32(SCALE), q)
        q.tofile(path)
        self.batches.append((first, p.shape[0], path))

    def read_codes(self, a: int, b: int) -> np.ndarray:
        """(b - a, n_hap) uint16 P(ALT) x SCALE (rounded): sites a..b-1, every haplotype."""
        out = np.empty((b - a, self.n_hap), dtype=np.uint16)
        for first, rows, path in self.batches:
            with open(path, "rb") as f:
                f.seek(a * rows * 2)
                block = np.fromfile(f, dtype=np.uint16, count=(b - a) * rows)
            out[:, first : first + rows] = block.reshape(b - a, rows)
        return out

    def read(self, a: int, b: int) -> np.ndarray:
        """(n_hap, b - a) float32: every haplotype at sites a..b-1."""
        return self.read_codes(a, b).T / np.float32(SCALE)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PriorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class PriorRun:
    store: PriorStore
    error: float
    error_estimated: bool
    seconds: float
    stats: dict = field(default_factory=dict)


HIGH_ERROR = 0.01


def log_error_estimate(error: float, source: str | os.PathLike) -> None:
    """Log the estimated mismatch rate, and warn where it is beyond what genotyping errors give."""
    log.info("copying model: allele mismatch rate estimated at %.2e", error)
    if error > HIGH_ERROR:
        log.warning(
            "%s: the targets disagree with the reference haplotypes at %.1f%% of typed alleles, "
            "beyond what genotyping errors give (0.01-0.5%%): check that the target is on the "
            "reference's genome build and strand, that REF is the reference genome's base, and that "
            "the genotypes are not shifted against the sample names",
            source,
            100 * error,
        )


def batch_bytes_per_haplotype(engine: Engine, device: str | None = None) -> int:
    """Memory a batch takes per target haplotype: its P(ALT) over every site as float32 and then 16
    bits; on a GPU (``engine_torch``) also its state table over every step (int64 on the host and on
    the device, and a validity byte: ~17 bytes per step and state), which on a whole chromosome of
    thousands of steps outgrows the P(ALT)."""
    n = 6 * max(engine.chunk.n_sites, 1)
    if on_cuda(device):
        n += 4 * engine.chunk.n_sites + 17 * engine.index.n_steps * engine.params.states
    return n


def run_engine(
    engine: Engine,
    query: np.ndarray,
    where: str | os.PathLike,
    batch_haplotypes: int = 1024,
    threads: int = 1,
    exclude: np.ndarray | None = None,
    device: str | None = None,
) -> PriorRun:
    """The engine over ``query`` (haplotypes, typed sites) in batches, on the CPU (numba threads) or a
    GPU (``device`` cuda); the error rate is estimated on the queries first unless the engine's
    parameters set it."""
    t0 = time.perf_counter()
    error = engine.params.error
    estimated = error is None
    if estimated:
        error = engine.estimate_error(query, exclude, threads=threads, device=device)
        log_error_estimate(error, where)
    budget = ENGINE_GPU_BATCH_BYTES if on_cuda(device) else ENGINE_BATCH_BYTES
    cap = max(1, budget // batch_bytes_per_haplotype(engine, device))
    if batch_haplotypes > cap:
        log.info(
            "copying model: batches of %d haplotypes (a batch's P(ALT) over %d sites%s within %d MB)",
            cap,
            engine.chunk.n_sites,
            " and its state tables" if on_cuda(device) else "",
            budget >> 20,
        )
        batch_haplotypes = cap
    store = PriorStore(engine.chunk.n_sites, len(query), where)
    progress = Progress(len(query), "copying model", "haplotypes")
    mism = seen = 0.0
    try:
        for a in range(0, len(query), batch_haplotypes):
            b = min(a + batch_haplotypes, len(query))
            ex = None if exclude is None else exclude[a:b]
            p, stats = engine.impute(query[a:b], ex, error=error, threads=threads, device=device)
            store.write(a, p)
            mism += stats[:, 0].sum()
            seen += stats[:, 1].sum()
            progress.update(b - a)
    except BaseException:
        store.close()
        raise
    seconds = progress.close()
    return PriorRun(
        store,
        float(error),
        estimated,
        round(time.perf_counter() - t0, 3),
        {
            "engine_seconds": round(seconds, 3),
            "batch_haplotypes": batch_haplotypes,
            "expected_mismatch_rate": float(mism / seen) if seen else None,
        },
    )


# -- the training data of the network: the engine's output on the panel's own haplotypes -------------

PRIOR_COLUMN = "prior"
# In a prior table's schema metadata, beside ``windows.DIGEST_KEY`` (the haplotypes of its rows): the
# digest of the train split it copied from. Another panel file of the same samples and sites passes
# the mask, site list and sample checks; these digests do not.
REFERENCE_DIGEST_KEY = "reference_haplotypes_digest"


def run_prior_stage(
    windows_dir: str | os.PathLike,
    mask_store: str | os.PathLike,
    mask_hash: str,
    split: str,
    out: str | os.PathLike,
    params: EngineParams,
    batch_haplotypes: int = 1024,
    threads: int = 1,
    device: str = "cpu",
) -> dict:
    """The engine's P(ALT) for every haplotype of ``split`` typed under mask ``mask_hash``, copying
    from the train split (a train haplotype never from its own sample): the prior the network learns
    to correct, as a windowed table (``prior``: P(ALT) x 65535 as uint16, one row group per window)."""
    from .masks import load_mask_for
    from .states import reference_chunk
    from .windows import (
        DIGEST_KEY,
        WindowedTable,
        haplotypes_digest,
        load_windows,
        packed_haplotypes,
        sites_with_hash,
        write_windowed,
    )

    sites, slh = sites_with_hash(windows_dir)
    mask = load_mask_for(mask_store, mask_hash, slh)
    typed = np.flatnonzero(mask.observed)
    windows = load_windows(windows_dir)
    hap_dir = Path(windows_dir) / "haplotypes"
    train = WindowedTable(hap_dir / "train.parquet", "alleles")
    queries = train if split == "train" else WindowedTable(hap_dir / f"{split}.parquet", "alleles")
    packed = packed_haplotypes([train], windows, threads)
    n_ref = train.n_haplotypes
    engine = Engine(reference_chunk(packed, n_ref, typed, sites), params)
    q_packed = packed if queries is train else packed_haplotypes([queries], windows, threads)
    n_q = queries.n_haplotypes
    query = np.ascontiguousarray(
        np.unpackbits(q_packed[typed], axis=1, count=n_q, bitorder="little").T, dtype=np.int8
    )
    exclude = None
    if queries is train:  # leave the query's own sample out of its states
        first = 2 * (np.arange(n_q) // 2)
        exclude = np.stack([first, first + 1], axis=1)
    run = run_engine(engine, query, Path(out).parent, batch_haplotypes, threads, exclude, device)
    try:
        bounds = windows[["first_site", "last_site"]].to_numpy()
        blocks = (np.rint(run.store.read(a, b + 1) * SCALE).astype(np.uint16) for a, b in bounds)
        meta = {
            "format_version": PRIOR_FORMAT_VERSION,
            "mask_hash": mask.hash,
            "site_list_hash": slh,
            "split": split,
            DIGEST_KEY: haplotypes_digest(queries),
            REFERENCE_DIGEST_KEY: haplotypes_digest(train),
            "scale": SCALE,
            "error": run.error,
            "engine": json.dumps(engine.params.to_dict()),
        }
        write_windowed(out, blocks, PRIOR_COLUMN, queries.samples, meta, value_type=np.uint16)
    finally:
        run.store.close()
    log.info(
        "prior %s/%s: %d haplotypes x %d sites, error %.2e, %.1f s",
        mask.hash,
        split,
        n_q,
        len(sites),
        run.error,
        run.seconds,
    )
    return {"haplotypes": n_q, "error": run.error, "seconds": run.seconds, "device": device}
