"""The scale preset end to end: per-stage wall time, CPU time, peak RSS and output size as the chromosome
and the target cohort grow, ours (``copying``) and Beagle 5.4 on the same inputs.

For each chromosome length the demo of ``config/scale.yaml`` is simulated once (out-of-Africa history,
the panel and a cohort of the largest target count, simulated together); for each target count the
first N cohort samples are the targets. The workflow runs in two steps, because it imputes the whole
cohort (``demo.cohort_samples``) and one simulation serves every target count here:
``snakemake <results>/demo/panel.vcf.gz`` (the demo writes ``demo/cohort.vcf.gz`` and
``demo/cohort_truth.vcf.gz`` beside the panel), then the whole workflow with ``impute.target_vcf`` and
``impute.truth_vcf`` set to the cohort's files (own targets: imputed from the whole panel, scored on
the cohort's truth samples). Each job's wall time, CPU time and peak RSS are Snakemake's
(``results/benchmarks/<stage>/...tsv``); output sizes are those of the files each stage writes.

Projected cost per target sample genome-wide: the CPU seconds of the per-target stages (target
preparation and the method's imputation) divided by the number of targets and multiplied by
3,000 Mb / chromosome length (the genome as chromosomes of the measured density; the linear scaling in
length is what the table's lengths check). The reference preparation (windows, masks, state index for
ours; the reference VCF for Beagle) is a one-off per panel and is reported apart, also scaled to 3,000 Mb.

    python benchmarks/bench_scale.py --quick             # tiny sizes, a few minutes
    python benchmarks/bench_scale.py                     # 15/30/60 Mb x 1,000/10,000 targets (many hours on 2 cores)
    python benchmarks/bench_scale.py --lengths 5 10 --targets 200 1000

Writes benchmarks/results/scale.json and scale.png (time and memory against length and targets).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
GENOME_MB = 3000
METHODS = ("copying", "beagle")
# stages whose cost is per target set (the rest prepares the reference, or simulates / scores)
TARGET_STAGES = ("target_mask", "phase", "minimac4_target")
# the reference preparation of each method (Beagle reads the reference VCF itself)
REFERENCE_STAGES = {
    "copying": ("window", "mask", "states", "tool_map"),
    "beagle": ("window", "reference_vcf", "tool_map"),
}
NOT_IMPUTATION = ("demo_panel", "demo_targets", "split", "evaluate", "compare")
# where each stage writes (relative to the results directory; {rest} is the benchmark file's path
# below the stage, without .tsv: the chromosome, and the mask hash, split or method)
OUTPUTS = {
    "demo_panel": ["demo"],
    "split": ["split"],
    "window": ["windows/{rest}"],
    "mask": ["masks/{rest}"],
    "tokenize": ["tokens/{rest}.parquet"],
    "index": ["index/{rest}"],
    "retrieve": ["retrieval/{rest}.parquet"],
    "prior": ["prior/{rest}.parquet"],
    "states": ["states/{rest}"],
    "reference_vcf": ["targets/{rest}/reference.vcf.gz"],
    "tool_map": ["targets/{rest}/tool.map", "targets/{rest}/map"],
    "target_mask": ["targets/{rest}/aligned"],
    "phase": ["targets/{rest}/phased"],
    "impute": ["impute/{rest}.vcf.gz", "impute/{rest}.json"],
    "evaluate": ["evaluation/{rest}"],
}


def size_mb(results: Path, stage: str, rest: str) -> float | None:
    paths = [results / p.format(rest=rest) for p in OUTPUTS.get(stage, [])]
    paths = [p for p in paths if p.exists()]
    if not paths:
        return None
    total = sum(
        f.stat().st_size
        for p in paths
        for f in ([p] if p.is_file() else p.rglob("*"))
        if f.is_file()
    )
    return round(total / 2**20, 2)


def read_jobs(results: Path, since: float) -> list[dict]:
    """Every job benchmark written since ``since``: stage, what (the rest of its path), wall s, CPU s,
    peak RSS MB, output MB."""
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        if tsv.stat().st_mtime < since:
            continue
        rel = tsv.relative_to(results / "benchmarks").with_suffix("")
        stage, rest = rel.parts[0], "/".join(rel.parts[1:])
        b = pd.read_csv(tsv, sep="\t").iloc[-1]
        rows.append(
            {
                "stage": stage + (f":{rel.parts[-1]}" if stage in ("impute", "evaluate") else ""),
                "what": rest,
                "wall_s": round(float(b["s"]), 2),
                "cpu_s": round(float(b.get("cpu_time", float("nan"))), 2),
                "max_rss_mb": round(float(b["max_rss"]), 1),
                "output_mb": size_mb(results, stage, rest),
            }
        )
    return rows


def snakemake(targets: list[str], configs: list[Path], cores: int, log: Path) -> float:
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--configfile"]
    cmd += ["config/config.yaml", "config/scale.yaml", *map(str, configs), "--quiet", "rules"]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        run = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if run.returncode:
        sys.exit(f"snakemake failed; see {log}")
    return time.perf_counter() - t0


def subset_targets(cohort: Path, n: int, out: Path) -> Path:
    """The first ``n`` samples of the cohort's target VCF."""
    import pysam
    import pysam.bcftools

    if out.exists():
        return out
    with pysam.VariantFile(str(cohort)) as f:
        samples = list(f.header.samples)[:n]
    pysam.bcftools.view(
        "-s", ",".join(samples), "-Oz", "-o", str(out), str(cohort), catch_stdout=False
    )
    pysam.tabix_index(str(out), preset="vcf", force=True)
    return out


