"""Scatter by chromosome: with two chromosomes, each runs as its own chain of jobs (window, mask,
tokens, index, retrieval), in parallel, none reading the other's files; and the README's recipes
for re-running one stage or one file do what it says."""

from __future__ import annotations

import json
import shutil

import pytest
from workflow_runs import (
    CHROMS,
    TWO_CHROM_RESULTS,
    chromosomes_of,
    job_blocks,
    job_stats,
    jobs_in_log,
    local_two_chrom_run,
    output,
    snakemake,
    wildcard_dict,
)

from ragimpute.methods import (
    ENGINE_METHODS,
    ENGINE_PARAM,
    ENGINE_VERSION,
    REFERENCE_RECORD_PARAM,
)

SPLITS = ("train", "val", "test")


def test_every_chromosome_is_scheduled_at_once(tmp_path):
    # Before anything ran, the DAG must already hold the window and mask (checkpoint) jobs of both
    # chromosomes. An input function that let the first chromosome's IncompleteCheckpointException
    # escape would show one of each, and run the chromosomes one after the other.
    r = snakemake(tmp_path, "-n")
    assert r.returncode == 0, output(r)[-3000:]
    stats = job_stats(output(r))
    assert stats["window"] == 2 and stats["mask"] == 2, stats
    assert {w for rule, w in jobs_in_log(output(r)) if rule == "mask"} == {
        f"unit={c}" for c in CHROMS
    }


@pytest.mark.slow
def test_two_chromosomes_run_as_independent_chains(tmp_path_factory):
    run = local_two_chrom_run(tmp_path_factory)
    res = run.workdir / TWO_CHROM_RESULTS
    jobs = [b for b in job_blocks(run.log) if b["output"]]

    per_chrom: dict[str, dict[str, int]] = {c: {} for c in CHROMS}
    for job in jobs:
        chrom = dict(kv.split("=") for kv in job["wildcards"].split(", ") if kv).get("unit")
        if chrom is None:
            # stages before the scatter (demo, split) and gathers after it (training, comparison):
            # they may read every chromosome's files but write none
            assert all(not chromosomes_of(p) for p in job["output"]), job
            continue
        per_chrom[chrom][job["rule"]] = per_chrom[chrom].get(job["rule"], 0) + 1
        # a chromosome's job reads and writes only its own chromosome's files (and shared ones)
        for path in job["input"] + job["output"]:
            assert chromosomes_of(path) <= {chrom}, (job["rule"], chrom, path)
        assert all(chromosomes_of(p) == {chrom} for p in job["output"]), job

    # one chain per chromosome: one window, mask and index job each (one mask), 3 tokens, 3 retrievals
    # (and, where the workflow has them, the per-chromosome imputation and evaluation jobs)
    want = {"window": 1, "mask": 1, "tokenize": 3, "index": 1, "retrieve": 3}
    for c in CHROMS:
        assert {rule: n for rule, n in per_chrom[c].items() if rule in want} == want, per_chrom
    assert per_chrom["20"] == per_chrom["21"]

    for c in CHROMS:
        assert (res / "windows" / c / "windows.json").is_file()
        (h,) = [p.name for p in (res / "index" / c).iterdir()]
        assert (res / "index" / c / h / "meta.json").is_file()
        for s in SPLITS:
            assert (res / "retrieval" / c / h / f"{s}.parquet").is_file()
    # the demo simulates the chromosomes independently: different sites, different masks
    assert len({p.name for c in CHROMS for p in (res / "index" / c).iterdir()}) == 2


@pytest.fixture
def finished_copy(tmp_path_factory, tmp_path):
    """A private copy of the finished two-chromosome run (with its .snakemake metadata)."""
    run = local_two_chrom_run(tmp_path_factory)
    dest = tmp_path / "run"
    shutil.copytree(run.workdir, dest, symlinks=True)
    return dest


def ran(r) -> set[tuple[str, str]]:
    assert r.returncode == 0, output(r)[-3000:]
    return jobs_in_log(output(r))


