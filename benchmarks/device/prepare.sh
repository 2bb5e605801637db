#!/usr/bin/env bash
# Run HERE, in the repository's root, before the device check (benchmarks/device/check.sh). The GPU
# machine cannot reach any package index and has no Java: this puts what it lacks beside the
# checkout, in two folders git ignores, to be carried with the call (`carry: [.whl, .jre]`, ~55 MB of
# the 64 MiB a call may take):
#   .whl/  wheels for its Python 3.12 of what its image does not hold (faiss-cpu, pysam, msprime and
#          their needs; numpy, pandas, pyarrow, numba, torch, pytest, matplotlib and pyyaml are there)
#   .jre/  a Java runtime cut down to java.base (jlink, Java 11 or later) and Beagle's jar
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in .whl .jre; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
rm -rf .whl .jre && mkdir -p .whl .jre
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    faiss-cpu==1.15.1 pysam zlib-ng jsonschema jsonschema-specifications referencing rpds-py \
    msprime tskit demes newick ruamel.yaml ruamel.yaml.clib
JLINK=${JLINK:-$(ls /usr/lib/jvm/*/bin/jlink 2>/dev/null | sort -V | tail -1)}
[ -x "$JLINK" ] || { echo "no jlink (a JDK 11+): set JLINK=/path/to/jlink" >&2; exit 1; }
"$JLINK" --add-modules java.base --strip-debug --no-man-pages --no-header-files --compress=zip-9 \
    --output /tmp/ragimpute-jre
tar czf .jre/jre.tgz -C /tmp ragimpute-jre && rm -rf /tmp/ragimpute-jre
cp "${BEAGLE_JAR:-/usr/share/beagle/beagle.jar}" .jre/beagle.jar
du -sh .whl .jre