def run_length(
    length_mb: float, targets: list[int], a: argparse.Namespace, work: Path
) -> list[dict]:
    """One chromosome length: the demo with a cohort of max(targets), then one run per target count."""
    results = work / f"L{length_mb:g}Mb"
    results.mkdir(parents=True, exist_ok=True)
    log = results.parent / f"L{length_mb:g}Mb.log"
    demo = {
        "sequence_length": int(length_mb * 1e6),
        "cohort_samples": max(targets),
        "cohort_truth_samples": min(a.truth_samples, max(targets)),
    }
    if a.panel:
        demo["n_samples"] = a.panel
    base = {"results": str(results), "demo": demo}
    if a.quick:
        base.update({"windows": {"length": 512, "overlap": 128}, "retrieval": {"k": 32}})
    cfg = work / f"L{length_mb:g}Mb.config.yaml"
    cfg.write_text(yaml.safe_dump(base))
    t0 = time.time()
    demo_s = snakemake([str(results / "demo" / "panel.vcf.gz")], [cfg], a.cores, log)
    demo_jobs = read_jobs(results, t0)
    info = json.loads((results / "demo" / "demo.json").read_text())
    points = []
    shared: dict[str, dict] = {}
    for n in sorted(targets):
        target = subset_targets(
            results / "demo" / "cohort.vcf.gz", n, work / f"L{length_mb:g}Mb_T{n}.vcf.gz"
        )
        own = work / f"L{length_mb:g}Mb_T{n}.config.yaml"
        own.write_text(
            yaml.safe_dump(
                {
                    "impute": {
                        "target_vcf": str(target),
                        "truth_vcf": str(results / "demo" / "cohort_truth.vcf.gz"),
                    }
                }
            )
        )
        t0 = time.time()
        seconds = snakemake(
            [str(results / "evaluation" / "comparison.tsv")], [cfg, own], a.cores, log
        )
        jobs = read_jobs(results, t0)
        for j in jobs:  # the reference stages run with the first target set; later runs reuse them
            shared.setdefault(j["stage"] + "/" + j["what"], j)
        ran = {j["stage"] + "/" + j["what"] for j in jobs}
        jobs += [dict(j, reused=True) for k, j in shared.items() if k not in ran]
        comparison = pd.read_csv(results / "evaluation" / "comparison.tsv", sep="\t")
        r2 = {
            m: float(
                comparison[(comparison.method == m) & (comparison.maf_bin == "all")]["r2"].iloc[0]
            )
            for m in METHODS
            if ((comparison.method == m) & (comparison.maf_bin == "all")).any()
        }
        chrom = info["chromosomes"]
        sites = sum(c["sites"] for c in chrom.values())
        point = {
            "length_mb": length_mb,
            "targets": n,
            "panel_samples": sum(info["populations"].values()),
            "sites": sites,
            "array_sites": sum(c["array_sites"] for c in chrom.values()),
            "workflow_s": round(seconds, 1),
            "demo_s": round(demo_s, 1),
            "jobs": demo_jobs + jobs,
            "r2_all": r2,
        }
        point["cost"] = projected_cost(point)
        points.append(point)
        print_point(point)
    return points


