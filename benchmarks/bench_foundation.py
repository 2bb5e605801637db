"""Foundation benchmark: windowing against bcftools decoding, and the FAISS index kinds.

    python benchmarks/bench_foundation.py            # default + large demo panel (~2 min on 2 cores)
    python benchmarks/bench_foundation.py --quick    # default panel only, one repeat

Prints tables and writes ``benchmarks/results/foundation.json``. Simulated panels are cached under
``benchmarks/results/data/`` (keyed on their spec). Every measurement runs in its own Python process,
so its peak RSS is its own: ``VmHWM`` of the worker's own address space (``ru_maxrss`` would also
count the parent's pages from before ``exec``), and GNU ``time -f %M`` for bcftools.
``python_baseline_rss_mb`` is that of a worker that only imports the same modules. Times are the median of ``--repeats`` runs.

Windowing = ``ragimpute.windows.run_window_stage`` (the panel streamed, all three splits written);
reading = the same panel's records read and decoded alone (``vcf_io.PanelStream``), in a process of
its own. The bcftools rows decode the same file to /dev/null with the bcftools CLI, one thread.
Index rows: build every window's index from the train tokens, then query every haplotype of every
split (train queries exclude their own sample, as the pipeline does), one FAISS thread. Window
length/overlap, k and the HNSW degree are read from config/config.yaml, so the figures follow the
defaults. Recall is distance-based recall@k against exact binary search: the fraction of
returned neighbours whose Hamming distance is <= the exact k-th distance (ties count as hits).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PANELS = {
    # the size of the default config (config/config.yaml demo:)
    "default": {"n_samples": 300, "sequence_length": 3_000_000},
    "large": {"n_samples": 1000, "sequence_length": 5_000_000},
}
MASKS = {
    "array": {"strategy": "array"},  # the default config: only array sites observed
    "random0.5": {"strategy": "random", "rate": 0.5, "seed": 7},  # half the sites observed
}
KINDS = ("binary_flat", "float_l2", "binary_hnsw")
_CONFIG = yaml.safe_load((HERE.parent / "config" / "config.yaml").read_text())
WINDOW_LENGTH = int(_CONFIG["windows"]["length"])
WINDOW_OVERLAP = int(_CONFIG["windows"]["overlap"])
K = int(_CONFIG["retrieval"]["k"])
HNSW_M = int(_CONFIG["index"]["hnsw_m"])


# -- measuring a child process ------------------------------------------------------------------


GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_measured(cmd: list[str]) -> tuple[float, float | None, str]:
    """(wall seconds, peak RSS MB or None, stdout) of one external command."""
    rss_file = RESULTS / ".rss"
    prefix = [GNU_TIME, "-f", "%M", "-o", str(rss_file)] if GNU_TIME else []
    t0 = time.perf_counter()
    r = subprocess.run(prefix + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rss = float(rss_file.read_text().split()[-1]) / 1024 if GNU_TIME else None
    return wall, rss, r.stdout


def worker(task: str, **kwargs) -> dict:
    """Run ``task`` in a fresh interpreter; it prints one JSON object with its own peak RSS."""
    cmd = [sys.executable, str(Path(__file__)), "--worker", task, json.dumps(kwargs)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"worker {task} failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _vm_hwm_mb() -> float:
    """Peak RSS of this process's address space since exec (Linux)."""
    with open("/proc/self/status") as f:
        kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    return round(kb / 1024, 1)


