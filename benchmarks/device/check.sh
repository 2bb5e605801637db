#!/usr/bin/env bash
# The GPU check of issue 9, as one command on the device machine (after benchmarks/device/prepare.sh
# here; carry .whl and .jre):
#   1. the CUDA paths' tests: the engine and the network on the GPU against the CPU;
#   2. bench_scaling: `ragimpute impute --engine device=cuda` (our reference preparation counted)
#      against Beagle on every core, 1,000 and 5,000 targets x 2,000 reference haplotypes.
# Everything it writes goes to $OUT (env.txt, pytest.log, bench.log, scaling.json, scaling.png,
# point_logs.tgz).
# DEVICE, THREADS, TARGETS, REPEATS override the defaults (e.g. DEVICE=cpu TARGETS=10 to try it here).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/ragimpute-check}
mkdir -p "$OUT" /tmp/ragimpute-bin
# the device image's Python lacks these (prepare.sh); a Python that has them (a venv here) keeps its own
if [ -d .whl ] && ! python3 -c "import faiss, pysam, msprime" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ragimpute-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/ragimpute-site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .jre ]; then
    tar xzf .jre/jre.tgz -C /tmp
    printf '#!/bin/sh\nexec /tmp/ragimpute-jre/bin/java -Xmx64g -jar %s "$@"\n' "$PWD/.jre/beagle.jar" \
        > /tmp/ragimpute-bin/beagle
fi
printf '#!/bin/sh\nexec python3 -m ragimpute.cli "$@"\n' > /tmp/ragimpute-bin/ragimpute
chmod +x /tmp/ragimpute-bin/*
export PATH=/tmp/ragimpute-bin:$PATH
DEVICE=${DEVICE:-cuda} THREADS=${THREADS:-$(nproc)} TARGETS=${TARGETS:-1000 5000} REPEATS=${REPEATS:-1}
{
    date -u; nproc; nvidia-smi -L 2>&1; python3 --version
    python3 -c "import torch, numba, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__, 'numpy', numpy.__version__)"
    beagle 2>&1 | head -1
} > "$OUT/env.txt" 2>&1
# bounded, so that a stuck test cannot take the benchmark's time
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    "tests/test_engine.py::test_torch_engine_equals_the_numba_kernel" \
    "tests/test_engine.py::test_torch_engine_slices_long_untyped_runs_and_can_skip_interpolation" \
    > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.log"
# shellcheck disable=SC2086  # TARGETS is a list
python3 benchmarks/bench_scaling.py --engine-device "$DEVICE" --threads "$THREADS" \
    --beagle-threads "$THREADS" --targets $TARGETS --references --repeats "$REPEATS" \
    --work /tmp/ragimpute-scaling --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/bench.log"
# each point's logs and reports (a failing command's traceback, the engine's seconds and GPU memory)
find /tmp/ragimpute-scaling -maxdepth 2 \( -name '*.log' -o -name '*.time' -o -name '*.json' \) \
    -print0 2>/dev/null | tar czf "$OUT/point_logs.tgz" --null -T - 2>/dev/null
tail -n 4 "$OUT/pytest.log" "$OUT/bench.log"
