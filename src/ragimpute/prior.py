"""The engine's P(ALT) for many haplotypes, computed in batches and read back by site ranges.

The engine returns, per batch of haplotypes, P(ALT) at every site of the chromosome. Holding that for
every target at once would take sites x haplotypes x 4 bytes; instead each batch is written to a
temporary file as 16-bit fixed point (resolution 1.5e-5, far below the VCF's three decimals), site
major, and the VCF writer reads back a window of sites for every haplotype at a time. Memory is thus
bounded by ``batch_haplotypes`` x sites, whatever the number of targets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import Engine
from .logs import Progress, log

SCALE = 65535


class PriorStore:
    """P(ALT) of ``n_hap`` haplotypes at ``n_sites`` sites, written batch by batch."""

    def __init__(self, n_sites: int, n_hap: int, where: str | os.PathLike):
        Path(where).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".prior.", suffix=".tmp", dir=where))
        self.n_sites, self.n_hap = n_sites, n_hap
        self.batches: list[tuple[int, int, Path]] = []  # first row, rows, file

    def write(self, first: int, p: np.ndarray) -> None:
        """``p`` (rows, n_sites): the batch of haplotypes ``first``, ``first + 1``, ..."""
        path = self.dir / f"b{len(self.batches):05d}.u16"
        q = np.rint(np.clip(p, 0.0, 1.0) * SCALE).astype(np.uint16)
        np.ascontiguousarray(q.T).tofile(path)
        self.batches.append((first, p.shape[0], path))

    def read(self, a: int, b: int) -> np.ndarray:
        """(n_hap, b - a) float32: every haplotype at sites a..b-1."""
        out = np.empty((self.n_hap, b - a), dtype=np.float32)
        for first, rows, path in self.batches:
            with open(path, "rb") as f:
                f.seek(a * rows * 2)
                block = np.fromfile(f, dtype=np.uint16, count=(b - a) * rows).reshape(b - a, rows)
            out[first : first + rows] = block.T / np.float32(SCALE)
        return out

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


def run_engine(
    engine: Engine,
    query: np.ndarray,
    where: str | os.PathLike,
    batch_haplotypes: int = 1024,
    threads: int = 1,
    exclude: np.ndarray | None = None,
) -> PriorRun:
    """The engine over ``query`` (haplotypes, typed sites) in batches; the error rate is estimated on
    the queries first unless the engine's parameters set it."""
    t0 = time.perf_counter()
    error = engine.params.error
    estimated = error is None
    if estimated:
        error = engine.estimate_error(query, exclude, threads=threads)
        log.info("copying model: allele mismatch rate estimated at %.2e", error)
    store = PriorStore(engine.chunk.n_sites, len(query), where)
    progress = Progress(len(query), "copying model", "haplotypes")
    mism = seen = 0.0
    try:
        for a in range(0, len(query), batch_haplotypes):
            b = min(a + batch_haplotypes, len(query))
            ex = None if exclude is None else exclude[a:b]
            p, stats = engine.impute(query[a:b], ex, error=error, threads=threads)
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
            "expected_mismatch_rate": float(mism / seen) if seen else None,
        },
    )