@pytest.mark.slow
def test_rerun_recipes(finished_copy):
    wd = finished_copy
    res = wd / TWO_CHROM_RESULTS
    assert ran(snakemake(wd, "--cores", "2")) == set()  # a finished run has nothing to do
    h21 = next((res / "index" / "21").iterdir()).name

    # -R mask: the mask checkpoint again on every chromosome; same settings, same masks (content
    # hash), so the tokens, indexes, retrieval tables and the model are kept. (Stages that read the
    # list of current masks, masks/<chrom>/current.json, may run again.)
    reran = ran(snakemake(wd, "--cores", "2", "-R", "mask"))
    assert {("mask", f"unit={c}") for c in CHROMS} <= reran
    assert not {rule for rule, _ in reran} & {"window", "tokenize", "index", "retrieve", "train"}

    # -R index: that stage on every chromosome, then what depends on it; nothing upstream
    h20 = next((res / "index" / "20").iterdir()).name
    hashes = {"20": h20, "21": h21}
    reran = ran(snakemake(wd, "--cores", "2", "-R", "index"))
    assert {("index", f"unit={c}, mask_hash={hashes[c]}") for c in CHROMS} | {
        ("retrieve", f"unit={c}, mask_hash={hashes[c]}, split={s}") for c in CHROMS for s in SPLITS
    } <= reran
    assert not {rule for rule, _ in reran} & {"window", "mask", "tokenize"}

    # a target file: only the job that makes it ...
    index21 = f"{TWO_CHROM_RESULTS}/index/21/{h21}"
    shutil.rmtree(wd / index21)
    assert ran(snakemake(wd, "--cores", "2", targets=(index21,))) == {
        ("index", f"unit=21, mask_hash={h21}")
    }
    # ... and the next full run re-does what depends on it (newer input): chromosome 21's retrieval,
    # not chromosome 20's, nor anything upstream
    reran = ran(snakemake(wd, "--cores", "2"))
    assert {("retrieve", f"unit=21, mask_hash={h21}, split={s}") for s in SPLITS} <= reran
    assert not {
        (r_, w) for r_, w in reran if r_ in ("window", "mask", "tokenize", "index", "retrieve")
    } - {("retrieve", f"unit=21, mask_hash={h21}, split={s}") for s in SPLITS}

    # a stage target (instead of --until, which cannot see past the mask checkpoint): up to the
    # indexes, and nothing downstream of them
    for stage in ("tokens", "index", "retrieval"):
        shutil.rmtree(res / stage / "21")
    assert ran(snakemake(wd, "--cores", "2", targets=("index_all",))) == {
        ("tokenize", f"unit=21, mask_hash={h21}, split=train"),
        ("index", f"unit=21, mask_hash={h21}"),
    }
    assert not (res / "retrieval" / "21").exists()


@pytest.mark.slow
def test_an_engine_upgrade_reruns_what_the_engine_made(finished_copy):
    """Results of another engine version are not kept: the jobs that run the engine (state index,
    prior, imputation) carry its version as a parameter, and Snakemake reruns a job whose recorded
    parameters differ. Here the run's records are made to say it was the previous version."""
    wd = finished_copy
    older = ENGINE_PARAM.replace(str(ENGINE_VERSION), str(ENGINE_VERSION - 1))
    aged = set()
    without = 0  # imputations that do not run the engine (af, retrieval)
    for record in (wd / ".snakemake" / "metadata").iterdir():
        meta = json.loads(record.read_text())  # params: the repr of each value
        if meta["rule"] == "impute" and repr(ENGINE_PARAM) not in meta["params"]:
            without += 1
        if repr(ENGINE_PARAM) in meta["params"]:
            meta["params"] = [repr(older) if v == repr(ENGINE_PARAM) else v for v in meta["params"]]
            record.write_text(json.dumps(meta))
            aged.add(meta["rule"])
    assert aged == {"states", "prior", "impute"} and without > 0

    r = snakemake(wd, "-n", "--cores", "2")
    assert r.returncode == 0, output(r)[-3000:]
    jobs = jobs_in_log(output(r))
    scheduled = {rule for rule, _ in jobs}
    assert {"states", "prior", "impute"} <= scheduled
    # nothing upstream of the engine: the reference tables, masks and network inputs stand
    assert not scheduled & {"window", "mask", "tokenize", "index", "retrieve", "split"}
    # and of the imputations only those of the methods that run the engine
    methods = {wildcard_dict(w)["method"] for rule, w in jobs if rule == "impute"}
    assert methods and methods <= set(ENGINE_METHODS)
    assert "Params have changed since last execution" in output(r)


