"""Ours against Beagle 5.4 on the demos re-simulated with other seeds: is a gap in one bin of one run a
difference between the methods, or the draw of one panel?

For each panel (the default demo, and the admixed one with ``config/admixed.yaml``) and each seed,
the whole workflow runs with ``demo.seed`` set and ``evaluate.methods: [copying, beagle]``; every
other key is the shipped config's. From each run's ``comparison.tsv`` the paired difference of
aggregate dosage r² (copying minus Beagle, same reference, targets and sites) is taken per MAF bin;
printed and written to benchmarks/results/seeds.json are every run's differences and, per panel and
bin, their mean, its standard error across seeds and the number of seeds where copying is at least
Beagle's r².

With ``--model`` the network is trained too (``config/model.yaml``) and imputed twice: with the
share of its correction per MAF bin chosen on validation (``model``, the default) and with the whole
correction everywhere (``model_whole``: ``train.correction_by_maf: false``, which reuses the
finished training). The differences of each against ``copying`` and Beagle are printed and written
to ``seeds_model.json``.

    python benchmarks/bench_seeds.py                      # seeds 42-46, both panels (~11 min on 2 cores)
    python benchmarks/bench_seeds.py --seeds 42 43 --panels default
    python benchmarks/bench_seeds.py --model --panels default   # ~6 min per seed on 2 cores
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


def run(
    panel: str, seed: int, work: Path, cores: str, model: bool = False
) -> tuple[pd.DataFrame, dict | None]:
    """The workflow on one re-simulated demo; its comparison table (method x bin r²) and, with
    ``model`` (the network too, and a row ``model_whole`` of it with the whole correction
    everywhere), the shares of the correction chosen per MAF bin."""
    results = work / f"{panel}_{seed}"
    methods = "[copying, model, beagle]" if model else "[copying, beagle]"
    override = work / f"{panel}_{seed}.yaml"
    override.write_text(
        f"demo:\n  seed: {seed}\nevaluate:\n  methods: {methods}\nresults: {results}\n"
    )
    configs = [*PANELS[panel], *(["config/model.yaml"] if model else []), str(override)]
    table = _workflow(configs, results, work / f"{panel}_{seed}.log", cores)
    shares = None
    if model:
        # the shares chosen, before the second run writes train.json without them
        summary = json.loads((results / "model" / "train.json").read_text())
        shares = summary["correction_by_maf"]["scale"]
        whole = work / f"{panel}_{seed}_whole.yaml"
        whole.write_text("train:\n  correction_by_maf: false\n")
        log = work / f"{panel}_{seed}_whole.log"
        table.loc["model_whole"] = _workflow([*configs, str(whole)], results, log, cores).loc[
            "model"
        ]
    return table, shares


def _workflow(configs: list[str], results: Path, log: Path, cores: str) -> pd.DataFrame:
    cmd = [sys.executable, "-m", "snakemake", "--cores", cores]
    cmd += ["--configfile", "config/config.yaml", *configs]
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
    table = pd.read_csv(results / "evaluation" / "comparison.tsv", sep="\t")
    return table.pivot(index="method", columns="maf_bin", values="r2")


# (method, baseline) pairs whose paired differences are summarised
PAIRS = [("copying", "beagle")]
MODEL_PAIRS = [
    ("model", "copying"),
    ("model_whole", "copying"),
    ("model", "model_whole"),
    ("model", "beagle"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    ap.add_argument("--panels", nargs="+", choices=list(PANELS), default=list(PANELS))
    ap.add_argument("--cores", default="all")
    ap.add_argument("--model", action="store_true", help="train and impute the network too")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    name = "seeds_model" if a.model else "seeds"
    work = a.work or OUT / f"{name}_work"
    work.mkdir(parents=True, exist_ok=True)
    pairs = PAIRS + (MODEL_PAIRS if a.model else [])
    runs = []
    for panel in a.panels:
        for seed in a.seeds:
            r2, shares = run(panel, seed, work, a.cores, a.model)
            row = {"panel": panel, "seed": seed, "shares": shares}
            for b in BINS:
                row[b] = {m: r2.loc[m, b] for m in r2.index}
            runs.append(row)
            for m, base in pairs:
                diffs = " ".join(f"{b} {row[b][m] - row[b][base]:+.5f}" for b in BINS)
                print(f"{panel} seed {seed}: {m} - {base}  {diffs}", flush=True)
    summary = []
    for panel in a.panels:
        for m, base in pairs:
            for b in BINS:
                d = np.array([r[b][m] - r[b][base] for r in runs if r["panel"] == panel])
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
                summary.append(
                    {
                        "panel": panel,
                        "difference": f"{m} - {base}",
                        "bin": b,
                        "mean_difference": round(float(d.mean()), 5),
                        "standard_error": round(float(se), 5),
                        "seeds_at_least": int((d >= 0).sum()),
                        "seeds": len(d),
                    }
                )
    print(pd.DataFrame(summary).to_string(index=False))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(
        json.dumps({"machine": platform.platform(), "runs": runs, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
