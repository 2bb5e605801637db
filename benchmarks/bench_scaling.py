"""Speed and memory against Beagle 5.4 as targets and reference haplotypes grow, in one run.

One msprime panel (the demo's demography, or the admixed demo with --admixed) is simulated once and
cached; from it, for each (reference haplotypes, targets) pair, a reference VCF and a target VCF typed
at array sites are written, and both tools impute the same targets from the same reference on the
same threads:

- ``beagle ref=ref.vcf.gz gt=target.vcf.gz nthreads=T`` (reads the VCF itself);
- ours: ``ragimpute window`` (reads the reference VCF into the pipeline's tables) and
  ``ragimpute impute --method copying`` (harmonises the target, builds the state index, runs the
  copying-model engine, writes the VCF). "ours" below is the sum of both, "impute" the second alone.

Both write the same FORMAT fields: ``GT:DS`` (Beagle's default; ours with ``--no-gp``) on the grid,
and at the largest number of targets also ``GT:DS:GP`` (Beagle's ``gp=true``; our default), as a
point of its own (``fields``).

Each command runs in its own process under GNU time (wall seconds, peak RSS), ``--repeats`` times
(3) interleaved with the other tool's runs; the medians are reported. Accuracy (aggregate
dosage r² over untyped sites, also per reference MAF bin) is computed for both from the output VCFs
against the truth; ``--variant KEY=VALUE ...`` also imputes every point once more with those engine
settings (scored, not timed). Prints a table, writes benchmarks/results/scaling.json and the plot
benchmarks/results/scaling.png (``--out`` another folder).

    python benchmarks/bench_scaling.py                         # the full grid, 3 runs each (~15 min on 2 cores)
    python benchmarks/bench_scaling.py --quick                 # 2 points, for a smoke test
    python benchmarks/bench_scaling.py --variant renormalise=true min_posterior=0.005
    # the GPU check: the engine on CUDA against Beagle on every core, 1,000 and 5,000 targets
    python benchmarks/bench_scaling.py --engine-device cuda --threads 16 --beagle-threads 16 \
        --targets 1000 5000 --references --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
GPU_BATCH = 4096  # target haplotypes per engine call with --engine-device cuda
GNU_TIME = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)


def simulate(n_ref_samples: int, n_targets: int, length: int, seed: int, admixed: bool) -> dict:
    """Haplotypes (sites, haplotypes) of reference then target samples, cached as npz."""
    from ragimpute.demo import DemoSpec, simulate_chromosome

    kind = "admixed" if admixed else "demo"
    path = OUT / "data" / f"scaling_{kind}_{n_ref_samples}_{n_targets}_{length}_{seed}.npz"
    if path.exists():
        return dict(np.load(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = DemoSpec(seed=seed, n_samples=n_ref_samples + n_targets, sequence_length=length)
    if admixed:
        spec.admixed = True
    ts = simulate_chromosome(spec, 0)
    g = ts.genotype_matrix()
    pos = np.array([s.position for s in ts.sites()], dtype=np.int64) + 1
    biallelic = np.array([len(v.alleles) == 2 for v in ts.variants()])
    keep = biallelic & (np.diff(np.r_[0, pos]) > 0)
    data = {"haps": g[keep].astype(np.uint8), "pos": pos[keep]}
    if admixed:  # targets: the admixed samples, reference: the source populations
        pop = np.array([ts.node(u).population for u in ts.samples()])[0::2]
        names = [p.metadata["name"] for p in ts.populations()]
        order = np.r_[
            np.flatnonzero(pop != names.index("ADMIX")), np.flatnonzero(pop == names.index("ADMIX"))
        ]
        cols = np.stack([2 * order, 2 * order + 1], 1).ravel()
        data["haps"] = data["haps"][:, cols]
    np.savez_compressed(path, **data)
    return data


def write_vcf(path: Path, pos: np.ndarray, haps: np.ndarray, names: list[str]) -> None:
    """A bgzipped, tabix-indexed phased VCF at ``path`` (.vcf.gz); every site A/G."""
    import pandas as pd

    from ragimpute.vcf_write import write_phased_vcf

    write_phased_vcf(path, "20", pd.DataFrame({"pos": pos, "ref": "A", "alt": "G"}), names, haps)


def timed(cmd: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS of one command: GNU time's %M, or where it is missing (the GPU
    machine) the ru_maxrss that wait4 reports for the child, which is the same figure."""
    report = log.with_suffix(".time")
    full = [GNU_TIME, "-f", "%M", "-o", str(report), *cmd] if GNU_TIME else cmd
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    kb = int(report.read_text().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return {"seconds": round(seconds, 2), "rss_mb": round(kb / 1024, 1)}


def median_run(runs: list[dict]) -> dict:
    """The median wall time and the median peak RSS of repeated runs of one command, and every run."""
    return {
        "seconds": round(float(np.median([r["seconds"] for r in runs])), 2),
        "rss_mb": round(float(np.median([r["rss_mb"] for r in runs])), 1),
        "runs": runs,
    }


def dosages(vcf: Path, pos: np.ndarray, n: int) -> np.ndarray:
    """DS (sites, samples) from an imputed VCF, by position."""
    import pysam.bcftools

    text = pysam.bcftools.query("-f", "%POS[\t%DS]\n", str(vcf))
    out = np.full((len(pos), n), np.nan)
    idx = {p: i for i, p in enumerate(pos)}
    for line in text.splitlines():
        f = line.split("\t")
        out[idx[int(f[0])]] = np.asarray(f[1:], dtype=float)
    return out


def r2(ds: np.ndarray, truth: np.ndarray, sel: np.ndarray) -> float:
    x = ds[sel].ravel()
    y = (truth[:, 0::2] + truth[:, 1::2])[sel].ravel().astype(float)
    ok = np.isfinite(x)
    return float(np.corrcoef(x[ok], y[ok])[0, 1] ** 2)


def r2_by_maf(ds: np.ndarray, truth: np.ndarray, untyped: np.ndarray, maf: np.ndarray) -> dict:
    """Aggregate dosage r² of the untyped sites per reference MAF bin (the evaluation's bins,
    ``ragimpute.metrics``), and over all of them."""
    from ragimpute.metrics import BIN_LABELS, maf_bin

    bins = maf_bin(maf)
    out = {label: r2(ds, truth, untyped & (bins == b)) for b, label in enumerate(BIN_LABELS)}
    return {**{b: round(v, 5) for b, v in out.items()}, "all": round(r2(ds, truth, untyped), 5)}


def run_point(
    data: dict,
    n_ref: int,
    n_tgt: int,
    spacing: int,
    threads: int,
    work: Path,
    repeats: int,
    gp: bool = False,
    variant: list[str] | None = None,
    engine_device: str = "cpu",
    beagle_threads: int | None = None,
) -> dict:
    from ragimpute.demo import thin_common_sites
    from ragimpute.devices import on_cuda

    haps, pos = data["haps"], data["pos"]
    ref = haps[:, : 2 * (n_ref // 2)]
    tgt = haps[:, haps.shape[1] - 2 * n_tgt :]
    poly = (ref.sum(1) > 0) & (ref.sum(1) < ref.shape[1])
    ref, tgt, p = ref[poly], tgt[poly], pos[poly]
    maf = np.minimum(ref.mean(1), 1 - ref.mean(1))
    typed = thin_common_sites(p, maf, spacing, 0.05)
    d = work / f"ref{n_ref}_tgt{n_tgt}{'_gp' if gp else ''}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    ref_names = [f"R{i}" for i in range(ref.shape[1] // 2)]
    write_vcf(d / "ref.vcf.gz", p, ref, ref_names)
    write_vcf(d / "target.vcf.gz", p[typed], tgt[typed], [f"T{i}" for i in range(n_tgt)])
    (d / "split.tsv").write_text("sample\tsplit\n" + "".join(f"{s}\ttrain\n" for s in ref_names))
    window_cmd = (
        [
            "ragimpute",
            "window",
            "--panel",
            str(d / "ref.vcf.gz"),
            "--split",
            str(d / "split.tsv"),
            "--chrom",
            "20",
            "--length",
            "4096",
            "--overlap",
            "1024",
            "--out",
            str(d / "res/windows/20"),
        ],
        d / "window.log",
    )
    impute_cmd = (
        [
            "ragimpute",
            "impute",
            "--results",
            str(d / "res"),
            "--chrom",
            "20",
            "--split",
            str(d / "split.tsv"),
            "--target",
            str(d / "target.vcf.gz"),
            "--method",
            "copying",
            "--reference",
            "train",
            "--out",
            str(d / "ours.vcf.gz"),
            "--threads",
            str(threads),
            "--gp" if gp else "--no-gp",
            "--engine",
            f"device={engine_device}",
            # on a GPU every batch launches the same kernels whatever its size: fewer, larger
            # batches (prior.ENGINE_BATCH_BYTES still caps them by host memory)
            *(["--batch", str(GPU_BATCH)] if on_cuda(engine_device) else []),
        ],
        d / "impute.log",
    )
    beagle_cmd = (
        [
            "beagle",
            f"ref={d / 'ref.vcf.gz'}",
            f"gt={d / 'target.vcf.gz'}",
            f"out={d / 'beagle'}",
            f"nthreads={beagle_threads or threads}",
            "seed=1",
            f"gp={'true' if gp else 'false'}",
        ],
        d / "beagle.log",
    )
    runs = []
    for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits both tools
        shutil.rmtree(d / "res" / "states", ignore_errors=True)  # every repeat builds it anew
        runs.append([timed(*window_cmd), timed(*impute_cmd), timed(*beagle_cmd)])
    ours_window, ours_impute, beagle = (median_run([r[i] for r in runs]) for i in range(3))
    untyped = np.ones(len(p), bool)
    untyped[typed] = False
    outputs = {"ours": d / "ours.vcf.gz", "beagle": d / "beagle.vcf.gz"}
    if variant:  # accuracy only: imputed once more with other engine settings, not timed
        extra = [x for kv in variant for x in ("--engine", kv)]
        cmd = impute_cmd[0]
        out = cmd.index("--out") + 1
        cmd = [*cmd[:out], str(d / "variant.vcf.gz"), *cmd[out + 1 :], *extra]
        with open(d / "variant.log", "w") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
        outputs["variant"] = d / "variant.vcf.gz"
    ds = {k: dosages(v, p, n_tgt) for k, v in outputs.items()}
    acc = {k: r2(v, tgt, untyped) for k, v in ds.items()}
    by_maf = {k: r2_by_maf(v, tgt, untyped, maf) for k, v in ds.items()}
    ours_total = {
        "seconds": round(ours_window["seconds"] + ours_impute["seconds"], 2),
        "rss_mb": max(ours_window["rss_mb"], ours_impute["rss_mb"]),
    }
    report = json.loads((d / "ours.vcf.gz.json").read_text())
    return {
        "reference_haplotypes": int(ref.shape[1]),
        "targets": n_tgt,
        "fields": "GT:DS:GP" if gp else "GT:DS",
        "engine_device": engine_device,
        "threads": threads,
        "beagle_threads": beagle_threads or threads,
        "sites": int(len(p)),
        "typed": int(len(typed)),
        "ours": ours_total,
        "ours_window": ours_window,
        "ours_impute": ours_impute,
        "beagle": beagle,
        "r2": {k: round(v, 5) for k, v in acc.items()},
        "r2_by_maf": by_maf,
        "variant": variant or [],
        "engine_seconds": report.get("engine", {}).get("seconds"),
        "cuda_max_memory_allocated_mb": report.get("cuda_max_memory_allocated_mb"),
        "time_ratio": round(ours_total["seconds"] / beagle["seconds"], 2),
        "rss_ratio": round(ours_total["rss_mb"] / beagle["rss_mb"], 2),
    }


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def plot(points: list[dict], path: Path) -> None:
    from ragimpute.plots import pyplot, save_png

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    curves = {
        "targets": [q for q in points if q["curve"] == "targets"],
        "reference_haplotypes": [q for q in points if q["curve"] == "reference"],
    }
    for col, (x, pts) in enumerate(curves.items()):
        if not pts:  # a curve not measured (--references with no value)
            axes[0, col].set_visible(False)
            axes[1, col].set_visible(False)
            continue
        pts = sorted(pts, key=lambda q: q[x])
        xs = [q[x] for q in pts]
        for row, (key, label) in enumerate(
            (("seconds", "wall time (s)"), ("rss_mb", "peak RSS (MB)"))
        ):
            ax = axes[row, col]
            ax.plot(xs, [q["ours"][key] for q in pts], "o-", label="ours (window + impute)")
            ax.plot(xs, [q["ours_impute"][key] for q in pts], "o--", label="ours (impute only)")
            ax.plot(xs, [q["beagle"][key] for q in pts], "s-", label="Beagle 5.4")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(x.replace("_", " "))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    first = points[0]
    ours = f"{first['engine_device']}, {first['threads']} threads"
    fig.suptitle(
        f"Imputation: ours ({ours}) vs Beagle ({first['beagle_threads']} threads); same reference "
        "and targets"
    )
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=5_000_000, help="bp simulated")
    ap.add_argument("--targets", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument(
        "--references",
        type=int,
        nargs="*",
        default=[500, 1000, 2000, 5000],
        help="reference haplotypes (at 100 targets)",
    )
    ap.add_argument(
        "--fixed-reference",
        type=int,
        default=2000,
        help="reference haplotypes of the targets curve",
    )
    ap.add_argument("--spacing", type=int, default=10_000, help="array spacing (bp)")
    ap.add_argument("--threads", type=int, default=2, help="threads of our jobs")
    ap.add_argument("--beagle-threads", type=int, help="Beagle's nthreads (default: --threads)")
    ap.add_argument(
        "--engine-device", default="cpu", help="engine.device of ours: cpu, cuda or cuda:N"
    )
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--admixed", action="store_true", help="the admixed demo's demography")
    ap.add_argument("--quick", action="store_true", help="two small points only")
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of each command per point (medians reported)"
    )
    ap.add_argument("--work", default=str(OUT / "scaling_work"))
    ap.add_argument(
        "--out",
        default=str(OUT),
        help="folder of scaling.json and scaling.png (a trial run elsewhere keeps the real ones)",
    )
    ap.add_argument(
        "--variant",
        nargs="+",
        metavar="KEY=VALUE",
        help="engine settings also imputed (accuracy only) at every point, e.g. renormalise=true",
    )
    a = ap.parse_args()
    if a.quick:
        a.targets, a.references, a.fixed_reference, a.length = [10], [500], 500, 1_000_000
        a.repeats = 1
    n_ref_samples = max([*a.references, a.fixed_reference]) // 2
    curve_targets = 100 if not a.quick else 10  # of the reference curve
    n_targets = max([*a.targets, *([curve_targets] if a.references else [])])
    data = simulate(n_ref_samples, n_targets, a.length, a.seed, a.admixed)
    work = Path(a.work)
    points = []

    def point(curve: str, n_ref: int, n_tgt: int, **kw) -> None:
        q = run_point(
            data, n_ref, n_tgt, a.spacing, a.threads, work, a.repeats,
            engine_device=a.engine_device, beagle_threads=a.beagle_threads, **kw,
        )  # fmt: skip
        points.append({"curve": curve, **q})
        print(json.dumps(points[-1]), flush=True)

    for n_tgt in a.targets:
        point("targets", a.fixed_reference, n_tgt, variant=a.variant)
    for n_ref in a.references:
        point("reference", n_ref, curve_targets, variant=a.variant)
    point("gp", a.fixed_reference, max(a.targets), gp=True)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "threads": a.threads,
        "beagle_threads": a.beagle_threads or a.threads,
        "engine_device": a.engine_device,
        "gpu": _gpu_name(a.engine_device),
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(
        json.dumps({"machine": machine, "args": vars(a), "points": points}, indent=2)
    )
    plot(points, out / "scaling.png")
    print(
        f"\n{'curve':10} {'fields':8} {'ref haps':>8} {'targets':>7} {'ours s':>7} {'impute s':>8} {'Beagle s':>8} "
        f"{'ratio':>6} {'ours MB':>8} {'Beagle MB':>9} {'r2 ours':>8} {'r2 Beagle':>9}"
    )
    for q in points:
        print(
            f"{q['curve']:10} {q['fields']:8} {q['reference_haplotypes']:8d} {q['targets']:7d} {q['ours']['seconds']:7.1f} "
            f"{q['ours_impute']['seconds']:8.1f} {q['beagle']['seconds']:8.1f} {q['time_ratio']:6.2f} "
            f"{q['ours']['rss_mb']:8.0f} {q['beagle']['rss_mb']:9.0f} {q['r2']['ours']:8.4f} {q['r2']['beagle']:9.4f}"
        )
        for k, v in q["r2_by_maf"].items():  # the row's r² per MAF bin
            print(f"    r2 by MAF, {k}: {v}")
    print(f"machine: {machine}")


if __name__ == "__main__":
    main()
