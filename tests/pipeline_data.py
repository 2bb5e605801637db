"""A tiny pipeline run (demo panel -> split -> windows -> masks -> tokens -> index -> retrieval -> prior)
for tests.

Built with the package's own stage functions, in the standard results layout, so that training,
imputation and the CLI can be tested without Snakemake.
"""

from __future__ import annotations

import json
from pathlib import Path

from ragimpute.demo import DemoSpec, make_demo
from ragimpute.engine import EngineParams
from ragimpute.index import build_index
from ragimpute.masks import run_mask_stage_dir
from ragimpute.prior import run_prior_stage
from ragimpute.retrieval import retrieve
from ragimpute.split import SPLITS, run_split_stage
from ragimpute.tokens import run_tokenize_stage
from ragimpute.windows import run_window_stage


def build_tiny_results(
    root: Path,
    mask: dict | None = None,
    k: int = 8,
    n_samples: int = 40,
    length_bp: int = 300_000,
    window: tuple[int, int] = (256, 64),
    seed: int = 3,
    split_seed: int = 1,
    prior: bool = True,
) -> dict:
    """Returns {"results": root, "chrom": "20", "hashes": [...]}. ``prior``: with the engine's P(ALT)
    of every split (the prior stage), which the model refines by default (``train.prior``)."""
    root = Path(root)
    spec = DemoSpec(
        seed=seed, n_samples=n_samples, sequence_length=length_bp, array_spacing_bp=2000
    )
    make_demo(spec, root / "demo/panel.vcf.gz", root / "demo/array_sites.tsv")
    run_split_stage(
        root / "demo/panel.vcf.gz",
        root / "split/samples.tsv",
        {"train": 0.7, "val": 0.15, "test": 0.15},
        split_seed,
    )
    chrom = "20"
    wdir = root / "windows" / chrom
    run_window_stage(
        root / "demo/panel.vcf.gz", root / "split/samples.tsv", chrom, window[0], window[1], wdir
    )
    mask = mask or {"strategy": "array"}
    store = root / "masks" / chrom
    hashes = run_mask_stage_dir(
        wdir, mask, store, store / "current.json", root / "demo/array_sites.tsv"
    )
    for h in hashes:
        for s in SPLITS:
            run_tokenize_stage(wdir, store, h, s, root / "tokens" / chrom / h / f"{s}.parquet")
        build_index(root / "tokens" / chrom / h / "train.parquet", root / "index" / chrom / h)
        for s in SPLITS:
            retrieve(
                root / "tokens" / chrom / h / f"{s}.parquet",
                root / "index" / chrom / h,
                k,
                root / "retrieval" / chrom / h / f"{s}.parquet",
            )
        for s in SPLITS if prior else ():
            out = root / "prior" / chrom / h / f"{s}.parquet"
            run_prior_stage(wdir, store, h, s, out, EngineParams())
    assert json.loads((store / "current.json").read_text())["hashes"] == hashes
    return {"results": root, "chrom": chrom, "hashes": hashes}


def window_batch(d: dict, w: int = 1, split: str = "test"):
    """The ``WindowBatch`` a predictor sees for window ``w`` of ``split``, from ``build_tiny_results``
    (with the engine's prior when the prior stage ran)."""
    import numpy as np

    from ragimpute.predictors import WindowBatch
    from ragimpute.prior import PRIOR_COLUMN, SCALE
    from ragimpute.tokens import TokenTable
    from ragimpute.train_data import read_retrieval
    from ragimpute.windows import WindowedTable, load_sites, load_windows

    r, h = Path(d["results"]), d["hashes"][0]
    tokens = TokenTable(r / f"tokens/20/{h}/{split}.parquet")
    nb = read_retrieval(r / f"retrieval/20/{h}/{split}.parquet", tokens)
    sites, wins = load_sites(r / "windows/20"), load_windows(r / "windows/20")
    ref = WindowedTable(r / "windows/20/haplotypes/train.parquet", "alleles")
    a, b = wins.first_site[w], wins.last_site[w] + 1
    prior = None
    if (r / f"prior/20/{h}/{split}.parquet").exists():
        table = WindowedTable(r / f"prior/20/{h}/{split}.parquet", PRIOR_COLUMN)
        prior = table.read(w).view(np.uint16).astype(np.float32) / SCALE
    return WindowBatch(
        w,
        tokens.read(w),
        nb[w].ids,
        nb[w].distances,
        ref.read(w),
        sites.af.to_numpy()[a:b],
        sites.pos.to_numpy()[a:b],
        h,
        prior,
    )
