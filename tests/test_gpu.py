"""The CUDA paths: training with bf16 autocast, and imputation with the trained model on a GPU.

Skipped where torch sees no CUDA device (CI has none); on a GPU machine: ``pytest -m gpu``.
The GPU must give what the CPU gives, within what bf16 arithmetic allows.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from impute_data import imputed_records
from pipeline_data import build_tiny_results, window_batch
from test_train import FAST, af_only_val_r2, inputs

from ragimpute.impute import impute_target
from ragimpute.predictors import load_predictor
from ragimpute.targets import make_demo_targets
from ragimpute.tokens import MASK
from ragimpute.train import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_results(tmp_path_factory.mktemp("tiny_gpu"))


@pytest.fixture(scope="module")
def cuda_model(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_model")
    summary = train(
        TrainConfig(**{**FAST, "device": "cuda"}), inputs(tiny), out / "model", out / "state"
    )
    return {"dir": out / "model", "summary": summary}


def test_cuda_training_learns(tiny, cuda_model):
    summary = cuda_model["summary"]
    assert summary["device"].startswith("cuda"), summary
    metrics = pd.read_csv(cuda_model["dir"] / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    assert metrics["val_r2"].max() > af_only_val_r2(tiny) + 0.1, metrics["val_r2"].tolist()
    # the checkpoint is device-free: it loads on a machine without a GPU
    ck = torch.load(cuda_model["dir"] / "model.pt", map_location="cpu", weights_only=False)
    assert all(t.device.type == "cpu" for t in ck["model"].values())


def test_cuda_and_cpu_predictions_agree(tiny, cuda_model):
    batch = window_batch(tiny, 1)
    ckpt = str(cuda_model["dir"] / "model.pt")
    p_gpu = load_predictor(ckpt, "cuda").predict(batch)
    p_cpu = load_predictor(ckpt, "cpu").predict(batch)
    hidden = batch.tokens == MASK
    diff = np.abs(p_gpu[hidden] - p_cpu[hidden])
    # bf16 autocast on the GPU, fp32 on the CPU: close, not equal
    assert diff.max() < 0.05 and diff.mean() < 0.005, (diff.max(), diff.mean())
    np.testing.assert_array_equal(p_gpu[~hidden], p_cpu[~hidden])


def test_cuda_imputation_matches_cpu(tiny, cuda_model, tmp_path):
    r = Path(tiny["results"])
    t = tmp_path / "targets"
    t.mkdir()
    make_demo_targets(
        r / "demo/panel.vcf.gz",
        r / "split/samples.tsv",
        r / "windows/20",
        r / "demo/array_sites.tsv",
        "20",
        t / "target.vcf.gz",
        t / "truth.vcf.gz",
    )
    reports, records = {}, {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"{device}.vcf.gz"
        reports[device] = impute_target(
            r,
            "20",
            r / "split/samples.tsv",
            t / "target.vcf.gz",
            "model",
            out,
            aligned_dir=tmp_path / f"aligned_{device}",
            k=8,
            panel_vcf=r / "demo/panel.vcf.gz",
            checkpoint=cuda_model["dir"] / "model.pt",
            device=device,
            reference_splits=("train",),
        )
        records[device] = imputed_records(out)
    assert reports["cuda"]["device"].startswith("cuda")
    assert reports["cuda"]["cuda_max_memory_allocated_mb"] > 0
    g, c = records["cuda"], records["cpu"]
    np.testing.assert_array_equal(g["pos"], c["pos"])
    ds_diff = np.abs(g["ds"] - c["ds"])
    assert ds_diff.max() < 0.1 and ds_diff.mean() < 0.005, (ds_diff.max(), ds_diff.mean())
    # best-guess genotypes: the same almost everywhere (a DS near a boundary may round either way)
    assert (g["gt"].sum(-1) == c["gt"].sum(-1)).mean() > 0.995


def test_more_processes_than_gpus_is_a_clear_error(tiny, tmp_path):
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match="GPU"):
        train(
            TrainConfig(**{**FAST, "device": "cuda", "processes": n + 1}),
            inputs(tiny),
            tmp_path / "m",
            tmp_path / "s",
        )


@pytest.mark.parametrize("renormalise", [False, True])
def test_cuda_engine_equals_the_numba_kernel(renormalise):
    """The copying-model engine on the GPU (``engine.device: cuda``) gives the CPU kernel's P(ALT),
    missing calls and excluded haplotypes included, with composite states that replace each other."""
    from test_engine import random_panel

    from ragimpute.engine import Chunk, Engine, EngineParams

    ref, tgt, pos, cm, typed = random_panel(9, n_typed=70)
    params = EngineParams(
        states=12, candidates=4, min_posterior=0.005 if renormalise else 1e-3,
        renormalise=renormalise, block_sites=16, error=0.01,
    )  # fmt: skip
    engine = Engine(Chunk.from_alleles(ref, typed, cm, pos), params)
    q = np.concatenate([tgt[typed].T, ref[typed].T[:2]]).astype(np.int8)
    q[1, [3, 40]] = -1
    exclude = np.array([[-1, -1]] * (len(q) - 2) + [[0, 1], [0, 1]])
    want, want_stats = engine.impute(q, exclude)
    got, got_stats = engine.impute(q, exclude, device="cuda")
    np.testing.assert_allclose(got, want, atol=5e-5)
    np.testing.assert_allclose(got_stats, want_stats, rtol=1e-4, atol=1e-6)
    assert engine.estimate_error(q, exclude, device="cuda") == pytest.approx(
        engine.estimate_error(q, exclude), rel=1e-3
    )