def median_of(repeats: int, fn) -> tuple[dict, list[float]]:
    runs = [fn() for _ in range(repeats)]
    key = "seconds"
    runs.sort(key=lambda r: r[key])
    return runs[len(runs) // 2], [r[key] for r in runs]


# -- workers (run in the child process) ---------------------------------------------------------


def _w_noop() -> dict:
    import faiss  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import pysam  # noqa: F401

    import ragimpute.windows  # noqa: F401

    return {"seconds": 0.0}


def _w_window(vcf: str, split: str, out: str) -> dict:
    from ragimpute.windows import run_window_stage

    t0 = time.perf_counter()
    summary = run_window_stage(vcf, split, "20", WINDOW_LENGTH, WINDOW_OVERLAP, out)
    return {
        "seconds": round(time.perf_counter() - t0, 4),
        "n_sites": summary["n_sites"],
        "n_windows": summary["n_windows"],
        "n_samples": sum(summary["samples"].values()),
        "skipped": summary["skipped"],
    }


def _w_read(vcf: str, split: str) -> dict:
    from ragimpute.split import SPLITS, load_split
    from ragimpute.vcf_io import PanelStream, vcf_samples

    t0 = time.perf_counter()
    # the samples run_window_stage asks for
    sp = load_split(split)
    order = {s: i for i, s in enumerate(vcf_samples(vcf))}
    samples = sorted((s for n in SPLITS for s in sp[n]), key=order.get)
    n_sites = sum(len(sites) for sites, _ in PanelStream(vcf, "20", samples=samples))
    return {"seconds": round(time.perf_counter() - t0, 4), "n_sites": n_sites}


def _w_index(kind: str, tokens_dir: str, out: str, exact: str | None) -> dict:
    import faiss
    import numpy as np

    from ragimpute.index import HaplotypeIndex, build_index, query_block
    from ragimpute.tokens import TokenTable

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    meta = build_index(Path(tokens_dir) / "train.parquet", out, kind=kind, hnsw_m=HNSW_M, threads=1)
    build = time.perf_counter() - t0
    index = HaplotypeIndex(out)
    dists = {}
    t0 = time.perf_counter()
    n_queries = 0
    for split in ("train", "val", "test"):
        table = TokenTable(Path(tokens_dir) / f"{split}.parquet")
        for w in range(table.n_windows):
            q = query_block(table, w)
            _, d = index.search(q, K)
            dists[f"{split}/{w}"] = d
            n_queries += len(q.tokens)
    query = time.perf_counter() - t0
    n_windows = meta["n_windows"]
    result = {
        "seconds": round(build + query, 4),
        "build_seconds": round(build, 4),
        "query_seconds": round(query, 4),
        "n_windows": n_windows,
        "n_queries": n_queries,
        "n_reference_haplotypes": meta["n_haplotypes"],
        "mean_observed_sites_per_window": round(float(np.mean(meta["n_observed"])), 1),
        "index_bytes": meta["bytes"],
        "build_ms_per_window": round(1000 * build / n_windows, 2),
        "query_us_per_query_window": round(1e6 * query / n_queries, 2),
        "index_bytes_per_window": round(meta["bytes"] / n_windows),
    }
    if exact is None:
        np.savez(Path(out).parent / f"{kind}.distances.npz", **dists)
    else:
        ref = np.load(exact)
        hits = total = 0
        for key, d in dists.items():
            kth = ref[key][:, -1:]
            hits += int((d <= kth).sum())
            total += d.size
        result["recall_at_k"] = round(hits / total, 5)
    return result


WORKERS = {"noop": _w_noop, "window": _w_window, "read": _w_read, "index": _w_index}


# -- the benchmark (parent process) --------------------------------------------------------------


def make_panel(name: str, data: Path) -> dict:
    from ragimpute.demo import DemoSpec, make_demo
    from ragimpute.split import run_split_stage

    spec = DemoSpec(**PANELS[name])
    d = data / name
    vcf, array, split = d / "panel.vcf.gz", d / "array_sites.tsv", d / "split.tsv"
    spec_file = d / "spec.json"
    if not (
        spec_file.exists() and json.loads(spec_file.read_text()) == asdict(spec) and split.exists()
    ):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        make_demo(spec, vcf, array)
        print(f"simulated {name} panel in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        run_split_stage(vcf, split, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
        spec_file.write_text(json.dumps(asdict(spec)))
    return {"dir": d, "vcf": vcf, "array": array, "split": split, "spec": asdict(spec)}


def bcftools_decode(vcf: Path, repeats: int) -> dict:
    out = {}
    if not shutil.which("bcftools"):
        return out
    for label, args in {
        "bcftools view -Ou": ["view", "--threads", "0", "-Ou", "-o", "/dev/null"],
        "bcftools view -Ov": ["view", "--threads", "0", "-Ov", "-o", "/dev/null"],
    }.items():
        runs = sorted(
            (run_measured(["bcftools", *args, str(vcf)]) for _ in range(repeats)),
            key=lambda r: r[0],
        )
        wall, rss, _ = runs[len(runs) // 2]
        out[label] = {
            "seconds": round(wall, 4),
            "runs": [round(r[0], 4) for r in runs],
            "peak_rss_mb": rss,
        }
    return out


def bench_panel(name: str, data: Path, repeats: int) -> dict:
    from ragimpute.masks import run_mask_stage_dir
    from ragimpute.tokens import run_tokenize_stage

    p = make_panel(name, data)
    res: dict = {"spec": p["spec"], "vcf_bytes": p["vcf"].stat().st_size}
    windows_dir = p["dir"] / "windows"
    best, runs = median_of(
        repeats,
        lambda: worker("window", vcf=str(p["vcf"]), split=str(p["split"]), out=str(windows_dir)),
    )
    res["windowing"] = {**best, "runs": runs}
    best, runs = median_of(
        repeats, lambda: worker("read", vcf=str(p["vcf"]), split=str(p["split"]))
    )
    res["reading"] = {**best, "runs": runs}
    res["bcftools"] = bcftools_decode(p["vcf"], repeats)
    res["index"] = {}
    for mask_name, cfg in MASKS.items():
        store = p["dir"] / "masks"
        (h,) = run_mask_stage_dir(
            windows_dir, cfg, store, p["dir"] / f"{mask_name}.json", p["array"]
        )
        tokens = p["dir"] / "tokens" / h
        for split in ("train", "val", "test"):  # always: the windows may have changed
            run_tokenize_stage(windows_dir, store, h, split, tokens / f"{split}.parquet")
        rows = {}
        for kind in KINDS:
            exact = (
                None
                if kind == "binary_flat"
                else str(p["dir"] / "index" / "binary_flat.distances.npz")
            )
            rows[kind] = worker(
                "index",
                kind=kind,
                tokens_dir=str(tokens),
                out=str(p["dir"] / "index" / kind),
                exact=exact,
            )
        res["index"][mask_name] = {"mask_hash": h, **rows}
    return res


def print_tables(report: dict) -> None:
    print(f"\n## Windowing ({report['machine']['cpus']} CPUs, median of {report['repeats']})\n")
    print(
        "| panel | sites | windows | reading s | windowing s | peak RSS MB (reading) "
        "| bcftools view -Ou s | bcftools view -Ov s | windowing / -Ou | windowing / -Ov |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in report["panels"].items():
        w, rd, b = r["windowing"], r["reading"], r["bcftools"]
        ou = b.get("bcftools view -Ou", {}).get("seconds")
        ov = b.get("bcftools view -Ov", {}).get("seconds")

        def ratio(x: float | None, w: dict = w) -> str:
            return f"{w['seconds'] / x:.1f}x" if x else "n/a"

        label = f"{name} ({r['spec']['n_samples']} x {r['spec']['sequence_length'] / 1e6:g} Mb)"
        print(
            f"| {label} | {w['n_sites']} | {w['n_windows']} | {rd['seconds']:.2f} "
            f"| {w['seconds']:.2f} | {w['peak_rss_mb']:.0f} ({rd['peak_rss_mb']:.0f}) "
            f"| {ou if ou is not None else 'n/a'} | {ov if ov is not None else 'n/a'} | {ratio(ou)} | {ratio(ov)} |"
        )
    print(
        f"\n## Index (k = {K}, 1 FAISS thread, window {WINDOW_LENGTH}/{WINDOW_OVERLAP}; "
        f"Python baseline RSS {report['python_baseline_rss_mb']:.0f} MB)\n"
    )
    print(
        "| panel | mask | obs. sites/window | kind | build s | build ms/window | query s | "
        "µs/query-window | index MB | KB/window | peak RSS MB | recall@k vs exact |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in report["panels"].items():
        for mask_name, rows in r["index"].items():
            for kind in KINDS:
                x = rows[kind]
                recall = "exact" if kind == "binary_flat" else f"{x['recall_at_k']:.4f}"
                print(
                    f"| {name} | {mask_name} | {x['mean_observed_sites_per_window']:.0f} | {kind} "
                    f"| {x['build_seconds']:.2f} | {x['build_ms_per_window']:.1f} | {x['query_seconds']:.2f} "
                    f"| {x['query_us_per_query_window']:.1f} | {x['index_bytes'] / 1e6:.2f} "
                    f"| {x['index_bytes_per_window'] / 1e3:.1f} | {x['peak_rss_mb']:.0f} | {recall} |"
                )


def machine() -> dict:
    import faiss
    import numpy
    import pyarrow
    import pysam

    import ragimpute

    cpu = platform.processor()
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    bcftools = (
        subprocess.run(["bcftools", "--version"], capture_output=True, text=True).stdout.split(
            "\n"
        )[0]
        if shutil.which("bcftools")
        else None
    )
    return {
        "load_average_at_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "ragimpute": ragimpute.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "faiss": faiss.__version__,
        "pysam": pysam.__version__,
        "bcftools": bcftools,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="default panel only, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "foundation.json")
    ap.add_argument("--data", type=Path, default=RESULTS / "data")
    ap.add_argument("--worker", nargs=2, metavar=("TASK", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        result = WORKERS[a.worker[0]](**json.loads(a.worker[1]))
        print(json.dumps({**result, "peak_rss_mb": _vm_hwm_mb()}))
        return
    repeats = 1 if a.quick else a.repeats
    panels = ["default"] if a.quick else list(PANELS)
    t0 = time.perf_counter()
    report = {
        "window_length": WINDOW_LENGTH,
        "window_overlap": WINDOW_OVERLAP,
        "k": K,
        "hnsw_m": HNSW_M,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "repeats": repeats,
        "python_baseline_rss_mb": worker("noop")["peak_rss_mb"],
        "panels": {name: bench_panel(name, a.data, repeats) for name in panels},
    }
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"\nwrote {a.out} ({report['total_seconds']} s)")


if __name__ == "__main__":
    main()