def stage_totals(jobs: list[dict]) -> pd.DataFrame:
    """Per stage: summed wall and CPU seconds and output size, the peak RSS of its largest job."""
    df = pd.DataFrame(jobs)
    return df.groupby("stage").agg(
        jobs=("what", "count"),
        wall_s=("wall_s", "sum"),
        cpu_s=("cpu_s", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
        output_mb=("output_mb", lambda x: x.dropna().sum()),
    )


def projected_cost(point: dict) -> dict:
    """CPU seconds per target sample genome-wide, per method, and the reference preparation."""
    t = stage_totals(point["jobs"])
    scale = GENOME_MB / point["length_mb"]
    out = {}
    for m in METHODS:
        if f"impute:{m}" not in t.index:
            continue
        per_target = [f"impute:{m}", *[s for s in TARGET_STAGES if s in t.index]]
        reference = [s for s in REFERENCE_STAGES[m] if s in t.index]
        cpu = float(t.loc[per_target, "cpu_s"].sum())
        wall = float(t.loc[per_target, "wall_s"].sum())
        out[m] = {
            "cpu_s_per_target_genome": round(cpu / point["targets"] * scale, 3),
            "wall_s_per_target_genome": round(wall / point["targets"] * scale, 3),
            "reference_cpu_s_genome": round(float(t.loc[reference, "cpu_s"].sum()) * scale, 1),
            "impute_max_rss_mb": float(t.loc[f"impute:{m}", "max_rss_mb"]),
        }
    return out


def marginal_costs(points: list[dict]) -> list[dict]:
    """The per-target CPU cost between two target counts of one length (fixed costs, such as start-up
    and reading the reference, cancel), scaled to the genome."""
    out = []
    for length in sorted({p["length_mb"] for p in points}):
        ps = sorted((p for p in points if p["length_mb"] == length), key=lambda p: p["targets"])
        for lo, hi in zip(ps, ps[1:], strict=False):
            for m in METHODS:
                stages = [f"impute:{m}", *TARGET_STAGES]
                cpu = [float(stage_totals(p["jobs"]).cpu_s.reindex(stages).sum()) for p in (lo, hi)]
                per = (cpu[1] - cpu[0]) / (hi["targets"] - lo["targets"]) * GENOME_MB / length
                out.append({"length_mb": length, "method": m, "from": lo["targets"],
                            "to": hi["targets"], "cpu_s": round(per, 3)})  # fmt: skip
    return out


def print_point(point: dict) -> None:
    print(
        f"\n## {point['length_mb']:g} Mb, {point['panel_samples']} panel samples, {point['sites']} sites "
        f"({point['array_sites']} typed), {point['targets']} targets; workflow {point['workflow_s']} s\n"
    )
    t = stage_totals(point["jobs"]).reset_index()
    print("| stage | jobs | wall s | CPU s | peak RSS MB | output MB |")
    print("|---|---|---|---|---|---|")
    for r in t.itertuples():
        print(
            f"| {r.stage} | {r.jobs} | {r.wall_s:.1f} | {r.cpu_s:.1f} | {r.max_rss_mb:.0f} | {r.output_mb:.1f} |"
        )
    print(
        "\n| method | r² all | CPU s / target genome-wide | wall s / target genome-wide | reference prep CPU s genome-wide |"
    )
    print("|---|---|---|---|---|")
    for m, c in point["cost"].items():
        print(
            f"| {m} | {point['r2_all'].get(m, float('nan')):.4f} | {c['cpu_s_per_target_genome']} | "
            f"{c['wall_s_per_target_genome']} | {c['reference_cpu_s_genome']} |"
        )


def rss_bound(points: list[dict], bound_mb: float) -> dict:
    """Per stage, its peak RSS at each length (the largest target count): under the bound?"""
    n = max(p["targets"] for p in points)
    table = {}
    for p in points:
        if p["targets"] != n:
            continue
        for stage, r in stage_totals(p["jobs"]).iterrows():
            table.setdefault(stage, {})[p["length_mb"]] = float(r["max_rss_mb"])
    ok = all(v <= bound_mb for row in table.values() for v in row.values())
    return {"bound_mb": bound_mb, "targets": n, "by_stage": table, "all_under": ok}


def plot(points: list[dict], path: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from ragimpute.plots import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))

    def curves(col: int, m: str, style: str, fixed: str, x_key: str, label: str) -> None:
        """Imputation wall time (row 0) and peak RSS (row 1) of ``m`` against ``x_key``, a curve per
        value of ``fixed``."""
        for v in sorted({p[fixed] for p in points}):
            ps = sorted(
                (p for p in points if p[fixed] == v and m in p["cost"]), key=lambda p: p[x_key]
            )
            if ps:
                x = [p[x_key] for p in ps]
                t = [stage_totals(p["jobs"]).loc[f"impute:{m}", "wall_s"] for p in ps]
                rss = [p["cost"][m]["impute_max_rss_mb"] for p in ps]
                axes[0, col].plot(x, t, style, label=label.format(m=m, v=v))
                axes[1, col].plot(x, rss, style, label=label.format(m=m, v=v))

    targets = sorted({p["targets"] for p in points})
    for m, style in zip(METHODS, ("o-", "s--"), strict=True):
        curves(0, m, style, "targets", "length_mb", "{m}, {v} targets")
        curves(1, m, style, "length_mb", "targets", "{m}, {v:g} Mb")
    # every stage's peak RSS at the largest target count, against length
    n = targets[-1]
    for stage in sorted({j["stage"] for p in points for j in p["jobs"]}):
        if stage.startswith(("impute", "evaluate")) or stage in NOT_IMPUTATION:
            continue
        ps = sorted((p for p in points if p["targets"] == n), key=lambda p: p["length_mb"])
        y = [stage_totals(p["jobs"]).max_rss_mb.get(stage, float("nan")) for p in ps]
        axes[1, 0].plot([p["length_mb"] for p in ps], y, ":", lw=1, alpha=0.7, label=stage)
    axes[0, 0].set(title="imputation wall time vs chromosome length", xlabel="Mb", ylabel="s")
    axes[0, 1].set(title="imputation wall time vs targets", xlabel="targets", ylabel="s")
    axes[1, 0].set(
        title="peak RSS vs chromosome length (dotted: other stages)", xlabel="Mb", ylabel="MB"
    )
    axes[1, 1].set(title="imputation peak RSS vs targets", xlabel="targets", ylabel="MB")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=float, nargs="+", default=[15, 30, 60], help="Mb")
    ap.add_argument("--targets", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument(
        "--panel", type=int, default=0, help="panel individuals (0: the preset's 2,500)"
    )
    ap.add_argument("--truth-samples", type=int, default=1000, help="cohort samples scored")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--rss-bound-mb", type=float, default=8000, help="the stated bound (rules' mem_mb)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="0.5 and 1 Mb, 200 panel samples, 20 and 100 targets"
    )
    ap.add_argument("--work", default=str(OUT / "scale"), help="results directories of the runs")
    ap.add_argument("--out", default=str(OUT / "scale.json"))
    a = ap.parse_args()
    if a.quick:
        a.lengths, a.targets, a.panel, a.truth_samples = [0.5, 1.0], [20, 100], 200, 20
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    points = []
    for length in a.lengths:
        points += run_length(length, a.targets, a, work)
    marginal = marginal_costs(points)
    if marginal:
        print("\n## Marginal CPU s per target sample genome-wide (between the target counts)\n")
        print("| length | method | targets | CPU s / target genome-wide |")
        print("|---|---|---|---|")
        for r in marginal:
            print(
                f"| {r['length_mb']:g} Mb | {r['method']} | {r['from']} -> {r['to']} | {r['cpu_s']} |"
            )
    bound = rss_bound(points, a.rss_bound_mb)
    print(
        f"\n## Peak RSS per stage against chromosome length ({bound['targets']} targets; bound {a.rss_bound_mb:g} MB)\n"
    )
    lengths = sorted({p["length_mb"] for p in points})
    print("| stage | " + " | ".join(f"{x:g} Mb" for x in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for stage, row in sorted(bound["by_stage"].items()):
        print(
            f"| {stage} | " + " | ".join(f"{row.get(x, float('nan')):.0f}" for x in lengths) + " |"
        )
    print(f"\nevery stage under {a.rss_bound_mb:g} MB: {bound['all_under']}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "args": vars(a),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "genome_mb": GENOME_MB,
        "points": points,
        "rss": bound,
        "marginal": marginal,
    }
    out.write_text(json.dumps(summary, indent=1, default=str))
    plot(points, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
