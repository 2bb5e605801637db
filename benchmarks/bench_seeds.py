"""Ours against Beagle 5.4 on the demos re-simulated with other seeds: is a gap in one bin of one run a
difference between the methods, or the draw of one panel?

For each panel (the default demo, and the admixed one with ``config/admixed.yaml``) and each seed,
the whole workflow runs with ``demo.seed`` set and ``evaluate.methods: [copying, beagle]``; every
other key is the shipped config's. From each run's ``comparison.tsv`` the paired difference of
aggregate dosage r² (copying minus Beagle, same reference, targets and sites) is taken per MAF bin;
printed and written to benchmarks/results/seeds.json are every run's differences and, per panel and
bin, their mean, its standard error across seeds and the number of seeds where copying is at least
Beagle's r².

    python benchmarks/bench_seeds.py                      # seeds 42-46, both panels (~11 min on 2 cores)
    python benchmarks/bench_seeds.py --seeds 42 43 --panels default
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ragimpute.metrics import BIN_LABELS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
PANELS = {"default": [], "admixed": ["config/admixed.yaml"]}
BINS = [*BIN_LABELS, "all"]  # the rows of comparison.tsv


def run(panel: str, seed: int, work: Path, cores: str) -> pd.DataFrame:
    """The workflow on one re-simulated demo; its comparison table (method x bin r²)."""
    results = work / f"{panel}_{seed}"
    override = work / f"{panel}_{seed}.yaml"
    override.write_text(
        f"demo:\n  seed: {seed}\nevaluate:\n  methods: [copying, beagle]\nresults: {results}\n"
    )
    cmd = [sys.executable, "-m", "snakemake", "--cores", cores]
    cmd += ["--configfile", "config/config.yaml"]
    cmd += [*PANELS[panel], str(override)]
    with open(work / f"{panel}_{seed}.log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    table = pd.read_csv(results / "evaluation" / "comparison.tsv", sep="\t")
    return table.pivot(index="method", columns="maf_bin", values="r2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    ap.add_argument("--panels", nargs="+", choices=list(PANELS), default=list(PANELS))
    ap.add_argument("--cores", default="all")
    ap.add_argument("--work", type=Path, default=OUT / "seeds_work")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for panel in a.panels:
        for seed in a.seeds:
            r2 = run(panel, seed, a.work, a.cores)
            row = {"panel": panel, "seed": seed}
            for b in BINS:
                row[b] = {"copying": r2.loc["copying", b], "beagle": r2.loc["beagle", b]}
            runs.append(row)
            diffs = " ".join(f"{b} {row[b]['copying'] - row[b]['beagle']:+.5f}" for b in BINS)
            print(f"{panel} seed {seed}: copying - Beagle  {diffs}", flush=True)
    summary = []
    for panel in a.panels:
        for b in BINS:
            d = np.array([r[b]["copying"] - r[b]["beagle"] for r in runs if r["panel"] == panel])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            summary.append(
                {
                    "panel": panel,
                    "bin": b,
                    "mean_difference": round(float(d.mean()), 5),
                    "standard_error": round(float(se), 5),
                    "seeds_at_least_beagle": int((d >= 0).sum()),
                    "seeds": len(d),
                }
            )
    print(pd.DataFrame(summary).to_string(index=False))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "seeds.json").write_text(
        json.dumps({"machine": platform.platform(), "runs": runs, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
