"""Training benchmark: retrieval modes side by side on the demo panel, scored the same honest way.

Runs (each trained from scratch with the same seed and hyper-parameters):
  none           the model without retrieval (ablation)
  token-static   token-space retrieval, one array mask (the default pipeline)
  token-schedule token-space retrieval, E per-epoch masks (array sites with random dropout), each with its
                 own index: dynamic masking that stays consistent
  embedding      embedding-space retrieval, index rebuilt from the current model every epoch
  mismatch       the prototype's defect, reproduced on purpose: queries tokenized with the per-epoch masks,
                 neighbours from a float token-vector index built once with the static mask. Only this
                 script can do that: the package refuses such queries.
Every trained model is then scored on the validation samples with the array mask (array sites observed,
everything else imputed), beside the allele-frequency predictor, the copying model without a network and
Beagle 5.4 when installed.

    python benchmarks/bench_train.py --epochs 4            # ~1 h on 2 CPU cores
    python benchmarks/bench_train.py --quick               # tiny panel, a few minutes

Prints a table and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from ragimpute.demo import DemoSpec, make_demo
from ragimpute.index import build_index, search_excluding
from ragimpute.logs import setup_logging
from ragimpute.masks import run_mask_stage_dir
from ragimpute.metrics import BIN_LABELS, Accumulator
from ragimpute.model import CopyingModelPredictor, ImputationModel, ModelConfig
from ragimpute.predictors import WindowBatch
from ragimpute.retrieval import retrieve
from ragimpute.split import SPLITS, load_split, run_split_stage
from ragimpute.tokens import MASK, run_tokenize_stage
from ragimpute.train import Neighbours, TrainConfig, evaluate, iter_inputs, load_chromosome, train
from ragimpute.windows import run_window_stage

HERE = Path(__file__).resolve().parent
CHROM = "20"


def build(root: Path, quick: bool, k: int) -> dict[str, list[str]]:
    """Demo panel, split, windows and two mask sets (static array; array + dropout schedule) with indexes."""
    if quick:
        spec = DemoSpec(n_samples=60, sequence_length=600_000, array_spacing_bp=3000)
        window = (1024, 256)
    else:
        spec = DemoSpec()  # the pipeline's default demo
        window = (4096, 1024)
    panel = root / "demo/panel.vcf.gz"
    if not panel.exists():
        make_demo(spec, panel, root / "demo/array_sites.tsv")
        run_split_stage(
            panel, root / "split/samples.tsv", {"train": 0.8, "val": 0.1, "test": 0.1}, 1
        )
        run_window_stage(
            panel, root / "split/samples.tsv", CHROM, *window, root / "windows" / CHROM
        )
    masks = {}
    for name, cfg in {
        "static": {"strategy": "array"},
        "schedule": {"strategy": "array", "array_dropout": 0.1, "seed": 11, "schedule": 4},
    }.items():
        store = root / "masks" / CHROM
        masks[name] = run_mask_stage_dir(
            root / "windows" / CHROM,
            cfg,
            store,
            store / f"{name}.json",
            root / "demo/array_sites.tsv",
        )
        for h in masks[name]:
            tdir = root / "tokens" / CHROM / h
            if (root / "retrieval" / CHROM / h / "val.parquet").exists():
                continue
            for s in SPLITS:
                run_tokenize_stage(root / "windows" / CHROM, store, h, s, tdir / f"{s}.parquet")
            build_index(tdir / "train.parquet", root / "index" / CHROM / h, threads=2)
            for s in ("train", "val"):
                retrieve(
                    tdir / f"{s}.parquet",
                    root / "index" / CHROM / h,
                    k,
                    root / "retrieval" / CHROM / h / f"{s}.parquet",
                )
    return masks


def mismatched_factory(static_hash: str, k: int):
    """The prototype's retrieval: float token vectors of the reference under ONE mask, searched by queries
    tokenized with whatever mask the epoch uses. Distances then mix masked and observed sites."""

    class Mismatched:
        name = "mismatch"

        def __init__(self, data, device):
            self.windows = {(w.chrom, w.window): w for w in data["windows"]}
            self.samples = data["samples"]
            self.index = {}
            for key, w in self.windows.items():
                x = w.tokens[(static_hash, "train")].astype(np.float32)
                idx = faiss.IndexFlatL2(x.shape[1])
                idx.add(x)
                self.index[key] = idx
            self.cache = {}

        def get(self, w, mask_hash, split):
            key = (w.chrom, w.window, mask_hash, split)
            if key not in self.cache:
                q = w.tokens[(mask_hash, split)].astype(np.float32)
                rows = list(np.repeat(np.asarray(self.samples[w.chrom][split], dtype=object), 2))
                sidx = {s: i for i, s in enumerate(self.samples[w.chrom]["train"])}
                ids, dist = search_excluding(self.index[(w.chrom, w.window)], q, rows, sidx, k)
                self.cache[key] = Neighbours(ids, dist, mask_hash)
            return self.cache[key]

    return Mismatched


def honest_val(model_path: Path | None, predictor, root: Path, static_hash: str) -> dict:
    """Score on val with the array mask: retrieval from the static index, every hidden owned site."""
    inputs = list(iter_inputs(root, {CHROM: [static_hash]}, "token"))
    windows, extra = load_chromosome(inputs[0])
    tables = extra["retrieval"]
    refs = {(w.chrom, w.window): w.truth["train"] for w in windows}

    class Static:
        def get(self, w, h, split):
            return tables[(h, split)][w.window]

    if model_path is not None:
        ck = torch.load(model_path, weights_only=False)
        model = ImputationModel(ModelConfig(**ck["model_args"]))
        model.load_state_dict(ck["model"])
        acc = evaluate(
            model, windows, {CHROM: static_hash}, Static(), refs, torch.device("cpu"), "val"
        )
        return acc.result()
    acc = Accumulator()
    for w in windows:
        tokens = w.tokens[(static_hash, "val")]
        sites = np.flatnonzero((tokens[0] == MASK) & w.owned)
        if predictor == "af":
            p = np.broadcast_to(w.af[sites], (len(tokens), len(sites)))
        else:
            nb = tables[(static_hash, "val")][w.window]
            batch = WindowBatch(
                w.window, tokens, nb.ids, nb.distances, w.truth["train"], w.af, w.pos, static_hash
            )
            p = predictor.predict(batch)[:, sites]
        t = w.truth["val"][:, sites]
        acc.add(
            np.asarray(p).reshape(-1, 2, len(sites)), t.reshape(-1, 2, len(sites)), w.maf[sites]
        )
    return acc.result()


def beagle_val(root: Path, static_hash: str) -> dict | None:
    """Beagle 5.4 on the same reference (train) and val targets at the array sites, scored on the same
    sites as the models: hidden (untyped) sites, each in the window that owns it."""
    if shutil.which("beagle") is None:
        return None
    import pysam.bcftools

    split = load_split(root / "split/samples.tsv")
    d = root / "beagle"
    d.mkdir(exist_ok=True)
    (d / "train.txt").write_text("\n".join(split["train"]) + "\n")
    (d / "val.txt").write_text("\n".join(split["val"]) + "\n")
    windows, _ = load_chromosome(next(iter_inputs(root, {CHROM: [static_hash]}, "token")))
    typed = np.concatenate([w.pos[w.tokens[(static_hash, "val")][0] != MASK] for w in windows])
    (d / "typed.regions").write_text("".join(f"{CHROM}\t{p}\n" for p in np.unique(typed)))
    panel = str(root / "demo/panel.vcf.gz")
    common = ["-m2", "-M2", "-v", "snps", "-Oz"]
    pysam.bcftools.view(
        "-S", str(d / "train.txt"), *common, "-o", str(d / "ref.vcf.gz"), panel, catch_stdout=False
    )
    pysam.bcftools.view(
        "-S",
        str(d / "val.txt"),
        "-T",
        str(d / "typed.regions"),
        *common,
        "-o",
        str(d / "target.vcf.gz"),
        panel,
        catch_stdout=False,
    )
    t0 = time.perf_counter()
    subprocess.run(
        [
            "beagle",
            f"ref={d / 'ref.vcf.gz'}",
            f"gt={d / 'target.vcf.gz'}",
            f"out={d / 'out'}",
            "nthreads=2",
            "seed=1",
        ],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - t0
    ds = {}
    for line in (
        pysam.bcftools.query("-f", "%POS\t[%DS\t]\n", str(d / "out.vcf.gz"))
        .rstrip("\n")
        .split("\n")
    ):
        f = line.rstrip("\t").split("\t")
        ds[int(f[0])] = np.array(f[1:], dtype=float)
    acc = Accumulator()
    for w in windows:
        sel = np.flatnonzero((w.tokens[(static_hash, "val")][0] == MASK) & w.owned)
        sel = sel[[int(w.pos[s]) in ds for s in sel]]
        if len(sel) == 0:
            continue
        dos = np.stack([ds[int(w.pos[s])] for s in sel], 1)  # (n_samples, S)
        # Beagle reports dosages; r² uses only their sum, so each is split evenly over the two haplotypes.
        acc.add(
            np.stack([dos / 2, dos / 2], 1),
            w.truth["val"][:, sel].reshape(-1, 2, len(sel)),
            w.maf[sel],
        )
    out = {
        k: v for k, v in acc.result().items() if not k.startswith("f1")
    }  # no haplotype calls to score
    out["seconds"] = seconds
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--quick", action="store_true", help="tiny panel and model: a smoke run of the benchmark"
    )
    ap.add_argument("--work", default=str(HERE / "results/train_work"))
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["none", "token-static", "token-schedule", "embedding", "mismatch"],
    )
    a = ap.parse_args()
    setup_logging()
    root = Path(a.work)
    k = 16 if a.quick else 128
    masks = build(root, a.quick, k)
    static, schedule = masks["static"][0], masks["schedule"]
    base = dict(epochs=a.epochs, k=k, threads=2, log_every=0, seed=1)
    if a.quick:
        base.update(preset="tiny", batch_size=8, sites_per_example=64)
    runs = {
        "none": (TrainConfig(**base, mode="none"), [static], None),
        "token-static": (TrainConfig(**base, mode="token"), [static], None),
        "token-schedule": (TrainConfig(**base, mode="token"), schedule, None),
        "embedding": (TrainConfig(**base, mode="embedding"), [static], None),
        "mismatch": (TrainConfig(**base, mode="token"), schedule, mismatched_factory(static, k)),
    }
    rows = []
    for name in a.modes:
        cfg, hashes, factory = runs[name]
        inputs = list(
            iter_inputs(
                root,
                {CHROM: hashes},
                "token" if factory is None and cfg.mode == "token" else "none",
            )
        )
        if (
            factory is not None
        ):  # the static mask's train tokens are needed to build the foreign index
            for inp in inputs:
                inp.tokens[(static, "train")] = str(
                    root / "tokens" / CHROM / static / "train.parquet"
                )
        out = root / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(str(out) + "_state", ignore_errors=True)
        t0 = time.perf_counter()
        summary = train(cfg, inputs, out, str(out) + "_state", retrieval_factory=factory)
        wall = time.perf_counter() - t0
        import pandas as pd

        m = pd.read_csv(out / "metrics.csv")
        score = honest_val(out / "model.pt", None, root, static)
        rows.append(
            {
                "method": name,
                **score,
                "train_val_r2_last": float(m["val_r2"].iloc[-1]),
                "seconds_per_epoch": float(m["seconds"].mean()),
                "haplotype_windows_per_s": float(m["haplotype_windows_per_s"].mean()),
                "best_epoch": summary["best_epoch"],
                "train_wall_s": wall,
            }
        )
    rows.append({"method": "af-only", **honest_val(None, "af", root, static)})
    rows.append(
        {"method": "copying-model", **honest_val(None, CopyingModelPredictor(), root, static)}
    )
    b = beagle_val(root, static)
    if b:
        rows.append({"method": "beagle-5.4", **b})

    cols = ["r2"] + [f"r2_{b}" for b in BIN_LABELS] + ["f1_maf<5%", "f1_maf<1%"]
    print(
        f"\nValidation samples, array sites observed, {len(masks['schedule'])}-mask schedule, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads 2"
    )
    print(f"{'method':<16}" + "".join(f"{c:>12}" for c in cols) + f"{'s/epoch':>10}{'hw/s':>9}")
    for r in rows:
        line = f"{r['method']:<16}" + "".join(f"{r.get(c, float('nan')):>12.4f}" for c in cols)
        line += f"{r.get('seconds_per_epoch', float('nan')):>10.1f}{r.get('haplotype_windows_per_s', float('nan')):>9.1f}"
        print(line)
    out = HERE / "results/train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "epochs": a.epochs,
                "quick": a.quick,
                "torch": torch.__version__,
                "cuda": torch.cuda.is_available(),
            },
            indent=2,
            default=float,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
