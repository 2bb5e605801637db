"""Imputation benchmark: ours (af, retrieval, copying model, trained model) vs Beagle 5.4 vs Minimac4.

Runs the workflow on the demo panel (default config) up to the comparison table (accuracy), then times
each method's imputation again on its own, one after the other, on the same inputs with the same
threads (``impute.threads``): wall time and peak RSS of the one child process (``os.wait4``), measured
the same way for every tool (Snakemake's job benchmarks sample memory too coarsely for sub-second jobs;
they are reported beside). Prints the table and writes benchmarks/results/impute.json.

    python benchmarks/bench_impute.py                 # results/ with config/config.yaml
    python benchmarks/bench_impute.py --results /tmp/r --cores 2

One-off preparation of the reference is reported apart: our index (shared with training) and
Minimac4's compressed reference (.msav); Beagle reads the VCF directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BINS = ["0-0.5%", "0.5-1%", "1-5%", "5-50%", "all"]


def bench_tsv(path: Path) -> dict:
    if not path.exists():
        return {}
    row = pd.read_csv(path, sep="\t").iloc[-1]
    return {"seconds": round(float(row["s"]), 2), "max_rss_mb": round(float(row["max_rss"]), 1)}


GNU_TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def timed(cmd: list[str], log: Path) -> dict:
    """Wall time and peak RSS of one command.

    A child forked from this (large) Python process carries its pages until exec, and the kernel keeps
    that in the child's ru_maxrss; GNU time, itself a small process, reports the real peak. Without it
    the figure is an upper bound (``rss_method``).
    """
    report = log.with_suffix(".time")
    full = [GNU_TIME, "-f", "%M", "-o", str(report), *cmd] if GNU_TIME else cmd
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    if GNU_TIME:
        kb, how = int(report.read_text().split()[-1]), "GNU time %M"
    else:
        kb, how = usage.ru_maxrss, "wait4 ru_maxrss (upper bound)"
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(kb / 1024, 1), "rss_method": how}


def standalone_commands(results: Path, chrom: str, method: str, scratch: Path, cfg: dict) -> list:
    t = results / "targets" / chrom
    threads = str(cfg["impute"]["threads"])
    if method == "beagle":
        return [["beagle", f"ref={t / 'reference.vcf.gz'}", f"gt={t / 'aligned' / 'target.vcf.gz'}",
                 f"out={scratch / 'beagle'}", f"nthreads={threads}", "seed=1", "gp=true"]]  # fmt: skip
    if method == "minimac4":
        return [["minimac4", "-t", threads, "-f", "GT,DS,GP,HDS", "-O", "vcf.gz", "-o",
                 str(scratch / "minimac4.vcf.gz"), str(t / "reference.msav"),
                 str(t / "aligned" / "target.vcf.gz")]]  # fmt: skip
    code = (
        "import sys, yaml; from ragimpute.impute import run_impute_stage; "
        "a = sys.argv[1:]; run_impute_stage(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], "
        "options=yaml.safe_load(a[8]) or {}, k=int(a[9]), batch_haplotypes=int(a[10]), "
        "panel_vcf=a[11], checkpoint=a[12] or None, device=a[13], threads=int(a[14]))"
    )
    model = str(results / "model" / "model.pt") if method == "model" else ""
    panel = cfg["panel"]["vcf"] or str(results / "demo" / "panel.vcf.gz")
    args = [method, t / "aligned" / "alignment.json", t / "aligned" / "target.vcf.gz",
            results / "windows" / chrom, results / "masks" / chrom, results / "index" / chrom,
            scratch / f"{method}.vcf.gz", scratch / f"{method}.json",
            json.dumps(cfg["baselines"].get(method, {})), cfg["retrieval"]["k"],
            cfg["impute"]["batch_haplotypes"], panel, model, cfg["impute"]["device"], threads]  # fmt: skip
    return [[sys.executable, "-c", code, *map(str, args)]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="results directory of the run")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/impute.json")
    a = ap.parse_args()
    results = Path(a.results).resolve()
    # Ours (the workflow trains the model first when it has not been) and the tools that are installed.
    methods = ["af", "retrieval", "copying", "model"]
    methods += [t for t in ("beagle", "minimac4") if shutil.which(t)]
    override = ROOT / "benchmarks" / "results" / "bench_impute.config.yaml"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(f"results: {results}\nevaluate:\n  methods: {json.dumps(methods)}\n")
    cmd = [sys.executable, "-m", "snakemake", str(results / "evaluation" / "comparison.tsv")]
    cmd += ["--cores", str(a.cores), "--configfile", "config/config.yaml", str(override)]
    cmd += ["--quiet", "rules"]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"snakemake failed:\n{run.stderr[-5000:]}")
    workflow_s = time.perf_counter() - t0

    table = pd.read_csv(results / "evaluation" / "comparison.tsv", sep="\t")
    chroms = sorted(p.name for p in (results / "impute").iterdir() if p.is_dir())
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    scratch = Path(tempfile.mkdtemp(prefix="bench_impute.", dir=override.parent))
    rows = []
    for m in methods:
        timing = {"seconds": 0.0, "peak_rss_mb": 0.0, "snakemake_job_seconds": 0.0}
        for c in chroms:
            for cmd in standalone_commands(results, c, m, scratch, cfg):
                t = timed(cmd, scratch / f"{m}.{c}.log")
                timing["seconds"] += t["seconds"]
                timing["peak_rss_mb"] = max(timing["peak_rss_mb"], t["peak_rss_mb"])
                timing["rss_method"] = t["rss_method"]
            b = bench_tsv(results / "benchmarks" / "impute" / c / f"{m}.tsv")
            timing["snakemake_job_seconds"] += b.get("seconds", float("nan"))
        r2 = table[table["method"] == m].set_index("maf_bin")
        row = {"method": m, **timing}
        row.update({f"r2 {b}": float(r2.loc[b, "r2"]) for b in BINS})
        row["concordance"] = float(r2.loc["all", "concordance"])
        row["nonref_concordance"] = float(r2.loc["all", "nonref_concordance"])
        row["info_r2_vs_true_r2"] = float(r2.loc["all", "info_r2_vs_true_r2"])
        if m not in ("beagle", "minimac4"):
            rep = json.loads((scratch / f"{m}.json").read_text())
            row["impute_loop_seconds"] = rep["impute_seconds"]
            row["device"] = rep["device"]
        rows.append(row)
    shutil.rmtree(scratch)
    prep = {}
    for c in chroms:
        for p in (results / "benchmarks" / "index" / c).glob("*.tsv"):
            prep[f"our index {c}/{p.stem}"] = bench_tsv(p)
        msav = results / "benchmarks" / "minimac4_reference" / f"{c}.tsv"
        if msav.exists():
            prep[f"minimac4 --compress-reference {c}"] = bench_tsv(msav)

    df = pd.DataFrame(rows)
    cols = ["method", "seconds", "peak_rss_mb", *[f"r2 {b}" for b in BINS], "concordance"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for k, v in prep.items():
        print(f"reference preparation, {k}: {v['seconds']} s, {v['max_rss_mb']} MB")
    info = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "cores": a.cores,
        "results": str(results),
        "chromosomes": chroms,
        "workflow_seconds": round(workflow_s, 1),
        "methods": rows,
        "reference_preparation": prep,
        "tools": {
            t: subprocess.run(
                [t, "--version"] if t == "minimac4" else [t], capture_output=True, text=True
            ).stdout.splitlines()[0:1]  # fmt: skip
            for t in ("beagle", "minimac4")
            if shutil.which(t)
        },
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
