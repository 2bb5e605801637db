"""The engine's numba kernels are loaded from numba's cache even by the run that finds it empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# A run of the engine in a process of its own: its P(ALT) and, per kernel, how often numba loaded it
# from the cache and how often it compiled it in this process. "wide": with the class numbers of a
# reference of 65,536 haplotypes or more (int32), which take variants of their own of two kernels.
RUN = """
import json, sys
import numpy as np
from ragimpute import engine as module
from ragimpute.engine import Chunk, Engine, EngineParams
from ragimpute.kernel_cache import _kernels

if sys.argv[2] == "wide":
    module.WIDE_CLASSES_FROM = 0

rng = np.random.default_rng(5)
n_sites, n_ref = 400, 300
ref = (rng.random((n_sites, n_ref)) < rng.uniform(0.005, 0.5, (n_sites, 1))).astype(np.uint8)
pos = np.arange(1, n_sites + 1) * 2_000
typed = np.arange(0, n_sites, 5)
engine = Engine(Chunk.from_alleles(ref, typed, pos * 1e-6, pos), EngineParams(states=100))
query = np.ascontiguousarray(ref[typed][:, :20].T, dtype=np.int8)
p, _ = engine.impute(query, np.arange(20)[:, None], error=1e-3, threads=2)
assert engine.classes[0].dtype == (np.int32 if sys.argv[2] == "wide" else np.uint16)
np.save(sys.argv[1], p)
print(json.dumps({k.__name__: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                  for k in _kernels()}))
"""


@pytest.mark.slow
def test_the_run_that_finds_no_compiled_kernels_loads_them_as_later_runs_do(tmp_path):
    """numba optimises parallel kernels compiled in the running process differently from the same
    kernels loaded from its cache (numba#10617); with fastmath the run that compiled them wrote a
    few dosages 0.001 away from every later run. With an empty cache, a child process compiles
    them; the run itself loads every kernel from the cache (no compilation of its own), as the next
    run does, and both write the same P(ALT) to the bit. A run on a reference of 65,536 haplotypes
    or more (int32 class numbers: other variants of two kernels) finds them in the cache too, and
    imputes what the other runs impute."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    outputs, counts = [], []
    for i, classes in enumerate(("narrow", "narrow", "wide")):
        out = tmp_path / f"p{i}.npy"
        done = subprocess.run(
            [sys.executable, "-c", RUN, str(out), classes], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        counts.append(json.loads(done.stdout.strip().splitlines()[-1]))
        outputs.append(np.load(out))
    for run in counts:
        for kernel, (hits, misses) in run.items():
            assert hits >= 1 and misses == 0, (kernel, run)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    assert any(f.suffix == ".nbi" for f in (tmp_path / "numba").rglob("*"))
