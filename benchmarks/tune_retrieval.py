"""Tune the retrieval-only baseline (K, flank, tau, prior) on the VALIDATION split, never on test.

Uses the artifacts of a workflow run (windows, the array mask, its index and the val tokens): every val
haplotype window is queried once for the largest K, then each parameter set is scored on the hidden
sites with the evaluate stage's own metrics (aggregate dosage r² per reference-MAF bin).

    python benchmarks/tune_retrieval.py --results results --chrom 20
Prints a table (best first) and writes benchmarks/results/tune_retrieval.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from ragimpute.baselines import RetrievalPredictor
from ragimpute.evaluate import BIN_LABELS, bin_table, maf_bin, site_scores
from ragimpute.index import HaplotypeIndex, query_block
from ragimpute.predictors import WindowBatch
from ragimpute.tokens import MASK, TokenTable
from ragimpute.windows import WindowedTable, load_windows, sites_with_hash


def load_val(results: Path, chrom: str, k_max: int):
    wdir = results / "windows" / chrom
    sites, _ = sites_with_hash(wdir)
    windows = load_windows(wdir)
    h = json.loads((results / "masks" / chrom / "current.json").read_text())["hashes"][0]
    index = HaplotypeIndex(results / "index" / chrom / h)
    val = TokenTable(results / "tokens" / chrom / h / "val.parquet")
    truth = WindowedTable(wdir / "haplotypes" / "val.parquet", "alleles")
    ref = WindowedTable(wdir / "haplotypes" / "train.parquet", "alleles")
    owner = sites["window"].to_numpy()
    data = []
    for w, (a, b) in enumerate(windows[["first_site", "last_site"]].to_numpy()):
        b += 1
        q = query_block(val, w)
        ids, dist = index.search(q, k_max)
        own = np.flatnonzero(owner[a:b] == w)
        batch = WindowBatch(
            w,
            q.tokens,
            ids,
            dist,
            ref.read(w),
            sites["af"].to_numpy()[a:b],
            sites["pos"].to_numpy()[a:b],
            h,
        )
        data.append((batch, own, a + own, truth.read(w)))
    return sites, data


def score(sites, data, predictor, k):
    maf = sites["maf"].to_numpy()
    ds_parts, truth_parts, maf_parts = [], [], []
    for batch, own, site_idx, truth in data:
        b = WindowBatch(
            batch.window,
            batch.tokens,
            batch.neighbours[:, :k],
            batch.distances[:, :k],
            batch.reference,
            batch.af,
            batch.pos,
            batch.mask_hash,
        )
        p = predictor.predict(b)[:, own]
        hidden = batch.tokens[0, own] == MASK
        ds_parts.append((p[0::2] + p[1::2])[:, hidden].T)
        t = truth[:, own]
        truth_parts.append((t[0::2] + t[1::2])[:, hidden].T.astype(float))
        maf_parts.append(maf[site_idx][hidden])
    ds = np.concatenate(ds_parts)
    y = np.concatenate(truth_parts)
    per = site_scores(ds, np.rint(ds), y)
    per["bin"] = maf_bin(np.concatenate(maf_parts))
    per["info_r2"] = np.nan
    t = bin_table(per).set_index("maf_bin")["r2"]
    return {label: float(t[label]) for label in (*BIN_LABELS, "all")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--chrom", default="20")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--flank", type=int, nargs="+", default=[0, 8, 32])
    ap.add_argument("--decay", type=float, nargs="+", default=[1.0, 0.9])
    ap.add_argument("--tau", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--prior", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--out", default="benchmarks/results/tune_retrieval.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    sites, data = load_val(Path(a.results), a.chrom, max(a.k))
    rows = []
    for k, flank, decay, tau, prior in itertools.product(a.k, a.flank, a.decay, a.tau, a.prior):
        pred = RetrievalPredictor(k=k, flank=flank, decay=decay, tau=tau, prior=prior)
        rows.append({**pred.params(), **score(sites, data, pred, k)})
    rows.sort(key=lambda r: -r["all"])
    cols = ["k", "flank", "decay", "tau", "prior", *BIN_LABELS, "all"]
    print("\t".join(cols))
    for r in rows[:25]:
        print("\t".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "split": "val",
                "results": a.results,
                "chrom": a.chrom,
                "seconds": round(time.perf_counter() - t0, 1),
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"{len(rows)} settings in {time.perf_counter() - t0:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
