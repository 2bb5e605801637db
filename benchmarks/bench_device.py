"""Imputation with the trained model on each device: the demo's held-out test targets, same model,
same reference, CPU and CUDA side by side (wall time, peak memory, accuracy).

Runs on a finished `bench_train.py` work directory (its demo panel, windows, array-mask index, and the
`token-static` model):

    python benchmarks/bench_train.py --modes token-static      # trains the model (GPU when present)
    python benchmarks/bench_device.py                          # imputes with it on cpu and cuda

Prints a table and writes benchmarks/results/device.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from ragimpute.evaluate import evaluate
from ragimpute.impute import impute_target
from ragimpute.targets import make_demo_targets

HERE = Path(__file__).resolve().parent
CHROM = "20"


def replicate_samples(vcf: Path, copies: int) -> None:
    """Rewrite ``vcf`` with every sample repeated ``copies`` times as ``<name>_c<i>``."""
    import gzip

    import pysam

    plain = vcf.with_suffix("")
    with gzip.open(vcf, "rt") as f, open(plain, "w") as g:
        for line in f:
            if line.startswith("##"):
                g.write(line)
                continue
            p = line.rstrip("\n").split("\t")
            if line.startswith("#CHROM"):
                names = [f"{s}_c{i}" for i in range(copies) for s in p[9:]]
                g.write("\t".join(p[:9] + names) + "\n")
            else:
                g.write("\t".join(p[:9] + p[9:] * copies) + "\n")
    pysam.tabix_index(str(plain), preset="vcf", force=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(HERE / "results/train_work"))
    ap.add_argument("--model", default=None, help="default: WORK/runs/token-static/model.pt")
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch-haplotypes", type=int, default=1024)
    ap.add_argument(
        "--copies",
        type=int,
        default=1,
        help="repeat every target sample this many times (renamed), to see how time scales with targets",
    )
    a = ap.parse_args()
    root = Path(a.work)
    model = Path(a.model or root / "runs/token-static/model.pt")
    k = torch.load(model, map_location="cpu", weights_only=False)["train_config"]["k"]
    torch.set_num_threads(a.threads)

    tdir = root / "targets" / CHROM
    tdir.mkdir(parents=True, exist_ok=True)
    make_demo_targets(
        root / "demo/panel.vcf.gz",
        root / "split/samples.tsv",
        root / "windows" / CHROM,
        root / "demo/array_sites.tsv",
        CHROM,
        tdir / "target.vcf.gz",
        tdir / "truth.vcf.gz",
    )
    if a.copies > 1:
        for name in ("target", "truth"):
            replicate_samples(tdir / f"{name}.vcf.gz", a.copies)
    rows = []
    for device in a.devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: cuda skipped", file=sys.stderr)
            continue
        out = root / "device" / f"model_{device}.vcf.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        rep = impute_target(
            root,
            CHROM,
            root / "split/samples.tsv",
            tdir / "target.vcf.gz",
            "model",
            out,
            aligned_dir=root / "device" / "aligned",
            k=k,
            batch_haplotypes=a.batch_haplotypes,
            panel_vcf=root / "demo/panel.vcf.gz",
            checkpoint=model,
            device=device,
            threads=a.threads,
        )
        wall = time.perf_counter() - t0
        scores = evaluate(
            out,
            tdir / "truth.vcf.gz",
            root / "windows" / CHROM / "sites.parquet",
            root / "device" / "aligned" / "target.vcf.gz",
            f"model_{device}",
            root / "device" / f"eval_{device}",
        )
        rows.append(
            {
                "device": rep["device"],
                "targets": rep.get("samples", None),
                "wall_s": round(wall, 2),
                "impute_s": rep.get("impute_seconds"),
                "peak_rss_mb": rep.get("peak_rss_mb"),
                "cuda_peak_mb": rep.get("cuda_max_memory_allocated_mb"),
                "r2": scores["all"]["r2"],
                "concordance": scores["all"]["concordance"],
                "report": rep,
            }
        )
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"\nmodel {model}, K={k}, torch {torch.__version__}, GPU: {name}, CPU threads {a.threads}"
    )
    print(f"{'device':<8}{'wall s':>9}{'impute s':>10}{'RSS MB':>9}{'GPU MB':>9}{'r2 all':>9}")
    for r in rows:
        print(
            f"{r['device']:<8}{r['wall_s']:>9.2f}{r['impute_s'] or float('nan'):>10.2f}"
            f"{r['peak_rss_mb'] or float('nan'):>9.0f}{r['cuda_peak_mb'] or float('nan'):>9.0f}"
            f"{r['r2']:>9.4f}"
        )
    out = HERE / "results/device.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": rows,
        "gpu": name,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "copies": a.copies,
    }
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
