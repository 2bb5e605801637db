"""Training on a tiny real pipeline run: it learns, it resumes, it refreshes, it refuses mismatches."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import survivors
from pipeline_data import build_tiny_results, window_batch

from ragimpute.errors import MaskMismatchError
from ragimpute.index import EmbeddingIndex
from ragimpute.metrics import pearson_r2
from ragimpute.predictors import load_predictor
from ragimpute.tokens import ALT, MASK, TokenTable
from ragimpute.train import TrainConfig, train
from ragimpute.train_data import iter_inputs, read_retrieval
from ragimpute.windows import WindowedTable, load_sites, load_windows

pytestmark = pytest.mark.slow

FAST = dict(
    preset="tiny",
    epochs=2,
    batch_size=8,
    lr=3e-3,
    k=8,
    sites_per_example=64,
    threads=1,
    log_every=0,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_results(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_schedule(tmp_path_factory):
    return build_tiny_results(
        tmp_path_factory.mktemp("tiny_sched"),
        mask={"strategy": "array", "array_dropout": 0.2, "seed": 4, "schedule": 2},
    )


def inputs(d, mode="token"):
    return list(iter_inputs(d["results"], {d["chrom"]: d["hashes"]}, mode))


def af_only_val_r2(d):
    """Aggregate dosage r² of the allele-frequency predictor on the hidden, owned val sites: the floor."""
    r = Path(d["results"])
    sites = load_sites(r / "windows/20")
    wins = load_windows(r / "windows/20")
    truth = WindowedTable(r / "windows/20/haplotypes/val.parquet", "alleles")
    tokens = TokenTable(r / f"tokens/20/{d['hashes'][0]}/val.parquet")
    dos, gt = [], []
    for w in range(truth.n_windows):
        a, b = wins.first_site[w], wins.last_site[w] + 1
        sel = np.flatnonzero((tokens.read(w)[0] == MASK) & (sites.window.to_numpy()[a:b] == w))
        t = truth.read(w)[:, sel]
        gt.append((t[0::2] + t[1::2]).ravel())
        dos.append(np.tile(2 * sites.af.to_numpy()[a:b][sel], t.shape[0] // 2))
    return pearson_r2(np.concatenate(dos), np.concatenate(gt))


def test_trains_and_beats_allele_frequency_baseline(tiny, tmp_path):
    out = tmp_path / "model"
    summary = train(TrainConfig(**FAST), inputs(tiny), out, tmp_path / "state")
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    assert (out / "curves.png").stat().st_size > 1000
    floor = af_only_val_r2(tiny)
    assert metrics["val_r2"].max() > floor + 0.1, (metrics["val_r2"].tolist(), floor)
    # The best model is the epoch with the best validation r², recorded as such.
    assert summary["best_epoch"] == int(metrics["val_r2"].idxmax())
    ck = torch.load(out / "model.pt", weights_only=False)
    assert ck["epoch"] == summary["best_epoch"]
    assert ck["val"]["val_r2"] == pytest.approx(metrics["val_r2"].max())
    assert ck["mask_hashes"] == {"20": tiny["hashes"]} and ck["train_config"]["seed"] == 1
    for col in (
        "train_loss",
        "val_f1",
        "val_f1_maf<5%",
        "val_f1_maf<1%",
        "val_r2_0-0.5%",
        "val_r2_5-50%",
        "val_topk_hamming",
        "val_best_neighbour_correct",
        "seconds",
        "haplotype_windows_per_s",
    ):
        assert col in metrics.columns


def _val_r2_by_bin(d, pred) -> dict[int, float]:
    """Aggregate dosage r² of ``pred`` on the hidden, owned val sites of each MAF bin, computed
    apart from training: the imputation side's predictor and batches, numpy's r²."""
    from ragimpute.metrics import maf_bin

    r = Path(d["results"])
    sites, wins = load_sites(r / "windows/20"), load_windows(r / "windows/20")
    truth = WindowedTable(r / "windows/20/haplotypes/val.parquet", "alleles")
    dos, gt, bins = [], [], []
    for w in range(truth.n_windows):
        batch = window_batch(d, w, "val")
        a, b = wins.first_site[w], wins.last_site[w] + 1
        own = sites.window.to_numpy()[a:b] == w
        sel = np.flatnonzero((batch.tokens[0] == MASK) & own)
        p, t = pred.predict(batch)[:, sel], truth.read(w)[:, sel]
        af = sites.af.to_numpy()[a:b][sel]
        dos.append((p[0::2] + p[1::2]).ravel())
        gt.append((t[0::2] + t[1::2]).ravel())
        bins.append(np.tile(maf_bin(np.minimum(af, 1 - af)), t.shape[0] // 2))
    dos, gt, bins = np.concatenate(dos), np.concatenate(gt), np.concatenate(bins)
    return {k: pearson_r2(dos[bins == k], gt[bins == k]) for k in np.unique(bins)}


def test_the_share_of_the_correction_per_maf_bin_is_the_best_on_validation(tiny, tmp_path):
    """model.pt applies, in each MAF bin, the share of the network's correction whose validation
    r² over that bin is the best, as computed apart from training for every share."""
    from ragimpute.metrics import BIN_LABELS
    from ragimpute.train import CORRECTION_SCALES

    out = tmp_path / "model"
    summary = train(TrainConfig(**FAST), inputs(tiny), out, tmp_path / "state")
    choice = summary["correction_by_maf"]
    pred = load_predictor(str(out / "model.pt"), "cpu")  # its weights' digest covers the scale
    chosen = pred.model.correction_scale.tolist()
    assert chosen == [choice["scale"][lab] for lab in BIN_LABELS]
    assert json.loads((out / "train.json").read_text())["correction_by_maf"] == choice

    by_scale = {}
    for scale in CORRECTION_SCALES:
        pred.model.correction_scale.fill_(scale)
        by_scale[scale] = _val_r2_by_bin(tiny, pred)
    present = sorted(by_scale[1.0])
    assert len(present) >= 2, present  # the tiny panel has sites in more than one bin
    for k in present:
        label = BIN_LABELS[k]
        for scale in CORRECTION_SCALES:
            got = choice["val_r2_by_scale"][label][str(scale)]
            assert got == pytest.approx(by_scale[scale][k], abs=1e-5), (label, scale)
        best = max((by_scale[s][k], s) for s in CORRECTION_SCALES)[1]
        assert chosen[k] == best, (label, {s: by_scale[s][k] for s in CORRECTION_SCALES})
    for k in set(range(len(BIN_LABELS))) - set(present):
        assert chosen[k] == 1.0  # no validation site: as trained
    # the network moved the prior: the shares are not all alike in their r²
    assert len({round(by_scale[s][present[0]], 6) for s in CORRECTION_SCALES}) > 1

    pred.model.correction_scale.copy_(torch.tensor(chosen))
    after = _val_r2_by_bin(tiny, pred)
    for k in present:
        assert choice["val_after"][f"r2_{BIN_LABELS[k]}"] == pytest.approx(after[k], abs=1e-5)
        assert after[k] >= by_scale[1.0][k] - 1e-12


def test_the_share_of_the_correction_is_chosen_again_without_retraining(tiny, tmp_path, caplog):
    """``correction_by_maf`` is applied to the best model after training: turning it off resumes
    the finished run (no epoch trained again) and writes the same weights with the whole
    correction everywhere."""
    caplog.set_level("INFO", logger="ragimpute")
    out, state = tmp_path / "model", tmp_path / "state"
    cfg = {**FAST, "epochs": 1}
    train(TrainConfig(**cfg), inputs(tiny), out, state)
    chosen = torch.load(out / "model.pt", weights_only=False)
    caplog.clear()
    summary = train(TrainConfig(**cfg, correction_by_maf=False), inputs(tiny), out, state)
    assert "resuming from" in caplog.text and "epoch 0:" not in caplog.text
    assert summary["correction_by_maf"] is None
    whole = torch.load(out / "model.pt", weights_only=False)
    assert whole["model"]["correction_scale"].tolist() == [1.0] * 4
    for name, w in chosen["model"].items():
        if name != "correction_scale":
            torch.testing.assert_close(whole["model"][name], w, rtol=0, atol=0)
    load_predictor(str(out / "model.pt"), "cpu")  # its digest is right


def test_predictor_keeps_observed_alleles_and_returns_probabilities(tiny, tmp_path):
    out = tmp_path / "model"
    train(TrainConfig(**{**FAST, "epochs": 1}), inputs(tiny), out, tmp_path / "state")
    pred = load_predictor(str(out / "model.pt"), "cpu")
    batch = window_batch(tiny, 1)
    p = pred.predict(batch)
    assert p.shape == batch.tokens.shape and ((p >= 0) & (p <= 1)).all()
    observed = batch.tokens != MASK
    np.testing.assert_array_equal(p[observed], (batch.tokens[observed] == ALT).astype(np.float32))


def _run_training_cli(results, hashes_note, out, state, epochs, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "ragimpute.cli",
        "train",
        "--results",
        str(results),
        "--out",
        str(out),
        "--state",
        str(state),
    ]
    for k, v in {**FAST, "epochs": epochs}.items():
        cmd += ["--set", f"{k}={v}"]
    cmd += list(extra)
    return cmd


def test_resume_after_kill_continues_from_the_saved_epoch(tiny, tmp_path):
    # Uninterrupted reference run.
    ref = train(
        TrainConfig(**{**FAST, "epochs": 3}), inputs(tiny), tmp_path / "ref", tmp_path / "ref_state"
    )
    ref_metrics = pd.read_csv(tmp_path / "ref/metrics.csv")

    state = tmp_path / "state"
    cmd = _run_training_cli(tiny["results"], None, tmp_path / "out", state, 3)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = state / "ckpt.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_epoch = torch.load(ckpt, weights_only=False)["epoch"]
    assert saved_epoch < 2, "the run finished before it could be killed; nothing was resumed"

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"resuming from {ckpt}: epoch {saved_epoch} done" in res.stderr
    metrics = pd.read_csv(tmp_path / "out/metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2]
    # Seeds derive from (seed, epoch), so the resumed run ends where the uninterrupted one did.
    np.testing.assert_allclose(metrics["val_r2"], ref_metrics["val_r2"], rtol=1e-4)
    assert json.loads((tmp_path / "out/train.json").read_text())["best_epoch"] == ref["best_epoch"]


def _flip_a_weight_byte(path: Path) -> None:
    """Corrupt a saved model in place the way a bad disk does: one byte of a weight tensor changes
    and the archive still loads (torch.load does not check its CRCs)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    weights = next(v for v in ck["model"].values() if v.numel() >= 16 and v.abs().sum() > 0)
    raw, data = weights.contiguous().numpy().tobytes(), bytearray(path.read_bytes())
    at = data.find(raw) + len(raw) // 2
    assert at > len(raw) // 2, "the tensor's bytes were not found in the file"
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    torch.load(path, map_location="cpu", weights_only=False)  # still loads


