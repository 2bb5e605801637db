"""Training benchmark: retrieval modes side by side on the demo panel, scored the same honest way.

Runs (each trained from scratch with the same seed and hyper-parameters):
  none           the model without retrieval (ablation)
  token-static   token-space retrieval, one array mask (the default pipeline)
  token-schedule token-space retrieval, E per-epoch masks (array sites with random dropout), each with its
                 own index: dynamic masking that stays consistent
  embedding      embedding-space retrieval, index rebuilt from the current model every epoch
  mismatch       the prototype's defect, reproduced on purpose: the reference index is built once from float
                 token vectors under one fixed (random) mask and queried with haplotypes tokenized under
                 the array mask, in training and in validation alike. Only this script can do that: the
                 package refuses such queries.
Every trained model is then scored on the validation samples with the array mask (array sites observed,
everything else imputed), beside the allele-frequency predictor, the copying model without a network
(the engine's P(ALT), the prior stage's tables, served by ``PriorPredictor``) and Beagle 5.4 when
installed.

    python benchmarks/bench_train.py                       # ~40 min on 2 CPU cores
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
import pandas as pd
import torch
import yaml

from ragimpute.demo import DemoSpec, make_demo
from ragimpute.engine import EngineParams
from ragimpute.index import build_index, search_excluding
from ragimpute.logs import setup_logging
from ragimpute.masks import run_mask_stage_dir
from ragimpute.metrics import BIN_LABELS, Accumulator
from ragimpute.model import ImputationModel, ModelConfig
from ragimpute.predictors import PriorPredictor, WindowBatch
from ragimpute.prior import SCALE as PRIOR_SCALE
from ragimpute.prior import run_prior_stage
from ragimpute.retrieval import retrieve
from ragimpute.split import SPLITS, load_split, run_split_stage
from ragimpute.tokens import MASK, run_tokenize_stage
from ragimpute.train import TrainConfig, evaluate, train
from ragimpute.train_data import Neighbours, iter_inputs, load_chromosome
from ragimpute.windows import run_window_stage

HERE = Path(__file__).resolve().parent
CHROM = "20"


def build(root: Path, quick: bool, k: int) -> dict[str, list[str]]:
    """Demo panel, split, windows and two mask sets (static array; array + dropout schedule) with indexes
    and the engine's prior (the model refines it, as in the pipeline: ``train.prior``)."""
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
        "foreign": {"strategy": "random", "rate": 0.5, "seed": 5},  # only for the mismatched index
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
            if (root / "prior" / CHROM / h / "val.parquet").exists():
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
                run_prior_stage(
                    root / "windows" / CHROM,
                    store,
                    h,
                    s,
                    root / "prior" / CHROM / h / f"{s}.parquet",
                    EngineParams(),
                    threads=2,
                )
    return masks


def mismatched_factory(root: Path, foreign_hash: str, k: int):
    """The prototype's retrieval: float token vectors of the reference under ONE fixed mask, searched by
    queries tokenized under another. Distances then mix masked and observed sites."""
    from ragimpute.tokens import TokenTable

    reference = TokenTable(root / "tokens" / CHROM / foreign_hash / "train.parquet")

    class Mismatched:
        name = "mismatch"

        def __init__(self, data: dict, device=None):
            self.samples = data["samples"]
            self.index: dict[int, faiss.Index] = {}
            self.cache: dict[tuple, Neighbours] = {}

        def _index(self, window: int) -> faiss.Index:
            if window not in self.index:
                x = reference.read(window).astype(np.float32)
                self.index[window] = faiss.IndexFlatL2(x.shape[1])
                self.index[window].add(x)
            return self.index[window]

        def get(self, w, mask_hash: str, split: str) -> Neighbours:
            key = (w.chrom, w.window, mask_hash, split)
            if key not in self.cache:
                q = w.tokens[(mask_hash, split)].astype(np.float32)
                rows = list(np.repeat(np.asarray(self.samples[w.chrom][split], dtype=object), 2))
                own = {s: i for i, s in enumerate(self.samples[w.chrom]["train"])}
                ids, dist = search_excluding(self._index(w.window), q, rows, own, k)
                self.cache[key] = Neighbours(ids, dist, mask_hash)
            return self.cache[key]

    return Mismatched


