"""Unphased array targets: harmonised as they are, phased by the `phase` stage (Beagle 5.4 or SHAPEIT5)
with the same genotypes, missing calls kept missing and imputed (and flagged) by every method;
impute.phase never refuses them; the demo's array noise; and, in the workflow, one run that phases,
gives every method the map and the whole panel as the reference of your own targets."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest
from conftest import pid_written, survivors
from impute_data import CHROM, imputed_records, shared_env, vcf_lines, write_vcf

from ragimpute.demo import ArrayNoise, add_array_noise
from ragimpute.errors import InputError, ToolError
from ragimpute.phasing import (
    Calls,
    check_phased,
    phase_args_problems,
    phase_target,
    read_calls,
    shapeit5_binary,
)
from ragimpute.targets import harmonise_target, write_minimac4_target

HAVE_BEAGLE = shutil.which("beagle") is not None
needs_beagle = pytest.mark.skipif(
    not HAVE_BEAGLE, reason="Beagle 5.4 is not on PATH (Debian/Ubuntu: apt-get install beagle)"
)
needs_shapeit5 = pytest.mark.skipif(
    shapeit5_binary() is None,
    reason="SHAPEIT5 phase_common is not on PATH (not packaged by Debian; bioconda: shapeit5)",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared_env(tmp_path_factory)


def truth_genotypes(env):
    """(sites, samples, 2) true phased alleles of the target samples at the typed (array) sites."""
    _, records = vcf_lines(env.target)
    return np.array([[[int(a) for a in g.split("|")] for g in r[9:]] for r in records])


# Record 10, sample 0: missing (./.); record 12, sample 1: one allele missing (./1, read as missing).
MISSING = {(10, 0): "./.", (12, 1): "./1"}


def unphased_target(env, path: Path) -> Path:
    """The target as an array delivers it: every genotype unphased (0/1), two missing calls."""
    header, records = vcf_lines(env.target)
    out = []
    for i, r in enumerate(records):
        r = r[:9] + ["0/1" if g in ("0|1", "1|0") else g.replace("|", "/") for g in r[9:]]
        for (row, j), gt in MISSING.items():
            if row == i:
                r[9 + j] = gt
        out.append(r)
    return write_vcf(path, header, out)


def harmonise(env, target, out, phase="auto", max_missing=0.2):
    # max_missing 0.2: one missing sample of six (17 % of the haplotypes) stays typed
    return harmonise_target(
        target, env.windows, env.split, env.store, out, CHROM, max_missing, env.panel,
        reference_splits=["train"], phase=phase,
    )  # fmt: skip


@pytest.fixture(scope="module")
def phased(env, tmp_path_factory):
    """The unphased target harmonised (phase: auto) and phased by Beagle against the reference."""
    if not HAVE_BEAGLE:
        pytest.skip("Beagle 5.4 is not on PATH (Debian/Ubuntu: apt-get install beagle)")
    d = tmp_path_factory.mktemp("phase")
    raw = unphased_target(env, d / "raw.vcf")
    info = harmonise(env, raw, d / "aligned")
    report = phase_target(
        d / "aligned" / "target.vcf.gz", env.reference, d / "phased" / "target.vcf.gz",
        d / "phased" / "phase.json", threads=1,
    )  # fmt: skip
    return {"dir": d, "raw": raw, "info": info, "report": report}


# -- harmonising an unphased target ------------------------------------------------------------------


def test_unphased_target_is_harmonised_unphased_and_counted(env, tmp_path):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    info = harmonise(env, raw, tmp_path / "aligned")
    truth = truth_genotypes(env)
    het = truth[..., 0] != truth[..., 1]
    for (row, j), _ in MISSING.items():
        het[row, j] = False
    assert info["phasing"] == {
        "phase": "auto",
        "unphased_heterozygotes": int(het.sum()),
        "needs_phasing": True,
    }
    assert info["missing"]["alleles_missing_at_typed_sites"] == 4  # ./. and ./1 (read as missing)
    assert info["hash"] == env.train_hash  # the same typed sites: the same mask
    _, aligned = vcf_lines(tmp_path / "aligned" / "target.vcf.gz")
    gts = np.array([r[9:] for r in aligned])
    assert (gts[het] == "0/1").all() and not any("/" in g for g in gts[~het])
    assert gts[10, 0] == ".|." and gts[12, 1] == ".|."


def test_phased_target_does_not_need_phasing_unless_always(env, tmp_path):
    info = harmonise(env, env.target, tmp_path / "auto")
    assert info["phasing"]["needs_phasing"] is False
    info = harmonise(env, env.target, tmp_path / "always", phase="always")
    assert info["phasing"]["needs_phasing"] is True


def test_phase_never_with_unphased_input_is_a_clear_error(env, tmp_path):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    with pytest.raises(InputError) as e:
        harmonise(env, raw, tmp_path / "aligned", phase="never")
    msg = str(e.value)
    _, records = vcf_lines(env.target)
    first_het = next(i for i, r in enumerate(records) if any(g in ("0|1", "1|0") for g in r[9:]))
    assert str(raw) in msg and "genotypes are unphased" in msg
    assert f"(at {CHROM}:{records[first_het][1]})" in msg
    assert "impute.phase is 'never'" in msg and "set it to auto" in msg and "Beagle 5.4" in msg
    assert not (tmp_path / "aligned" / "target.vcf.gz").exists()


def test_cli_without_phasing_still_refuses_unphased_targets(env, tmp_path):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    with pytest.raises(InputError, match="genotypes are unphased") as e:
        harmonise(env, raw, tmp_path / "aligned", phase=None)
    assert "impute.phase" not in str(e.value) and "SHAPEIT5" in str(e.value)


# -- the phase stage ----------------------------------------------------------------------------------


@needs_beagle
def test_unphased_input_comes_out_phased_with_the_same_genotypes(env, phased):
    d = phased["dir"]
    aligned = read_calls(d / "aligned" / "target.vcf.gz")
    out = d / "phased" / "target.vcf.gz"
    assert out.exists() and Path(f"{out}.tbi").exists()
    with pysam.VariantFile(str(out)) as vf:
        samples = list(vf.header.samples)
        recs = list(vf)
    assert samples == aligned.samples
    assert [(r.pos, r.ref, r.alts[0]) for r in recs] == list(
        aligned.sites[["pos", "ref", "alt"]].itertuples(index=False, name=None)
    )  # every typed site, in order: the mask is unchanged
    truth = truth_genotypes(env)
    for i, rec in enumerate(recs):
        for j, s in enumerate(samples):
            call = rec.samples[s]
            if (i, j) in MISSING:
                assert call["GT"] == (None, None)  # missing stays missing (Beagle filled it)
                continue
            assert call.phased
            assert sorted(call["GT"]) == sorted(truth[i, j])  # the same unordered alleles
    report = phased["report"]
    assert report["missing_calls_kept_missing"] == 2
    assert report["half_missing_calls_set_missing"] == 0  # ./1 was read as missing already
    assert (
        report["unphased_heterozygotes_in"] == phased["info"]["phasing"]["unphased_heterozygotes"]
    )
    assert report["phaser"] == "beagle" and "impute=false" in report["command"]
    assert json.loads((d / "phased" / "phase.json").read_text())["sites"] == len(recs)


def test_a_target_of_one_typed_site_is_written_phased_without_a_phaser(env, tmp_path):
    """One typed site has no phase to find, and Beagle stops on it ("Window has only one position"),
    which stopped the whole run (a chunk, or a sparse array, that types one site): its genotypes are
    written as they are, heterozygotes 0|1, missing calls missing."""
    header, records = vcf_lines(env.target)
    row = next(i for i, r in enumerate(records) if {"0|1", "1|0"} & set(r[9:]))
    r = records[row]
    r = r[:9] + ["0/1" if g in ("0|1", "1|0") else g.replace("|", "/") for g in r[9:]]
    r[9] = "./."
    raw = write_vcf(tmp_path / "one.vcf", header, [r])
    info = harmonise(env, raw, tmp_path / "aligned")
    assert info["typed"] == 1 and info["phasing"]["needs_phasing"]
    out = tmp_path / "phased" / "target.vcf.gz"
    report = phase_target(
        tmp_path / "aligned" / "target.vcf.gz", env.reference, out, tmp_path / "phase.json"
    )
    with pysam.VariantFile(str(out)) as vf:
        (rec,) = list(vf)
    truth = truth_genotypes(env)[row]
    assert rec.samples[0]["GT"] == (None, None)  # missing stays missing
    for j, s in enumerate(list(rec.samples)[1:], start=1):
        assert rec.samples[s].phased and rec.samples[s]["GT"] == tuple(sorted(truth[j]))
    assert report["sites"] == 1 and report["command"] == []
    assert report["phaser_version"] == "not run: one typed site"


@needs_beagle
def test_phasing_is_mostly_right(env, phased):
    """Against the reference, Beagle gets most of the switches right on this tiny panel (not a
    benchmark: a check that the phase is not random)."""
    calls = read_calls(phased["dir"] / "phased" / "target.vcf.gz")
    truth = truth_genotypes(env)
    switches = hets = 0
    for j in range(truth.shape[1]):
        a = calls.alleles[:, 2 * j]
        het = (truth[:, j, 0] != truth[:, j, 1]) & (a >= 0)
        same = a[het] == truth[het, j, 0]
        switches += int((same[1:] != same[:-1]).sum())
        hets += max(int(het.sum()) - 1, 0)
    assert switches / hets < 0.2


@needs_beagle
def test_missing_call_at_a_typed_site_is_imputed_and_flagged(env, phased, tmp_path):
    """Ours imputes the missing calls of the phased target in place: TYPED, a called genotype, and
    counted in the report; the other samples keep their (phased) calls."""
    from ragimpute.engine import EngineParams
    from ragimpute.impute import run_impute_stage
    from ragimpute.states import build_states

    d = phased["dir"]
    h = phased["info"]["hash"]
    states = tmp_path / "states"
    build_states(
        env.windows, env.store, h, ["train"], states / h, EngineParams(states=20, candidates=8)
    )
    out = tmp_path / "copying.vcf.gz"
    report = run_impute_stage(
        "copying", d / "aligned" / "alignment.json", d / "phased" / "target.vcf.gz", env.windows,
        env.store, None, out, tmp_path / "copying.json", k=8,
        panel_vcf=env.panel, states_dir=states / h, engine={"states": 20, "candidates": 8},
    )  # fmt: skip
    assert report["missing_alleles_imputed_at_typed_sites"] == 4
    assert report["alignment"]["missing"]["alleles_missing_at_typed_sites"] == 4
    rec = imputed_records(out)
    _, records = vcf_lines(env.target)
    calls = read_calls(d / "phased" / "target.vcf.gz")
    for (row, j), _ in MISSING.items():
        i = int(np.flatnonzero(rec["pos"] == int(records[row][1]))[0])
        assert "TYPED" in rec["info"][i] and "IMP" not in rec["info"][i]
        assert set(rec["gt"][i][j]) <= {0, 1}  # a called genotype
        others = [k for k in range(len(rec["samples"])) if k != j]
        want = calls.alleles[row].reshape(-1, 2)[others]
        assert np.array_equal(rec["gt"][i][others], want)  # observed calls as phased


@needs_beagle
def test_phasing_with_a_genetic_map(env, tmp_path, caplog, capfd):
    from ragimpute.genmap import write_site_map

    caplog.set_level("INFO", logger="ragimpute")
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    write_site_map(env.windows, tmp_path / "genetic_map.map")
    report = phase_target(
        tmp_path / "aligned" / "target.vcf.gz", env.reference, tmp_path / "phased.vcf.gz",
        tmp_path / "phase.json", genetic_map=tmp_path / "genetic_map.map",
    )  # fmt: skip
    assert f"map={tmp_path / 'genetic_map.map'}" in report["command"]
    assert report["sites"] == len(vcf_lines(env.target)[1])
    # Beagle prints its log and writes it to a file too: the stage's log holds it once
    beagle_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("beagle: ")]
    assert sum(line.endswith(" finished") for line in beagle_lines) == 1, beagle_lines[-5:]
    # nor does htslib call Beagle's output (no index, no ##contig lines) an error or a warning
    err = capfd.readouterr().err
    assert "[E::" not in err and "[W::" not in err, err[-500:]


@needs_shapeit5
def test_shapeit5_phases_with_the_same_genotypes(env, tmp_path):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    report = phase_target(
        tmp_path / "aligned" / "target.vcf.gz", env.reference, tmp_path / "phased.vcf.gz",
        tmp_path / "phase.json", phaser="shapeit5",
    )  # fmt: skip
    calls = read_calls(tmp_path / "phased.vcf.gz")
    truth = truth_genotypes(env)
    called = calls.alleles.reshape(len(truth), -1, 2)
    ok = (called >= 0).all(-1)
    assert np.array_equal(np.sort(called[ok], -1), np.sort(truth[ok], -1))
    assert report["missing_calls_kept_missing"] == 2 and not calls.unphased.any()


# -- a phaser that fails or returns something else -----------------------------------------------------


def fake_beagle(tmp_path, monkeypatch, body: str) -> None:
    """A `beagle` on PATH that runs ``body`` (Python; ``args`` holds key=value arguments)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "beagle"
    script.write_text(
        f"#!{sys.executable}\n"
        "import gzip, subprocess, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:])\n" + body
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


# Copies the input with every genotype phased; DROP drops one record.
COPY_PHASED = """
lines = gzip.open(args['gt'], 'rt').read().splitlines()
out = []
for n, ln in enumerate(lines):
    if not ln.startswith('#'):
        f = ln.split('\\t')
        f[9:] = ['0|0' if '.' in g else g.replace('/', '|') for g in f[9:]]
        ln = '\\t'.join(f)
    out.append(ln)
DROP
open(args['out'] + '.vcf', 'w').write('\\n'.join(out) + '\\n')
subprocess.run(['bgzip', '-f', args['out'] + '.vcf'], check=True)
"""


def test_a_phaser_that_drops_a_marker_is_refused(env, tmp_path, monkeypatch):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    fake_beagle(tmp_path, monkeypatch, COPY_PHASED.replace("DROP", "del out[-3]"))
    with pytest.raises(ToolError) as e:
        phase_target(tmp_path / "aligned" / "target.vcf.gz", env.reference,
                     tmp_path / "phased.vcf.gz", tmp_path / "phase.json")  # fmt: skip
    msg = str(e.value)
    assert "1 dropped" in msg and "the same typed sites" in msg
    assert not (tmp_path / "phased.vcf.gz").exists()


def test_a_phaser_that_keeps_every_marker_passes_and_missing_calls_are_restored(
    env, tmp_path, monkeypatch
):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    fake_beagle(tmp_path, monkeypatch, COPY_PHASED.replace("DROP", ""))
    report = phase_target(tmp_path / "aligned" / "target.vcf.gz", env.reference,
                          tmp_path / "phased.vcf.gz", tmp_path / "phase.json",
                          filled_vcf=tmp_path / "filled.vcf.gz")  # fmt: skip
    assert report["missing_calls_kept_missing"] == 2
    _, records = vcf_lines(tmp_path / "phased.vcf.gz")
    assert records[10][9] == ".|." and records[12][10] == ".|."
    # Minimac4's copy keeps the phaser's fills (the fake fills 0|0), and is otherwise the same
    _, filled = vcf_lines(tmp_path / "filled.vcf.gz")
    assert filled[10][9] == "0|0" and filled[12][10] == "0|0"
    assert [r[9:] for i, r in enumerate(filled) if i not in (10, 12)] == [
        r[9:] for i, r in enumerate(records) if i not in (10, 12)
    ]
    assert (tmp_path / "filled.vcf.gz.tbi").is_file()  # as the phase rule declares
    # so Minimac4 is given every typed site from it, and the sites of those calls left out without
    mm = write_minimac4_target(
        tmp_path / "filled.vcf.gz", tmp_path / "mm.vcf.gz", tmp_path / "mm.json"
    )
    assert mm["sites_with_missing_calls_left_out"] == 0 and mm["sites_kept"] == len(records)
    assert mm["missing_alleles_filled_by_the_phaser"] == 4
    bare = write_minimac4_target(
        tmp_path / "phased.vcf.gz", tmp_path / "b.vcf.gz", tmp_path / "b.json"
    )
    assert bare["sites_with_missing_calls_left_out"] == 2
    assert bare["missing_alleles_filled_by_the_phaser"] is None


# Phases every heterozygote the other way round from its input (as Beagle re-phases phased samples).
SWAP_PHASED = COPY_PHASED.replace(
    "'0|0' if '.' in g else g.replace('/', '|')",
    "'0|0' if '.' in g else {'0|1': '1|0', '1|0': '0|1', '0/1': '1|0'}.get(g, g.replace('/', '|'))",
)


@pytest.mark.parametrize("phase", ["auto", "always"])
def test_samples_given_phased_keep_their_phase_unless_always(env, tmp_path, monkeypatch, phase):
    """A target of which some samples come phased (trio, an earlier run) and others not: the
    phaser re-phases everyone, but the samples given phased keep the phase they came with, as a
    target given phased is not phased again; impute.phase always re-phases them too."""
    header, records = vcf_lines(env.target)
    given = (0, 1, 2)  # phased as given (the truth); samples 3-5 unphased
    records = [r[:9] + [g if j in given else g.replace("|", "/").replace("1/0", "0/1")
                        for j, g in enumerate(r[9:])] for r in records]  # fmt: skip
    raw = write_vcf(tmp_path / "mixed.vcf", header, records)
    harmonise(env, raw, tmp_path / "aligned", phase=phase)
    fake_beagle(tmp_path, monkeypatch, SWAP_PHASED.replace("DROP", ""))
    report = phase_target(tmp_path / "aligned" / "target.vcf.gz", env.reference,
                          tmp_path / "phased.vcf.gz", tmp_path / "phase.json",
                          **({} if phase == "auto" else {"keep_given_phase": False}))  # fmt: skip
    truth = truth_genotypes(env)
    _, out = vcf_lines(tmp_path / "phased.vcf.gz")
    got = np.array([[[int(a) for a in g.split("|")] for g in r[9:]] for r in out])
    het = truth[..., 0] != truth[..., 1]
    for j in range(truth.shape[1]):
        kept = np.array_equal(got[:, j], truth[:, j])
        assert kept == (j in given and phase == "auto") or not het[:, j].any()
    assert report["samples_given_phased_kept"] == (3 if phase == "auto" else 0)


def test_a_failing_phaser_says_what_went_wrong(env, tmp_path, monkeypatch):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    fake_beagle(tmp_path, monkeypatch, "print('ERROR: no markers in the window'); sys.exit(3)\n")
    with pytest.raises(ToolError) as e:
        phase_target(tmp_path / "aligned" / "target.vcf.gz", env.reference,
                     tmp_path / "phased.vcf.gz", tmp_path / "phase.json")  # fmt: skip
    msg = str(e.value)
    assert "with beagle failed (exit status 3: ERROR: no markers in the window)" in msg
    assert "impute.phase: never" in msg


def test_phase_args_that_the_workflow_sets_are_refused_before_the_phaser_runs(
    env, tmp_path, monkeypatch
):
    """impute.phase_args naming an argument the workflow gives the phaser (seed=, nthreads=,
    impute=, ...) made Beagle stop with "duplicate arguments" once the run reached phasing; it is
    refused with the config key that sets it, before the phaser runs."""
    assert phase_args_problems("beagle", "window=30 ne=1000") == []
    assert phase_args_problems("beagle", "seed=5 nthreads=2 impute=true") == [
        "seed (set from baselines.beagle.seed)",
        "nthreads (set from impute.threads)",
        "impute (set from phasing only (impute=false))",
    ]
    assert phase_args_problems("shapeit5", "--seed 3 --pbwt-depth 8 -T 4") == [
        "--seed (set from baselines.beagle.seed)",
        "-T (set from impute.threads)",
    ]
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    fake_beagle(tmp_path, monkeypatch, "open('ran', 'w').write('x')\nsys.exit(1)\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"impute.phase_args names what the workflow gives beagle "
                       r"itself: seed \(set from baselines.beagle.seed\)"):  # fmt: skip
        phase_target(tmp_path / "aligned" / "target.vcf.gz", env.reference,
                     tmp_path / "phased.vcf.gz", tmp_path / "phase.json", args="seed=7")  # fmt: skip
    assert not (tmp_path / "ran").exists()


def test_workflow_refuses_phase_args_it_sets_itself_before_anything_runs(tmp_path):
    (tmp_path / "bad.yaml").write_text("results: results\nimpute: {phase_args: 'nthreads=4'}\n")
    r = _snakemake(tmp_path, tmp_path / "bad.yaml", targets=("-n",))
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "impute.phase_args names what the workflow gives beagle itself: nthreads" in text
    assert "impute.threads" in text and not (tmp_path / "results").exists()


def test_a_missing_phaser_is_named(env, tmp_path, monkeypatch):
    raw = unphased_target(env, tmp_path / "raw.vcf")
    harmonise(env, raw, tmp_path / "aligned")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither beagle nor phase_common
    with pytest.raises(ToolError, match=r"SHAPEIT5 \(`phase_common`\) is not on PATH"):
        phase_target(tmp_path / "aligned" / "target.vcf.gz", env.reference,
                     tmp_path / "phased.vcf.gz", tmp_path / "phase.json", phaser="shapeit5")  # fmt: skip


def _calls(alleles, unphased=None):
    import pandas as pd

    n = alleles.shape[0]
    sites = pd.DataFrame({"chrom": "20", "pos": np.arange(1, n + 1) * 10, "id": ".",
                          "ref": "A", "alt": "G"})  # fmt: skip
    m = alleles.shape[1] // 2
    un = np.zeros((n, m), bool) if unphased is None else unphased
    return Calls("x.vcf.gz", sites, [f"S{i}" for i in range(m)], alleles, un)


def test_check_phased_refuses_a_changed_genotype_and_reorders_samples():
    raw = _calls(np.array([[0, 1, 1, 1], [0, 0, -1, -1]], np.int8))
    ok = _calls(np.array([[1, 0, 1, 1], [0, 0, 0, 1]], np.int8))  # phase swapped, missing filled
    assert check_phased(raw, ok, "beagle") is ok
    changed = _calls(np.array([[0, 0, 1, 1], [0, 0, 0, 1]], np.int8))
    with pytest.raises(ToolError, match=r"changed 1 called genotypes .*sample S0 at 20:10"):
        check_phased(raw, changed, "beagle")
    swapped = Calls(ok.path, ok.sites, ["S1", "S0"], ok.alleles[:, [2, 3, 0, 1]], ok.unphased)
    back = check_phased(raw, swapped, "beagle")
    assert back.samples == ["S0", "S1"] and np.array_equal(back.alleles, ok.alleles)


# -- the demo's array noise ------------------------------------------------------------------------------


def test_array_noise_rates_and_seed():
    rng = np.random.default_rng(1)
    alleles = rng.integers(0, 2, size=(2000, 200)).astype(np.int8)
    noise = ArrayNoise(genotype_error=0.01, missing_rate=0.02, seed=5)
    out, drawn = add_array_noise(alleles, noise, "20")
    g_in = alleles[:, 0::2] + alleles[:, 1::2]
    missing = out[:, 0::2] < 0
    g_out = out[:, 0::2] + out[:, 1::2]
    wrong = ~missing & (g_out != g_in)
    assert drawn["missing_calls"] == missing.sum() and drawn["genotype_errors"] == wrong.sum()
    assert abs(missing.mean() - 0.02) < 0.003 and abs(wrong.mean() - 0.01 * 0.98) < 0.002
    assert ((out[:, 0::2] < 0) == (out[:, 1::2] < 0)).all()  # a missing call is ./.
    again, _ = add_array_noise(alleles, noise, "20")
    other, _ = add_array_noise(alleles, noise, "21")
    assert np.array_equal(out, again) and not np.array_equal(out, other)
    same, drawn0 = add_array_noise(alleles, ArrayNoise(unphased=True), "20")
    assert np.array_equal(same, alleles) and drawn0["genotype_errors"] == 0


def test_demo_targets_with_array_noise(env, tmp_path):
    from ragimpute.targets import make_demo_targets

    noise = {"unphased": True, "genotype_error": 0.05, "missing_rate": 0.05, "seed": 9}
    info = make_demo_targets(
        env.panel, env.split, env.windows, env.array, CHROM, tmp_path / "t.vcf.gz",
        tmp_path / "truth.vcf.gz", noise=noise, report_json=tmp_path / "t.json",
    )  # fmt: skip
    assert info["noise"] == noise and info["genotype_errors"] > 0 and info["missing_calls"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["missing_calls"] == info["missing_calls"]
    header, records = vcf_lines(tmp_path / "t.vcf.gz")
    assert any(h.startswith("##ragimpute_demo_targets=<unphased=True") for h in header)
    gts = [g for r in records for g in r[9:]]
    assert set(gts) <= {"0/0", "0/1", "1/1", "./."} and "|" not in "".join(gts)
    assert sum(g == "./." for g in gts) == info["missing_calls"]
    # the truth stays the true phased genotypes
    assert vcf_lines(tmp_path / "truth.vcf.gz")[1] == vcf_lines(env.truth)[1]


# -- the workflow ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / ".test" / "tiny" / "config.yaml"


def _snakemake(workdir: Path, *configs: Path, targets=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "-d",
           str(workdir), "--cores", "2", "--configfile", str(TINY), *map(str, configs)]  # fmt: skip
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)


NOISY = """
results: results
demo: {unphased_targets: true, genotype_error: 0.002, missing_rate: 0.005, hotspots: 5}
impute: {threads: 1, max_missing: 0.3}
evaluate: {methods: [af, copying, beagle, minimac4]}
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_BEAGLE or not shutil.which("minimac4"), reason="needs beagle, minimac4"
)
def test_workflow_phases_noisy_array_targets_and_gives_every_method_the_map(tmp_path):
    (tmp_path / "noisy.yaml").write_text(NOISY)
    r = _snakemake(
        tmp_path, tmp_path / "noisy.yaml", targets=("results/evaluation/comparison.tsv",)
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = tmp_path / "results"
    t = res / "targets" / "20"
    alignment = json.loads((t / "aligned" / "alignment.json").read_text())
    assert alignment["phasing"]["needs_phasing"] and alignment["phasing"]["unphased_heterozygotes"]
    assert alignment["missing"]["alleles_missing_at_typed_sites"] > 0
    rel = "results/targets/20"  # paths as the workflow gives them (results: results, -d workdir)
    phased = f"{rel}/phased/target.vcf.gz"
    phase = json.loads((t / "phased" / "phase.json").read_text())
    map_file = f"{rel}/genetic_map.map"
    assert phase["genetic_map"] == map_file and f"map={map_file}" in phase["command"]
    assert (res / "logs" / "phase" / "20.log").is_file()
    assert (res / "benchmarks" / "phase" / "20.tsv").is_file()
    # the demo's hotspot map is the map of every method
    assert json.loads((res / "windows/20/windows.json").read_text())["genetic_map"].endswith(
        "demo/genetic_map.map"
    )
    # ours and Minimac4 impute the phased target; Beagle phases the harmonised one itself
    copying = json.loads((res / "impute/20/copying.json").read_text())
    assert copying["target"] == phased
    assert copying["missing_alleles_imputed_at_typed_sites"] > 0
    # Minimac4 gets the phaser's fills of the missing calls (imputation servers give it Eagle's):
    # every typed site, where it had lost those with a missing call
    mm = json.loads((t / "aligned/minimac4.json").read_text())
    assert mm["source"] == f"{rel}/phased/filled.vcf.gz"
    assert (
        mm["sites_with_missing_calls_left_out"] == 0 and mm["missing_alleles_filled_by_the_phaser"]
    )
    beagle_log = (res / "logs/impute/20/beagle.log").read_text()
    assert f"map={map_file}" in beagle_log and f"gt={rel}/aligned/target.vcf.gz" in beagle_log
    assert f"--map {map_file}" in (res / "logs/impute/20/minimac4.log").read_text()
    table = (res / "evaluation" / "comparison.tsv").read_text()
    for m in ("af", "copying", "beagle", "minimac4"):
        assert f"\n{m}\tall\t" in table
    # the truth stays the true phased genotypes: no "/" in it
    assert "/" not in "".join(r[9] for r in vcf_lines(t / "truth.vcf.gz")[1])


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_BEAGLE, reason="Beagle 5.4 is not on PATH")
def test_workflow_own_unphased_target_never_then_auto_whole_panel_reference(tmp_path):
    """Your own unphased array target: impute.phase never stops with the fix; auto phases it and
    imputes it from every panel sample (reference.vcf.gz, the state index and the report)."""
    from ragimpute.vcf_io import vcf_samples

    env = shared_env_for(tmp_path)
    header, records = vcf_lines(env.target)
    cols = header[-1].split("\t")
    header[-1] = "\t".join(cols[:9] + [f"EXT{i}" for i in range(len(cols) - 9)])
    records = [r[:9] + [g.replace("|", "/").replace("1/0", "0/1") for g in r[9:]] for r in records]
    own = write_vcf(tmp_path / "cohort.vcf", header, records)
    base = f"results: results\nimpute: {{target_vcf: {own}, threads: 1}}\n"
    base += "evaluate: {methods: [af, copying]}\n"
    (tmp_path / "never.yaml").write_text(base.replace("threads: 1", "threads: 1, phase: never"))
    (tmp_path / "auto.yaml").write_text(base)
    imputed = ("results/impute/20/af.vcf.gz", "results/impute/20/copying.vcf.gz")
    r = _snakemake(tmp_path, tmp_path / "never.yaml", targets=imputed)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "genotypes are unphased" in err and "impute.phase is 'never'" in err and str(own) in err
    r = _snakemake(tmp_path, tmp_path / "auto.yaml", targets=imputed)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = tmp_path / "results"
    panel = vcf_samples(res / "demo/panel.vcf.gz")
    # every panel sample (in split order: train, val, test)
    assert sorted(vcf_samples(res / "targets/20/reference.vcf.gz")) == sorted(panel)
    report = json.loads((res / "impute/20/copying.json").read_text())
    assert sorted(report["engine"]["reference_samples"]) == sorted(panel)
    assert report["target"] == "results/targets/20/phased/target.vcf.gz"
    assert vcf_samples(res / "impute/20/copying.vcf.gz") == [
        f"EXT{i}" for i in range(len(cols) - 9)
    ]


def shared_env_for(tmp_path):
    """A small target to bring as your own (the impute env's test-split target)."""
    from impute_data import build_env

    return build_env(tmp_path / "env")


@pytest.mark.slow
def test_workflow_phase_always_without_a_phaser_says_why_it_phases(tmp_path):
    """impute.phase always on a phased target (no unphased heterozygote) with the phaser not
    installed: the error says the target is to be phased because of `always` (it said the target
    had "unphased genotypes (0 heterozygotes)") and points to impute.phase auto."""
    (tmp_path / "always.yaml").write_text(
        "results: results\nimpute: {threads: 1, phase: always}\nevaluate: {methods: [af]}\n"
    )
    r = _snakemake(tmp_path, tmp_path / "always.yaml",
                   targets=("results/targets/20/aligned/alignment.json",))  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    bindir = tmp_path / "bin"  # the tools but no beagle
    bindir.mkdir()
    for tool in ("bcftools", "tabix", "bgzip", "bash", "sh", "which", "env", "cat", "ls", "rm"):
        if shutil.which(tool):
            (bindir / tool).symlink_to(shutil.which(tool))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "-d",
           str(tmp_path), "--cores", "1", "--configfile", str(TINY), str(tmp_path / "always.yaml")]  # fmt: skip
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{Path(sys.executable).parent}"}
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "the target of 20 is to be phased (impute.phase: always)" in text
    assert "(and impute.phase: auto)" in text and "0 heterozygotes" not in text


def test_a_killed_phasing_job_leaves_no_phaser_running(tmp_path):
    """SIGKILL of the job's process (a kill from outside, an out-of-memory kill) left Beagle running
    on, orphaned, writing into a scratch directory the next job removes. The phaser dies with it."""
    import signal

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "beagle"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 120\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    code = (
        "from pathlib import Path\nfrom ragimpute.phasing import run_phaser\n"
        f"run_phaser('beagle', 't.vcf.gz', 'r.vcf.gz', Path({str(tmp_path)!r}) / 'out', '20', "
        "None, 1, 1, None, '')\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    job = subprocess.Popen([sys.executable, "-c", code], env=env)
    pid_file = tmp_path / "pid"
    phaser = pid_written(pid_file)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not survivors([phaser]), "the phaser outlived the killed job"