@pytest.mark.slow
def test_artifacts_that_record_no_reference_are_rebuilt(finished_copy):
    """Tokens, indexes, state indexes, prior tables and model.pt written before they recorded the
    haplotypes they were made from (which imputation or training refuses) are not kept: their rules
    carry REFERENCE_RECORD_PARAM, and Snakemake reruns a job whose recorded parameters lack it. Here
    the run's records are made to say they were written without it."""
    wd = finished_copy
    aged = set()
    for record in (wd / ".snakemake" / "metadata").iterdir():
        meta = json.loads(record.read_text())
        if repr(REFERENCE_RECORD_PARAM) in meta["params"]:
            meta["params"] = [v for v in meta["params"] if v != repr(REFERENCE_RECORD_PARAM)]
            record.write_text(json.dumps(meta))
            aged.add(meta["rule"])
    recorded = {"tokenize", "index", "states", "prior"}
    assert recorded <= aged <= recorded | {"train"}
    r = snakemake(wd, "-n", "--cores", "2")
    assert r.returncode == 0, output(r)[-3000:]
    scheduled = {rule for rule, _ in jobs_in_log(output(r))}
    assert aged <= scheduled and "impute" in scheduled
    # the reference tables and masks stand
    assert not scheduled & {"window", "mask", "split"}


@pytest.mark.slow
def test_settings_that_leave_a_methods_output_as_it_is_do_not_rerun_it(finished_copy):
    """retrieval.k reaches only the network's imputation (the retrieval baseline has its own k), and
    impute.batch_haplotypes and engine.block_sites none: output is the same for any batch and any
    block. None of them reruns af, retrieval or copying. Nor do the settings of how training uses
    the machine (train.log_every, device, cache_windows) retrain or reimpute."""
    from workflow_runs import TINY, TWO_CHROM

    wd = finished_copy
    for name, text, may_rerun in (
        ("k.yaml", "retrieval:\n  k: 6\n", {"model"}),
        ("batch.yaml", "impute:\n  batch_haplotypes: 7\n", set()),
        ("block.yaml", "engine:\n  block_sites: 17\n", set()),
        # the machine's train settings: neither retrain nor reimpute with the network
        ("train.yaml", "train:\n  log_every: 7\n  device: cpu\n  cache_windows: 3\n", set()),
    ):
        overlay = wd / name
        overlay.write_text(text)
        r = snakemake(wd, "-n", "--cores", "2", configs=(TINY, TWO_CHROM, overlay))
        assert r.returncode == 0, output(r)[-3000:]
        jobs = jobs_in_log(output(r))
        methods = {wildcard_dict(w)["method"] for rule, w in jobs if rule == "impute"}
        assert methods <= may_rerun, (name, methods)
        if not may_rerun:
            assert not jobs, (name, jobs)


@pytest.mark.parametrize(
    "record,stage",
    [("masks/21/current.json", "mask"), ("targets/21/aligned/alignment.json", "target_mask")],
)
def test_a_truncated_checkpoint_record_is_named_with_its_rebuild(finished_copy, record, stage):
    """Snakemake reads the checkpoints' JSON records while it builds the job graph: a truncated one
    was a JSONDecodeError traceback naming no file."""
    wd = finished_copy
    path = wd / TWO_CHROM_RESULTS / record
    path.write_text(path.read_text()[:20])
    r = snakemake(wd, "-n", "--cores", "2")
    text = output(r)
    assert r.returncode != 0 and "JSONDecodeError" not in text, text[-3000:]
    assert f"{record} is corrupt or truncated" in text and f"--forcerun {stage}" in text
    r = snakemake(wd, "--cores", "2", "--forcerun", stage)  # the fix the message gives
    assert r.returncode == 0, output(r)[-3000:]
    assert json.loads(path.read_text())