def honest_val(
    model_path, predictor, root: Path, static_hash: str, provider_factory=None, device="cpu"
) -> dict:
    """Score on val with the array mask, every hidden site in the window that owns it. Neighbours come
    from the array-mask index, or from ``provider_factory`` (the mismatched run, as the prototype did)."""
    windows, extra = load_chromosome(next(iter_inputs(root, {CHROM: [static_hash]}, "token")))
    tables = extra["retrieval"]
    refs = {(w.chrom, w.window): w.truth["train"] for w in windows}

    class Static:
        def get(self, w, h, split):
            return tables[(h, split)][w.window]

    provider = (
        provider_factory({"samples": {CHROM: extra["samples"]}}) if provider_factory else Static()
    )
    if model_path is not None:
        ck = torch.load(model_path, map_location="cpu", weights_only=False)
        model = ImputationModel(ModelConfig(**ck["model_args"]))
        model.load_state_dict(ck["model"])
        model.to(device)
        acc = evaluate(
            model, windows, {CHROM: static_hash}, provider, refs, torch.device(device), "val"
        )
        return acc.result()
    acc = Accumulator()
    for w in windows:
        tokens = w.tokens[(static_hash, "val")]
        sites = np.flatnonzero((tokens[0] == MASK) & w.owned)
        if predictor == "af":
            p = np.broadcast_to(w.af[sites], (len(tokens), len(sites)))
        else:
            nb = provider.get(w, static_hash, "val")
            prior = w.priors[(static_hash, "val")].astype(np.float32) / PRIOR_SCALE
            batch = WindowBatch(
                w.window,
                tokens,
                nb.ids,
                nb.distances,
                w.truth["train"],
                w.af,
                w.pos,
                static_hash,
                prior,
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
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="tiny panel and model: a smoke run of the benchmark"
    )
    ap.add_argument("--work", default=str(HERE / "results/train_work"))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (train.threads)")
    ap.add_argument(
        "--score-device",
        default="cpu",
        help="device that scores the trained models on val (cpu: fp32, the reference; cuda: bf16)",
    )
    ap.add_argument(
        "--no-baselines",
        action="store_true",
        help="score only the trained models (not AF, copying model, Beagle)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a train option in every run, e.g. --set rare_weight=4 --set preset=large",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["none", "token-static", "token-schedule", "embedding", "mismatch"],
    )
    a = ap.parse_args()
    setup_logging()
    root = Path(a.work)
    k = 16 if a.quick else 256
    masks = build(root, a.quick, k)
    static, schedule, foreign = masks["static"][0], masks["schedule"], masks["foreign"][0]
    base = dict(epochs=a.epochs, k=k, threads=a.threads, log_every=0, seed=1)
    if a.quick:
        base.update(preset="tiny", batch_size=8, sites_per_example=64)
    for kv in a.set:
        key, _, value = kv.partition("=")
        base[key] = yaml.safe_load(value)
    mismatch = mismatched_factory(root, foreign, k)
    runs = {  # name: (config, masks per epoch, retrieval tables to read, provider factory)
        "none": (TrainConfig(**base, mode="none"), [static], "none", None),
        "token-static": (TrainConfig(**base, mode="token"), [static], "token", None),
        "token-schedule": (TrainConfig(**base, mode="token"), schedule, "token", None),
        "embedding": (TrainConfig(**base, mode="embedding"), [static], "embedding", None),
        "mismatch": (TrainConfig(**base, mode="token"), [static], "none", mismatch),
    }
    rows = []
    for name in a.modes:
        cfg, hashes, tables, factory = runs[name]
        inputs = list(iter_inputs(root, {CHROM: hashes}, tables))
        out = root / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(str(out) + "_state", ignore_errors=True)
        t0 = time.perf_counter()
        summary = train(cfg, inputs, out, str(out) + "_state", retrieval_factory=factory)
        wall = time.perf_counter() - t0
        m = pd.read_csv(out / "metrics.csv")
        score = honest_val(out / "model.pt", None, root, static, factory, a.score_device)
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
    if not a.no_baselines:
        rows.append({"method": "af-only", **honest_val(None, "af", root, static)})
        # The copying model is the engine, which chooses its own states over the whole chromosome: the
        # old "copying-mismatch" row (the window copying model on mismatched neighbours) has no
        # counterpart any more, and is gone.
        rows.append({"method": "copying-model", **honest_val(None, PriorPredictor(), root, static)})
        b = beagle_val(root, static)
        if b:
            rows.append({"method": "beagle-5.4", **b})
    cols = ["r2"] + [f"r2_{b}" for b in BIN_LABELS] + ["f1_maf<5%", "f1_maf<1%"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"\nValidation samples, array sites observed; device {device}, torch threads {a.threads}, "
        f"{a.epochs} epochs"
    )
    print(f"{'method':<17}" + "".join(f"{c:>11}" for c in cols) + f"{'s/epoch':>9}{'hw/s':>8}")
    for r in rows:
        line = f"{r['method']:<17}" + "".join(f"{r.get(c, float('nan')):>11.4f}" for c in cols)
        line += f"{r.get('seconds_per_epoch', float('nan')):>9.1f}{r.get('haplotype_windows_per_s', float('nan')):>8.1f}"
        print(line)
    out = HERE / "results/train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": rows,
        "epochs": a.epochs,
        "quick": a.quick,
        "torch": torch.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": a.threads,
        "overrides": a.set,
        "score_device": a.score_device,
    }
    out.write_text(json.dumps(payload, indent=2, default=float))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