def test_a_corrupted_model_is_refused_at_imputation(tiny, tmp_path):
    from ragimpute.errors import ArtifactError

    train(TrainConfig(**{**FAST, "epochs": 1}), inputs(tiny), tmp_path / "m", tmp_path / "s")
    _flip_a_weight_byte(tmp_path / "m/model.pt")
    with pytest.raises(ArtifactError, match="weights do not match the digest it records") as e:
        load_predictor(str(tmp_path / "m/model.pt"), "cpu")
    assert "--forcerun train" in str(e.value)


def test_a_model_of_another_reference_is_refused_at_imputation(tiny, tmp_path, capsys, caplog):
    """model.pt records the site list and the train haplotypes' digest it was trained on. Imputation
    on that reference works (a copied results directory too); on other sites, on the same sites and
    samples from another panel file, or with a model.pt that records none, it is refused, naming the
    file and what to run (``ragimpute impute --checkpoint`` as the library)."""
    from impute_data import other_panel_results

    from ragimpute.cli import main
    from ragimpute.errors import ArtifactError
    from ragimpute.impute import impute_target
    from ragimpute.targets import make_demo_targets

    train(TrainConfig(**{**FAST, "epochs": 1}), inputs(tiny), tmp_path / "m", tmp_path / "s")
    model = tmp_path / "m/model.pt"
    r = Path(tiny["results"])
    panel, split, t = r / "demo/panel.vcf.gz", r / "split/samples.tsv", tmp_path / "targets"
    make_demo_targets(panel, split, r / "windows/20", r / "demo/array_sites.tsv", "20",
                      t / "target.vcf.gz", t / "truth.vcf.gz")  # fmt: skip

    def impute(results, name, checkpoint=model):
        return impute_target(results, "20", split, t / "target.vcf.gz", "model", tmp_path / name,
                             k=8, panel_vcf=panel, checkpoint=checkpoint, device="cpu",
                             reference_splits=("train",))  # fmt: skip

    impute(r, "same.vcf.gz")
    copied = tmp_path / "copied"
    shutil.copytree(r, copied)
    impute(copied, "copied.vcf.gz")
    other = other_panel_results(r, panel, split, tmp_path / "other", (256, 64), drop=5)
    with pytest.raises(ArtifactError, match=r"trained on other sites.*--forcerun train"):
        impute(other, "other.vcf.gz")
    ck = torch.load(model, weights_only=False)
    del ck["reference"]  # as an earlier version wrote it
    torch.save(ck, tmp_path / "old.pt")
    with pytest.raises(ArtifactError, match=r"old.pt records no reference.*--forcerun train"):
        impute(r, "old.vcf.gz", checkpoint=tmp_path / "old.pt")
    # the run's best.pt of an earlier version is not copied to model.pt again: the rerun the message
    # names trains afresh, and its model.pt records the reference
    best = torch.load(tmp_path / "s/best.pt", weights_only=False)
    reference = best.pop("reference")
    torch.save(best, tmp_path / "s/best.pt")
    caplog.set_level("WARNING", logger="ragimpute")
    train(TrainConfig(**{**FAST, "epochs": 1}), inputs(tiny), tmp_path / "m2", tmp_path / "s")
    assert "records no reference it was trained on" in caplog.text
    assert torch.load(tmp_path / "m2/model.pt", weights_only=False)["reference"] == reference
    foreign = other_panel_results(r, panel, split, tmp_path / "foreign", (256, 64))
    args = ["impute", "--results", str(foreign), "--chrom", "20", "--split", str(split),
            "--target", str(t / "target.vcf.gz"), "--method", "model", "--checkpoint", str(model),
            "--reference", "train", "-k", "8", "--out", str(tmp_path / "foreign.vcf.gz")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{model} was trained on other reference haplotypes" in err
    assert "--forcerun train" in err and not (tmp_path / "foreign.vcf.gz").exists()


def test_training_refuses_tokens_and_neighbours_of_other_haplotypes(tiny, tmp_path):
    """Windows re-made from another panel file of the same samples and sites leave the tokens and
    the retrieval tables of the old haplotypes: their mask, site list and samples still match.
    Training refuses them, naming the table and the rerun."""
    from impute_data import other_panel_results

    from ragimpute.errors import ArtifactError
    from ragimpute.split import SPLITS
    from ragimpute.tokens import run_tokenize_stage
    from ragimpute.train_data import load_chromosome

    r = Path(tiny["results"])
    res = other_panel_results(r, r / "demo/panel.vcf.gz", r / "split/samples.tsv", tmp_path,
                              (256, 64))  # fmt: skip
    # the priors of the old haplotypes are refused as well: their own test, below
    (inp,) = inputs({**tiny, "results": res})
    inp = replace(inp, priors={})
    with pytest.raises(ArtifactError, match=r"made from other haplotypes.*--forcerun tokenize"):
        load_chromosome(inp)
    w, store = res / "windows/20", res / "masks/20"
    for h in tiny["hashes"]:
        for s in SPLITS:
            run_tokenize_stage(w, store, h, s, res / "tokens/20" / h / f"{s}.parquet")
    with pytest.raises(ArtifactError, match=r"index of other haplotypes.*--forcerun tokenize"):
        load_chromosome(inp)


def test_training_refuses_priors_of_other_haplotypes(tiny, tmp_path):
    """A prior table records the digests of the haplotypes it was computed for (its rows) and from
    (the train split). Windows re-made from another panel file of the same samples and sites leave
    the priors of the old haplotypes, whose mask, site list and samples still match; training
    refuses them, and a table copying from another train split, and one of an earlier version
    (which records no digest), naming the table and the rerun."""
    from impute_data import other_panel_results

    from ragimpute.errors import ArtifactError
    from ragimpute.prior import PRIOR_COLUMN, REFERENCE_DIGEST_KEY
    from ragimpute.train_data import load_chromosome
    from ragimpute.windows import DIGEST_KEY, write_windowed

    r = Path(tiny["results"])
    (inp,) = inputs(tiny)
    load_chromosome(inp)  # the run's own priors pass
    res = other_panel_results(r, r / "demo/panel.vcf.gz", r / "split/samples.tsv", tmp_path,
                              (256, 64))  # fmt: skip
    (other,) = inputs({**tiny, "results": res})
    # without the tokens and neighbours, which are refused first (the test above)
    with pytest.raises(ArtifactError, match=r"computed from other haplotypes.*--forcerun prior"):
        load_chromosome(replace(other, tokens={}, retrieval={}))
    key = (tiny["hashes"][0], "val")
    table = WindowedTable(inp.priors[key], PRIOR_COLUMN)
    for name, recorded in {
        "reference": {**table.metadata, REFERENCE_DIGEST_KEY: "0" * 16},
        "old": {
            k: v for k, v in table.metadata.items() if k not in (DIGEST_KEY, REFERENCE_DIGEST_KEY)
        },
    }.items():
        path = tmp_path / f"{name}.parquet"
        blocks = (block for _, block in table)
        write_windowed(path, blocks, PRIOR_COLUMN, table.samples, recorded, value_type=np.uint16)
        why = "digest 0000000000000000" if name == "reference" else "none: written by an earlier"
        with pytest.raises(
            ArtifactError, match=rf"{name}.parquet was computed .*{why}.*--forcerun prior"
        ):
            load_chromosome(replace(inp, priors={**inp.priors, key: str(path)}))


@pytest.mark.parametrize("damage", ["checkpoint flipped", "best truncated", "best missing"])
def test_a_damaged_checkpoint_or_best_model_trains_afresh(tiny, tmp_path, caplog, damage):
    """A finished run's state, damaged: resuming it would end by copying a bad best.pt to model.pt
    (and a rebuild hint that loops), or continue from corrupted weights. It starts afresh, says why,
    and ends with the model an undamaged run makes. A best.pt missing where the checkpoint's own
    weights are the best model (what a kill between the two writes leaves) is written again."""
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    train(cfg, inputs(tiny), tmp_path / "m", tmp_path / "s")
    good = (tmp_path / "m/model.pt").read_bytes()
    state = tmp_path / "s"
    if damage == "checkpoint flipped":
        _flip_a_weight_byte(state / "ckpt.pt")
    elif damage == "best truncated":
        (state / "best.pt").write_bytes((state / "best.pt").read_bytes()[:5000])
    else:
        (state / "best.pt").unlink()
    caplog.set_level("INFO", logger="ragimpute")
    train(cfg, inputs(tiny), tmp_path / "m2", state)
    why = {"checkpoint flipped": "tensors do not match the digest", "best truncated":
           "best.pt is unreadable", "best missing": "best.pt, the best model of"}[damage]  # fmt: skip
    assert why in caplog.text
    if damage == "best missing":  # the checkpoint's own weights are the best model: no loss
        assert "written again from the checkpoint's weights" in caplog.text
        assert "training starts afresh" not in caplog.text
    else:
        assert "training starts afresh" in caplog.text
    assert (tmp_path / "m2/model.pt").read_bytes() == good


def test_changed_configuration_does_not_resume_a_foreign_checkpoint(tiny, tmp_path, caplog):
    train(TrainConfig(**{**FAST, "epochs": 1}), inputs(tiny), tmp_path / "a", tmp_path / "state")
    caplog.set_level("WARNING", logger="ragimpute")
    train(
        TrainConfig(**{**FAST, "epochs": 1, "lr": 1e-3}),
        inputs(tiny),
        tmp_path / "b",
        tmp_path / "state",
    )
    assert "belongs to another configuration" in caplog.text
    assert list(pd.read_csv(tmp_path / "b/metrics.csv")["epoch"]) == [0]


def test_changed_split_trains_afresh_and_says_why(tiny, tmp_path, caplog):
    """Issue 11.1: a checkpoint of other data (here: another split, so test samples of the new split
    were training samples of the old one) is not resumed; the log says what changed."""
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    state = tmp_path / "state"
    train(cfg, inputs(tiny), tmp_path / "a", state)
    other = build_tiny_results(tmp_path / "seed2", split_seed=2)
    caplog.set_level("INFO", logger="ragimpute")
    train(cfg, inputs(other), tmp_path / "b", state)
    assert "resuming" not in caplog.text
    assert "belongs to another configuration or other inputs" in caplog.text
    assert "chromosome 20: the train split changed" in caplog.text
    assert "the val split changed" in caplog.text and "starts afresh" in caplog.text
    assert list(pd.read_csv(tmp_path / "b/metrics.csv")["epoch"]) == [0]  # an epoch ran
    # The model is the one a fresh run on the new split makes, not the old one.
    train(cfg, inputs(other), tmp_path / "fresh", tmp_path / "fresh_state")
    model = (tmp_path / "b/model.pt").read_bytes()
    assert model == (tmp_path / "fresh/model.pt").read_bytes()
    assert model != (tmp_path / "a/model.pt").read_bytes()


def test_same_data_in_another_directory_resumes(tiny, tmp_path, caplog):
    """The identity covers contents, not paths: a copied results directory is the same run."""
    import shutil

    cfg = TrainConfig(**{**FAST, "epochs": 1})
    train(cfg, inputs(tiny), tmp_path / "a", tmp_path / "state")
    copy = shutil.copytree(tiny["results"], tmp_path / "copy")
    caplog.set_level("INFO", logger="ragimpute")
    train(cfg, inputs({**tiny, "results": copy}), tmp_path / "b", tmp_path / "state")
    assert "resuming from" in caplog.text and "starts afresh" not in caplog.text
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()


def test_a_changed_table_is_named(tiny, tmp_path, caplog):
    """The same split and sites, but other retrieval neighbours: the log names the table."""
    import shutil

    cfg = TrainConfig(**{**FAST, "epochs": 1})
    train(cfg, inputs(tiny), tmp_path / "a", tmp_path / "state")
    copy = shutil.copytree(tiny["results"], tmp_path / "copy")
    h = tiny["hashes"][0]
    from ragimpute.retrieval import retrieve

    for s in ("train", "val"):
        retrieve(copy / f"tokens/20/{h}/{s}.parquet", copy / f"index/20/{h}", 6,
                 copy / f"retrieval/20/{h}/{s}.parquet")  # fmt: skip
    caplog.set_level("INFO", logger="ragimpute")
    # k as the tables now hold (another k is refused: model.pt records it for imputation)
    train(TrainConfig(**{**FAST, "epochs": 1, "k": 6}), inputs({**tiny, "results": copy}),
          tmp_path / "b", tmp_path / "state")  # fmt: skip
    assert f"contents changed: retrieval/{h}/train, retrieval/{h}/val" in caplog.text
    assert "split changed" not in caplog.text


def test_schedule_uses_each_epochs_mask(tiny_schedule, tmp_path):
    d = tiny_schedule
    assert len(d["hashes"]) == 2
    train(TrainConfig(**{**FAST, "epochs": 2}), inputs(d), tmp_path / "m", tmp_path / "s")
    m = pd.read_csv(tmp_path / "m/metrics.csv")
    assert list(m["mask_hashes"]) == d["hashes"]


def test_embedding_mode_refreshes_the_index_and_its_hash_changes(tiny, tmp_path):
    summary = train(
        TrainConfig(**{**FAST, "mode": "embedding", "epochs": 2}),
        inputs(tiny, "embedding"),
        tmp_path / "m",
        tmp_path / "s",
    )
    refreshes = summary["refreshes"]
    assert [r["epoch"] for r in refreshes] == [0, 1]
    assert refreshes[0]["index_hash"] != refreshes[1]["index_hash"]
    assert refreshes[0]["model_hash"] != refreshes[1]["model_hash"]
    assert all(r["seconds"] >= 0 for r in refreshes)


def test_refresh_every_n_steps(tiny, tmp_path):
    summary = train(
        TrainConfig(**{**FAST, "mode": "embedding", "epochs": 1, "refresh_every": 3}),
        inputs(tiny, "embedding"),
        tmp_path / "m",
        tmp_path / "s",
    )
    assert len(summary["refreshes"]) >= 2
    assert len({r["index_hash"] for r in summary["refreshes"]}) == len(summary["refreshes"])


def test_no_retrieval_ablation_trains(tiny, tmp_path):
    train(
        TrainConfig(**{**FAST, "mode": "none", "epochs": 1}),
        inputs(tiny, "none"),
        tmp_path / "m",
        tmp_path / "s",
    )
    ck = torch.load(tmp_path / "m/model.pt", weights_only=False)
    assert ck["model_args"]["use_retrieval"] is False


def test_retrieval_table_of_another_mask_is_refused(tiny, tiny_schedule):
    tokens = TokenTable(Path(tiny["results"]) / f"tokens/20/{tiny['hashes'][0]}/val.parquet")
    other = (
        Path(tiny_schedule["results"]) / f"retrieval/20/{tiny_schedule['hashes'][0]}/val.parquet"
    )
    with pytest.raises(MaskMismatchError, match="re-run the retrieve stage"):
        read_retrieval(other, tokens)


def test_embedding_index_refuses_other_model_state_or_mask():
    rng = np.random.default_rng(0)
    idx = EmbeddingIndex(
        "a" * 16, "m1", rng.random((10, 4)).astype(np.float32), [f"s{i}" for i in range(5)]
    )
    q = rng.random((2, 4)).astype(np.float32)
    ids, _ = idx.search(q, ["s0", "x"], 3, "a" * 16, "m1")
    assert not np.isin(ids[0], [0, 1]).any()  # both haplotypes of the query's own sample excluded
    with pytest.raises(MaskMismatchError, match="refresh the index"):
        idx.search(q, ["x", "y"], 3, "a" * 16, "m2")
    with pytest.raises(MaskMismatchError):
        idx.search(q, ["x", "y"], 3, "b" * 16, "m1")


def test_training_queries_never_see_their_own_sample(tiny):
    r = Path(tiny["results"])
    h = tiny["hashes"][0]
    tokens = TokenTable(r / f"tokens/20/{h}/train.parquet")
    nb = read_retrieval(r / f"retrieval/20/{h}/train.parquet", tokens)
    for w, n in nb.items():
        own = np.arange(tokens.n_haplotypes) // 2
        assert not (n.ids // 2 == own[:, None]).any(), f"window {w}"


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test written for Linux")
def test_distributed_training_with_two_cpu_processes(tiny, tmp_path):
    from ragimpute.logs import setup_logging

    setup_logging(str(tmp_path / "train.log"))  # as Snakemake's log: (smk.run)
    summary = train(
        TrainConfig(**{**FAST, "epochs": 1, "processes": 2, "device": "cpu"}),
        inputs(tiny),
        tmp_path / "m",
        tmp_path / "s",
    )
    assert summary["processes"] == 2
    single = train(
        TrainConfig(**{**FAST, "epochs": 1, "device": "cpu"}),
        inputs(tiny),
        tmp_path / "m1",
        tmp_path / "s1",
    )
    m2 = pd.read_csv(tmp_path / "m/metrics.csv")
    assert np.isfinite(m2["val_r2"]).all()
    # Each process takes half the batches; metrics are reduced over both, so all haplotypes are counted.
    m1 = pd.read_csv(tmp_path / "m1/metrics.csv")
    assert m2["train_n_5-50%"].iloc[0] == pytest.approx(m1["train_n_5-50%"].iloc[0], rel=0.2)
    assert single["processes"] == 1
    assert os.path.exists(tmp_path / "m/model.pt")
    # the spawned processes log to the job's log too (the lead's epoch lines; the others only warn)
    text = (tmp_path / "train.log").read_text()
    assert "distributed training: 2 processes" in text
    assert text.count("epoch 0: train loss") == 2  # the spawned lead's, then the single run's


def test_the_train_script_runs_only_as_the_main_module():
    """train.processes > 1 spawns processes that import the rule's script again as their main module
    (``__mp_main__``), where Snakemake's ``snakemake`` object does not exist: it must do nothing."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "workflow/scripts/train.py"
    runpy.run_path(str(script), run_name="__mp_main__")  # a NameError before the guard
    with pytest.raises(NameError, match="snakemake"):
        runpy.run_path(str(script), run_name="__main__")


def test_sampled_epochs_train_the_examples_asked_for_from_several_windows(tiny, tmp_path):
    """Issue 12: train.examples_per_epoch haplotype windows per epoch, drawn across the windows, read
    through a cache that holds train.cache_windows of them."""
    cfg = TrainConfig(**{**FAST, "examples_per_epoch": 40, "cache_windows": 2})
    summary = train(cfg, inputs(tiny), tmp_path / "m", tmp_path / "s")
    m = pd.read_csv(tmp_path / "m/metrics.csv")
    assert list(m["examples"]) == [40, 40]  # every tiny window hides sites: no batch is skipped
    assert (m["windows_read"] >= 2).all() and (m["cache_peak_windows"] <= 2).all()
    assert (m["haplotype_windows_per_s"] > 0).all() and (m["peak_rss_mb"] > 0).all()
    assert summary["config"]["examples_per_epoch"] == 40
    ck = torch.load(tmp_path / "m/model.pt", weights_only=False)
    assert (
        ck["train_config"]["examples_per_epoch"] == 40 and "cache_windows" not in ck["train_config"]
    )


def test_the_window_cache_changes_no_sampled_epoch(tiny, tmp_path):
    """With examples_per_epoch the batches were grouped by the cache's size, so that lowering
    cache_windows (after running out of memory, say) trained another model under the same
    fingerprint; the grouping is now fixed, and the cache only reads windows again."""
    cfg = {**FAST, "epochs": 1, "examples_per_epoch": 40}
    train(TrainConfig(**cfg, cache_windows=8), inputs(tiny), tmp_path / "all", tmp_path / "s_all")
    train(TrainConfig(**cfg, cache_windows=1), inputs(tiny), tmp_path / "one", tmp_path / "s_one")
    m = pd.read_csv(tmp_path / "one/metrics.csv")
    assert m["cache_peak_windows"].max() == 1
    assert (tmp_path / "one/model.pt").read_bytes() == (tmp_path / "all/model.pt").read_bytes()


def test_the_window_cache_bounds_memory_and_changes_nothing(tiny, tmp_path):
    """One window held at a time (the tiny run has 4): every window is read, none stays, and the
    model is byte for byte the one of a cache that holds them all."""
    cfg = {**FAST, "epochs": 1}
    train(TrainConfig(**cfg), inputs(tiny), tmp_path / "all", tmp_path / "s_all")
    train(TrainConfig(**cfg, cache_windows=1), inputs(tiny), tmp_path / "one", tmp_path / "s_one")
    m = pd.read_csv(tmp_path / "one/metrics.csv")
    assert m["cache_peak_windows"].max() == 1 and m["windows_read"].min() > 4
    assert (tmp_path / "one/model.pt").read_bytes() == (tmp_path / "all/model.pt").read_bytes()


def test_training_data_holds_at_most_the_cache(tiny):
    from ragimpute.train_data import load_chromosome, load_training_data

    data = load_training_data(inputs(tiny), cache_windows=2)
    h = tiny["hashes"][0]
    for w in data.windows:  # a pass over everything, as validation makes
        for split in ("train", "val"):
            assert w.tokens[(h, split)].shape == w.priors[(h, split)].shape
            assert data.tables["20"][(h, split)][w.window].ids.shape[0] == w.truth[split].shape[0]
        assert data.cache.held <= 2
    assert data.cache.peak == 2 and data.cache.loads == len(data.windows) == 4
    # the digests, made window by window, do not depend on what the cache holds
    _, extra = load_chromosome(inputs(tiny)[0])
    assert extra["identity"] == data.identity["20"]


def test_retrieval_tables_are_read_a_window_at_a_time_whatever_their_row_groups(tiny, tmp_path):
    import pyarrow.parquet as pq

    r, h = Path(tiny["results"]), tiny["hashes"][0]
    path = r / f"retrieval/20/{h}/val.parquet"
    assert pq.ParquetFile(path).num_row_groups == 4  # one per window, as the retrieve stage writes
    tokens = TokenTable(r / f"tokens/20/{h}/val.parquet")
    odd = tmp_path / "odd.parquet"  # an earlier version's table: other row groups
    pq.write_table(pq.read_table(path), odd, row_group_size=7)
    a, b = read_retrieval(path, tokens), read_retrieval(odd, tokens)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for w in a:
        np.testing.assert_array_equal(a[w].ids, b[w].ids)
        np.testing.assert_array_equal(a[w].distances, b[w].distances)


def test_a_sampled_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    """Batches are drawn from the epoch's own generator: a run that fails in epoch 1 and is run again
    ends with the weights of an uninterrupted one."""
    import ragimpute.train as train_module

    cfg = TrainConfig(**{**FAST, "epochs": 3, "examples_per_epoch": 48, "cache_windows": 2})
    train(cfg, inputs(tiny), tmp_path / "ref", tmp_path / "ref_state")
    real = train_module._train_epoch

    def fail_in_epoch_1(run, ep):
        if ep.number == 1:
            raise KeyboardInterrupt("killed")
        real(run, ep)

    monkeypatch.setattr(train_module, "_train_epoch", fail_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, inputs(tiny), tmp_path / "out", tmp_path / "state")
    assert torch.load(tmp_path / "state/ckpt.pt", weights_only=False)["epoch"] == 0
    monkeypatch.setattr(train_module, "_train_epoch", real)
    train(cfg, inputs(tiny), tmp_path / "out", tmp_path / "state")
    assert (tmp_path / "out/model.pt").read_bytes() == (tmp_path / "ref/model.pt").read_bytes()
    ref, out = pd.read_csv(tmp_path / "ref/metrics.csv"), pd.read_csv(tmp_path / "out/metrics.csv")
    np.testing.assert_array_equal(out["val_r2"], ref["val_r2"])


def test_cli_train_takes_k_from_the_configs_retrieval_section(tiny, tmp_path, capfd):
    """`ragimpute train --config` read only the config's train section, so the model recorded
    k = 256 (the default) after training on tables of 8 neighbours; imputation then asked for 256
    neighbours ("the reference holds 64 haplotypes") or fed the model more than it trained on. The
    config's retrieval.k is now taken, as the workflow passes it, and a k that does not match the
    retrieval tables is refused, naming the table and the fix."""
    import torch
    import yaml

    from ragimpute.cli import main

    res = str(tiny["results"])
    train = {"preset": "tiny", "epochs": 1, "max_steps_per_epoch": 2, "batch_size": 4,
             "sites_per_example": 32, "log_every": 0}  # fmt: skip
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"retrieval": {"k": 8}, "train": train}))
    out = tmp_path / "model"
    args = ["train", "--results", res, "--config", str(cfg), "--state", str(tmp_path / "s")]
    assert main([*args, "--out", str(out)]) == 0
    ck = torch.load(out / "model.pt", weights_only=False)
    assert ck["train_config"]["k"] == 8
    # without retrieval.k: the default 256 does not match the tables' 8
    cfg.write_text(yaml.safe_dump({"train": train}))
    assert main([*args, "--out", str(tmp_path / "other")]) == 1
    text = capfd.readouterr().err
    assert (
        "retrieval/20/" in text and "holds 8 neighbours per query, but training is set to" in text
    )
    assert "k=256" in text and "--set k=8" in text
    assert not (tmp_path / "other" / "model.pt").exists()


def test_a_retrieval_table_cut_short_is_named_before_training(tmp_path):
    """The k check read each retrieval table's schema raw: a table cut short was a pyarrow
    traceback, not the file and the rerun that makes it."""
    from types import SimpleNamespace

    from ragimpute.errors import ArtifactError
    from ragimpute.train import check_retrieval_k

    path = tmp_path / "val.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 100)
    inputs = [SimpleNamespace(retrieval={("h", "val"): path})]
    with pytest.raises(ArtifactError) as e:
        check_retrieval_k(SimpleNamespace(k=8), inputs)
    assert str(path) in str(e.value) and "--forcerun retrieve" in str(e.value)


class _Killed(BaseException):
    """Stands for a SIGKILL: no ``except Exception`` catches it."""


def test_a_kill_between_the_checkpoint_and_the_best_model_resumes(
    tiny, tmp_path, monkeypatch, caplog
):
    """An epoch that improves writes two files, ckpt.pt and best.pt. A kill after the first (or
    while the second is written: both are written whole) must not cost the epochs already done:
    the run resumes, and ends with the model an uninterrupted run makes."""
    import ragimpute.checkpoint as checkpoint

    cfg = TrainConfig(**FAST)
    ref = train(cfg, inputs(tiny), tmp_path / "ref", tmp_path / "ref_state")
    assert ref["best_epoch"] == 1, "epoch 1 must improve: it writes both files"
    real, calls = checkpoint.torch_save, []

    def killed_at_the_fourth(state, path):  # epoch 0: two writes; epoch 1: one, then the kill
        calls.append(Path(path).name)
        if len(calls) == 4:
            raise _Killed
        real(state, path)

    monkeypatch.setattr(checkpoint, "torch_save", killed_at_the_fourth)
    with pytest.raises(_Killed):
        train(cfg, inputs(tiny), tmp_path / "out", tmp_path / "state")
    monkeypatch.setattr(checkpoint, "torch_save", real)
    caplog.set_level("INFO", logger="ragimpute")
    train(cfg, inputs(tiny), tmp_path / "out", tmp_path / "state")
    assert "starts afresh" not in caplog.text
    assert "resuming from" in caplog.text
    assert list(pd.read_csv(tmp_path / "out/metrics.csv")["epoch"]) == [0, 1]
    assert (tmp_path / "out/model.pt").read_bytes() == (tmp_path / "ref/model.pt").read_bytes()


@pytest.mark.skipif(sys.platform != "linux", reason="/proc and PR_SET_PDEATHSIG")
def test_a_killed_distributed_job_leaves_no_training_process(tiny, tmp_path):
    """SIGKILL of the job of a run with train.processes left its spawned processes training on,
    orphaned, to the end, writing model/ after Snakemake had given the job up (and beside the next
    run's), whenever SIGINT was ignored: torch has them sent SIGINT when their parent dies, and a
    Snakemake started in the background (`nohup snakemake ... &`) passes SIGINT ignored on to its
    jobs. They die with the job."""
    extra = ["--set", "processes=2", "--set", "device=cpu", "--set", "patience=1000"]
    cmd = _run_training_cli(tiny["results"], None, tmp_path / "out", tmp_path / "state", 200, extra)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `nohup ... &`
    )
    deadline = time.time() + 300
    while not (tmp_path / "state/ckpt.pt").exists() and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    spawned = [int(c) for c in children if "spawn_main" in _cmdline(int(c))]
    assert len(spawned) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not survivors(spawned, 20), "spawned training processes outlived the killed job"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except FileNotFoundError:
        return ""
