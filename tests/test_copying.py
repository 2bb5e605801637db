"""The copying-model engine in the pipeline (method ``copying``): the state index artifact, its mask
check, and a chromosome imputed in one pass whatever the windows, with no seam at window edges."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace

import numpy as np
import pysam
import pysam.bcftools
import pytest
from impute_data import (
    CHROM,
    check_hds,
    foreign_results,
    imputed_records,
    recorded_writes,
    shared_env,
    vcf_lines,
    without_hds,
    write_bgzip,
)

from ragimpute.engine import EngineParams
from ragimpute.errors import ArtifactError, MaskMismatchError
from ragimpute.impute import engine_params, impute_target
from ragimpute.masks import load_mask_for
from ragimpute.methods import STATES_RULE_SETTINGS
from ragimpute.predictors import PriorPredictor
from ragimpute.schema import section_defaults
from ragimpute.states import build_states, load_chunk, load_states, stale_reason
from ragimpute.vcf_write import STATS_SCALE
from ragimpute.windows import run_window_stage, sites_hash


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared_env(tmp_path_factory)


def copying(env, results, out, target=None, **kw):
    return impute_target(
        results, CHROM, env.split, target or env.target, "copying", out, panel_vcf=env.panel,
        reference_splits=("train",), **kw,
    )  # fmt: skip


def test_window_length_does_not_change_the_copying_model(env, tmp_path):
    """The engine runs over the whole chromosome: windows of another length (their edges elsewhere)
    give the same dosages at every site, so window edges leave no seam."""
    other = tmp_path / "results"
    shutil.copytree(env.results / "split", other / "split")
    run_window_stage(env.panel, env.split, CHROM, 48, 12, other / "windows" / CHROM)
    copying(env, env.results, tmp_path / "a.vcf.gz")
    copying(env, other, tmp_path / "b.vcf.gz")
    a, b = imputed_records(tmp_path / "a.vcf.gz"), imputed_records(tmp_path / "b.vcf.gz")
    assert np.array_equal(a["pos"], b["pos"])
    np.testing.assert_array_equal(a["ds"], b["ds"])
    np.testing.assert_array_equal(a["gp"], b["gp"])


def test_report_and_header_name_the_engine_and_its_reference(env, tmp_path):
    report = copying(env, env.results, tmp_path / "c.vcf.gz")
    eng = report["engine"]
    assert eng["reference_splits"] == ["train"]
    assert eng["reference_samples"] == env.split_samples["train"]
    assert eng["reference_haplotypes"] == 2 * len(env.split_samples["train"])
    assert 1e-4 <= eng["error"] <= 0.05 and eng["error_estimated"]
    header = str(imputed_records(tmp_path / "c.vcf.gz")["header"])
    assert "method=copying" in header and f"error={eng['error']}" in header


def test_state_index_refuses_another_mask_and_other_settings(env, tmp_path):
    out = tmp_path / "states"
    params = EngineParams()
    build_states(env.windows, env.store, env.train_hash, ["train"], out, params)
    index, meta = load_states(out, env.train_hash, params)
    assert meta["samples"] == env.split_samples["train"] and index.n_steps == meta["n_steps"]
    with pytest.raises(MaskMismatchError, match="built with mask"):
        load_states(out, "0" * 16, params)
    with pytest.raises(ArtifactError, match="engine.step_cm"):
        load_states(out, env.train_hash, EngineParams(step_cm=0.2))
    meta_path = out / "meta.json"
    steps = out / "steps.parquet"
    data = bytearray(steps.read_bytes())
    data[len(data) // 2] ^= 0xFF
    steps.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_states(out, env.train_hash, params)
    assert json.loads(meta_path.read_text())["mask_hash"] == env.train_hash


def test_state_index_of_another_panel_with_the_same_layout_is_refused(env, tmp_path):
    """The state index holds its own reference: one built from another panel file of the same
    samples, sites and mask would impute from haplotypes that are not the reference. Loading it is
    refused with the rebuild; outside Snakemake it is stale, and ``impute_target`` builds it anew."""
    res = foreign_results(env, tmp_path)
    states, params = tmp_path / "states", EngineParams()
    build_states(env.windows, env.store, env.train_hash, ["train"], states, params)
    other = res / "windows" / CHROM
    assert stale_reason(states, env.windows, ["train"], params) is None
    assert "other reference haplotypes" in stale_reason(states, other, ["train"], params)
    typed = np.flatnonzero(load_mask_for(env.store, env.train_hash, sites_hash(other)).observed)
    load_chunk(states, env.windows, typed)
    with pytest.raises(ArtifactError, match=r"other reference haplotypes.*--forcerun states"):
        load_chunk(states, other, typed)
    meta = json.loads((states / "meta.json").read_text())
    del meta["haplotypes_digest"]  # as an earlier version wrote it
    (states / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"records no digest.*--forcerun states"):
        load_chunk(states, env.windows, typed)


def test_state_index_records_the_span_steps_chosen_for_its_reference(env, tmp_path):
    """With span_steps auto the index is built with 3 steps per window for a reference of more
    haplotypes than engine.states and 7 otherwise; meta.json records the number, loading checks it
    against what the settings choose for that reference, and a change of states that changes the
    choice makes the index stale."""
    n_ref = 2 * len(env.split_samples["train"])
    small = {"candidates": 8, "step_cm": 0.02}  # steps enough for a middle on the test panel
    for states, want in ((n_ref - 1, 3), (n_ref, 7)):
        out = tmp_path / f"states{states}"
        params = EngineParams(states=states, **small)
        meta = build_states(env.windows, env.store, env.train_hash, ["train"], out, params)
        assert meta["span_steps"] == want
        index, _ = load_states(out, env.train_hash, params)
        mid = index.n_steps // 2
        assert index.n_steps > 7
        assert index.span[mid, 1] == index.bounds[mid + want // 2 + 1]
        load_states(out, env.train_hash, EngineParams(states=states, **small, span_steps=want))
        with pytest.raises(ArtifactError, match=f"engine.span_steps = {want}"):
            load_states(
                out, env.train_hash, EngineParams(states=states, **small, span_steps=10 - want)
            )
        assert stale_reason(out, env.windows, ["train"], params) is None
        crossed = EngineParams(states=n_ref if want == 3 else n_ref - 1, **small)
        assert "span_steps" in stale_reason(out, env.windows, ["train"], crossed)
        # the end windows follow states too (centred where the reference outnumbers them): with
        # span_steps given, a change of states across the reference's size still makes it stale
        ends = "centred" if want == 3 else "inner"
        assert meta["ends"] == ends
        assert index.span[0, 1] == index.bounds[1 if ends == "centred" else want // 2 + 1]
        fixed = EngineParams(states=states, **small, span_steps=want)
        crossed = replace(crossed, span_steps=want)
        assert stale_reason(out, env.windows, ["train"], fixed) is None
        assert "at the ends" in stale_reason(out, env.windows, ["train"], crossed)
        with pytest.raises(ArtifactError, match=f"built with {ends} step windows at the ends"):
            load_states(out, env.train_hash, crossed)


def test_the_states_rule_settings_build_any_valid_engine_section(env, tmp_path):
    """The `states` rule gets only STATES_RULE_SETTINGS of the config's engine section: they must
    make valid settings on their own (fewer states than the default 64 candidates, say) and agree
    with the whole section on every setting the index is built with."""
    n_ref = 2 * len(env.split_samples["train"])
    section = {**section_defaults("engine"), "states": 40, "candidates": 8, "step_cm": 0.02}
    rule, full = (
        engine_params(c) for c in ({k: section[k] for k in STATES_RULE_SETTINGS}, section)
    )
    meta = build_states(env.windows, env.store, env.train_hash, ["train"], tmp_path / "s", rule)
    assert meta["span_steps"] == full.span_for(n_ref) == (3 if n_ref > 40 else 7)
    load_states(tmp_path / "s", env.train_hash, full)  # the imputation's settings accept it


def test_targets_far_from_the_reference_raise_the_error_and_a_warning(env, tmp_path, caplog):
    """Genotypes inverted at a fifth of the typed sites (what a strand problem does): the estimated
    mismatch rate goes up from the clean target's and the log says what to check; the clean target
    gives no such warning."""
    results = tmp_path / "results"  # the inverted target's A/T and C/G sites are left out: its mask
    shutil.copytree(env.results, results)  # and state index are its own, kept out of env's results
    clean = copying(env, results, tmp_path / "clean.vcf.gz")
    assert "beyond what genotyping errors give" not in caplog.text
    header, records = vcf_lines(env.target)
    inv = {"0": "1", "1": "0", ".": "."}
    for r in records[::5]:
        r[9:] = ["|".join(inv[a] for a in g.split("|")) for g in r[9:]]
    target = write_bgzip(tmp_path / "inverted.vcf.gz", header, records)
    report = copying(env, results, tmp_path / "inv.vcf.gz", target=target)
    assert report["engine"]["error"] > max(0.01, 10 * clean["engine"]["error"])
    assert "beyond what genotyping errors give" in caplog.text


def test_stale_or_corrupted_reference_bits_are_rebuilt_or_refused(env, tmp_path):
    """Outside Snakemake the state index is rebuilt when a file is missing or it was built on
    another reference; its reference bits are verified against their checksum when read."""
    out = tmp_path / "states"
    params = EngineParams()
    assert stale_reason(out, env.windows, ["train"], params) == "none built yet"
    meta = build_states(env.windows, env.store, env.train_hash, ["train"], out, params)
    assert stale_reason(out, env.windows, ["train"], params) is None
    assert "reference" in stale_reason(out, env.windows, ["train", "val"], params)
    assert "span_steps" in stale_reason(out, env.windows, ["train"], EngineParams(span_steps=3))
    bits = out / "reference.npy"
    data = bytearray(bits.read_bytes())
    data[-1] ^= 0xFF
    bits.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="reference.npy does not match its checksum"):
        load_chunk(out, env.windows, np.arange(meta["n_typed"]))
    bits.unlink()
    assert stale_reason(out, env.windows, ["train"], params) == "reference.npy missing"
    with pytest.raises(ArtifactError, match="reference.npy missing"):
        load_chunk(out, env.windows, np.arange(meta["n_typed"]))


def test_impute_rebuilds_a_state_index_with_a_missing_file(env, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(env.results, results)
    first = copying(env, results, tmp_path / "a.vcf.gz")
    (bits,) = (results / "states").rglob("reference.npy")
    bits.unlink()
    second = copying(env, results, tmp_path / "b.vcf.gz")
    assert bits.exists()
    a, b = imputed_records(tmp_path / "a.vcf.gz"), imputed_records(tmp_path / "b.vcf.gz")
    np.testing.assert_array_equal(a["ds"], b["ds"])
    assert first["engine"]["states"] == second["engine"]["states"]


def _records(path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [line for line in f if not line.startswith("#")]


def test_copying_records_from_the_prior_store_equal_the_general_path(env, tmp_path, monkeypatch):
    """``copying`` is written straight from the prior store's rounded values; the path every other
    predictor takes (P(ALT) as floats, observed calls written over it, rounded again) gives the same
    records, with missing calls at typed sites imputed alike. Both give the same records formatted
    and written a site at a time (``WRITE_GENOTYPES``, which bounds a window's text)."""
    import ragimpute.impute

    header, records = vcf_lines(env.target)
    for r in records[3:6]:  # one allele missing at three typed sites
        r[9] = ".|" + r[9][2]
    target = write_bgzip(tmp_path / "missing.vcf.gz", header, records)
    runs = {}
    for name, from_prior, block in (("fast", True, None), ("slow", False, None),
                                    ("slow1", False, 1), ("fast1", True, 1)):  # fmt: skip
        monkeypatch.setattr(PriorPredictor, "returns_prior", from_prior)
        if block:
            monkeypatch.setattr(ragimpute.impute, "WRITE_GENOTYPES", block)
        out = tmp_path / f"{name}.vcf.gz"
        report = copying(env, env.results, out, target=target, max_missing=0.5)
        assert report["missing_alleles_imputed_at_typed_sites"] == 3, name
        runs[name] = _records(out)
    assert len(runs["fast"]) > 100
    assert runs["slow"] == runs["fast"] and runs["slow1"] == runs["fast"]
    assert runs["fast1"] == runs["fast"]


def test_without_gp_records_are_gt_ds_with_the_same_genotypes(env, tmp_path):
    copying(env, env.results, tmp_path / "gp.vcf.gz")
    copying(env, env.results, tmp_path / "ds.vcf.gz", gp=False)
    with_gp, without = (
        imputed_records(tmp_path / "gp.vcf.gz"),
        imputed_records(tmp_path / "ds.vcf.gz"),
    )
    assert "ID=GP" in str(with_gp["header"]) and "ID=GP" not in str(without["header"])
    fields = [r.split("\t") for r in _records(tmp_path / "ds.vcf.gz")]
    assert {f[8] for f in fields} == {"GT:DS"}
    np.testing.assert_array_equal(without["ds"], with_gp["ds"])
    gp_fields = [r.split("\t") for r in _records(tmp_path / "gp.vcf.gz")]
    assert [[c.split(":")[0] for c in f[9:]] for f in fields] == [
        [c.split(":")[0] for c in f[9:]] for f in gp_fields
    ]
    text = pysam.bcftools.view("-H", str(tmp_path / "ds.vcf.gz"))  # htslib reads it
    assert len(text.splitlines()) == len(fields)


def test_engine_device_cuda_takes_the_torch_path_with_the_cpu_kernels_dosages(
    env, tmp_path, monkeypatch
):
    """``engine.device: cuda`` reaches the engine (error estimate and imputation) through the same
    stage the workflow runs. Without a GPU here, torch's CUDA check is faked and the torch path runs on
    the CPU: it must give the numba kernel's dosages (to the third decimal the VCF holds)."""
    import torch

    import ragimpute.engine_torch as engine_torch

    calls = []
    real = engine_torch.impute_torch

    def on_cpu(engine, query, error, device, exclude=None, interpolate=True):
        calls.append(str(device))
        return real(engine, query, error, "cpu", exclude, interpolate)

    cpu = copying(env, env.results, tmp_path / "cpu.vcf.gz")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 0)
    monkeypatch.setattr(engine_torch, "impute_torch", on_cpu)
    gpu = copying(env, env.results, tmp_path / "gpu.vcf.gz", engine={"device": "cuda"})
    assert calls and set(calls) == {"cuda"}  # the error estimate and every batch
    assert cpu["engine"]["device"] == "cpu" and gpu["engine"]["device"] == "cuda"
    assert gpu["engine"]["error"] == pytest.approx(cpu["engine"]["error"], rel=1e-3)
    a, b = imputed_records(tmp_path / "cpu.vcf.gz"), imputed_records(tmp_path / "gpu.vcf.gz")
    assert np.array_equal(a["pos"], b["pos"])
    np.testing.assert_allclose(a["ds"], b["ds"], atol=0.0015)


