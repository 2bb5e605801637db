"""Every run loads the engine's numba kernels from numba's cache; none uses kernels it compiled.

numba optimises a parallel kernel compiled in the running process differently from the same kernel
loaded from its cache (numba#10617). With fastmath's reassociation, the run that compiled the
engine's kernels wrote a few dosages 0.001 away from every later run (147 of 29 million at 1,000
targets; 12 of 4.7 million at 100 targets and 3,000 reference haplotypes), which load them. So where
the cache lacks a kernel, ``load_kernels`` has a child process compile and cache them first, and the
run loads them as every run after it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .logs import log
from .procs import dies_with_parent

_checked = False


def _kernels() -> tuple:
    """The kernels the engine calls from Python (the rest are compiled into them)."""
    from . import engine

    return (
        engine._carrier_counts,
        engine._carrier_lists,
        engine._group_intervals,
        engine._class_bits,
        engine._impute_batch,
    )


# The kernels that ``warm_up`` compiles twice: for uint16 and for int32 class numbers (a reference
# of ``engine.WIDE_CLASSES_FROM`` haplotypes or more)
TWO_VARIANTS = ("_group_intervals", "_impute_batch")


def variants(kernel) -> int:
    """How many variants of ``kernel`` numba's cache holds compiled for this CPU from this version
    of its code (the test numba makes of an entry of its index before loading it)."""
    cache = kernel._cache
    codegen = kernel.targetctx.codegen()
    index = cache._cache_file._load_index()
    return sum(cache._index_key(key[0], codegen) == key for key in index)


def cached(kernel) -> bool:
    """Whether numba's cache holds every variant of ``kernel`` that ``warm_up`` compiles."""
    try:
        return variants(kernel) >= 1 + (kernel.__name__ in TWO_VARIANTS)
    except Exception:  # numba's internals moved: let this process compile, as numba would
        return True


def load_kernels() -> None:
    """Before this process first runs the engine's kernels: have a child process compile those
    numba's cache lacks (once per install and CPU, ~30 s)."""
    global _checked
    if _checked:
        return
    _checked = True
    missing = [k.__name__ for k in _kernels() if not cached(k)]
    if not missing:
        return
    log.info(
        "compiling the engine's kernels in a child process (once per install and CPU): %s",
        ", ".join(missing),
    )
    package_parent = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", "from ragimpute.kernel_cache import warm_up; warm_up()"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=dies_with_parent(),
    )
    if done.returncode != 0 or not all(cached(k) for k in _kernels()):
        log.warning(
            "the engine's kernels could not be compiled into numba's cache by a child process "
            "(exit %d: %s); this run compiles them itself, and a few of its dosages may differ in "
            "the last digit from a later run's",
            done.returncode,
            (done.stderr.strip().splitlines() or ["no error"])[-1],
        )


def warm_up() -> None:
    """Run every kernel on a small random panel, with and without haplotypes to exclude (the prior
    stage's calls), and again with the class numbers of a reference of 65,536 haplotypes or more,
    so that numba compiles and caches every variant the engine calls."""
    global _checked
    _checked = True  # this process compiles them

    import numpy as np

    from . import engine as module
    from .engine import Chunk, Engine, EngineParams

    rng = np.random.default_rng(0)
    n_sites, n_ref = 96, 80
    ref = (rng.random((n_sites, n_ref)) < rng.uniform(0.02, 0.5, (n_sites, 1))).astype(np.uint8)
    pos = np.arange(1, n_sites + 1) * 1_000
    typed = np.arange(0, n_sites, 4)
    query = np.ascontiguousarray(ref[typed][:, :4].T, dtype=np.int8)
    for wide_from in (module.WIDE_CLASSES_FROM, 0):
        module.WIDE_CLASSES_FROM = wide_from  # this process only: it exits after the warm-up
        chunk = Chunk.from_alleles(ref, typed, pos * 1e-6, pos)
        engine = Engine(chunk, EngineParams(states=40, candidates=8))
        engine.impute(query, error=1e-3)
        engine.impute(query, np.arange(4)[:, None], error=1e-3)