def test_engine_device_cuda_without_a_gpu_is_a_clear_error(env, tmp_path, monkeypatch):
    import torch

    from ragimpute.errors import InputError
    from ragimpute.impute import engine_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine_device({"device": "auto"}) == "cpu"
    with pytest.raises(InputError, match="engine.device is cuda but torch sees no CUDA device"):
        copying(env, env.results, tmp_path / "x.vcf.gz", engine={"device": "cuda"})
    assert not (tmp_path / "x.vcf.gz").exists()


def test_a_prior_store_left_by_a_killed_job_is_removed_by_the_next_one(tmp_path):
    """The engine's temporary P(ALT) store (2 bytes per site and haplotype) of a job killed
    mid-run is removed by the next job imputing there; a live job's store is left alone."""
    import subprocess
    import sys

    from ragimpute.prior import PriorStore

    killed = (
        "import os, numpy as np; from ragimpute.prior import PriorStore; "
        f"s = PriorStore(10, 4, {str(tmp_path)!r}); s.write(0, np.zeros((4, 10))); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", killed]).returncode == 9
    (left,) = tmp_path.glob(".prior.tmp~*")
    assert any(left.iterdir())
    with PriorStore(10, 4, tmp_path) as live:
        assert not left.exists()
        assert [p.name for p in tmp_path.iterdir()] == [live.dir.name]
        with PriorStore(10, 4, tmp_path) as other:  # this process's own: alive, kept
            assert live.dir.exists() and other.dir.exists()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("gp", [True, False])
def test_hds_is_the_engines_p_alt_per_haplotype(env, tmp_path, monkeypatch, gp):
    """impute.hds on the copying model's own writing path (the prior store's P(ALT), formatted
    directly): bcftools reads HDS as that P(ALT) per haplotype (the observed allele at typed
    sites), summing to DS; without HDS the records are the run's without it, byte for byte."""
    copying(env, env.results, tmp_path / "plain.vcf.gz", gp=gp)
    import ragimpute.impute

    seen = recorded_writes(monkeypatch, ragimpute.impute, "format_coded_records", STATS_SCALE)
    copying(env, env.results, tmp_path / "hds.vcf.gz", gp=gp, hds=True)
    check_hds(tmp_path / "hds.vcf.gz", seen)
    _, records = vcf_lines(tmp_path / "hds.vcf.gz")
    assert {r[8] for r in records} == {"GT:DS:HDS:GP" if gp else "GT:DS:HDS"}
    assert without_hds(records) == vcf_lines(tmp_path / "plain.vcf.gz")[1]
    _, target = vcf_lines(env.target)
    typed = {int(r[1]): [int(a) for g in r[9:] for a in g.split("|")] for r in target}
    assert all(np.array_equal(seen[x], typed[x]) for x in typed)
