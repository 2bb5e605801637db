"""The Snakemake workflow on the tiny config: artifacts, and the mask-hash keyed rebuild/re-use rules.

One test walks through the states in order (each snakemake start costs seconds, so the runs are
shared): a fresh run, a changed mask, the original mask back, no change, a deleted mask store entry,
and a query against the index of another mask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragimpute.masks import load_mask

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / ".test" / "tiny" / "config.yaml"
SPLITS = ("train", "val", "test")
# This test is about the foundation stages: it asks for them by their stage targets (every chromosome's
# windows, and the indexes and retrieval tables (hence tokens) of every current mask), so that training
# and imputation downstream neither slow these runs down nor re-run on mask changes.
FOUNDATION = ["window_all", "index_all", "retrieve_all"]

pytestmark = pytest.mark.slow


def snakemake(configs: list[Path], *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *FOUNDATION,  # before the options: --configfile and --forcerun take several values
        "--cores",
        "2",
        "--configfile",
        str(TINY),
        *map(str, configs),
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def ran(result: subprocess.CompletedProcess, rule: str) -> bool:
    return f"(Rule: {rule})" in result.stderr + result.stdout


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def current_hashes(res: Path) -> list[str]:
    return json.loads((res / "masks" / "20" / "current.json").read_text())["hashes"]


def test_workflow_mask_keyed_rebuilds(tmp_path):
    res = tmp_path / "results"
    override = tmp_path / "override.yaml"
    override.write_text(f"results: {res}\n")
    random_mask = tmp_path / "random-mask.yaml"
    random_mask.write_text("mask:\n  strategy: random\n  rate: 0.3\n")

    # 1. from an empty results directory: every artifact, log and benchmark
    r = snakemake([override])
    assert r.returncode == 0, r.stderr[-3000:]
    (h,) = current_hashes(res)
    expected = [
        "demo/panel.vcf.gz",
        "demo/panel.vcf.gz.tbi",
        "demo/array_sites.tsv",
        "demo/demo.json",
        "split/samples.tsv",
        "split/samples.json",
        "windows/20/sites.parquet",
        "windows/20/windows.parquet",
        "windows/20/skipped.tsv",
        "windows/20/windows.json",
        *[f"windows/20/haplotypes/{s}.parquet" for s in SPLITS],
        f"masks/20/{h}/mask.parquet",
        f"masks/20/{h}/spec.json",
        *[f"tokens/20/{h}/{s}.parquet" for s in SPLITS],
        f"tokens/20/{h}/vocab.json",
        f"index/20/{h}/meta.json",
        f"index/20/{h}/windows/w00000.faiss",
        *[f"retrieval/20/{h}/{s}.parquet" for s in SPLITS],
        "logs/window/20.log",
        "logs/mask/20.log",
        f"logs/index/20/{h}.log",
        "benchmarks/window/20.tsv",
        f"benchmarks/index/20/{h}.tsv",
        *[f"benchmarks/retrieve/20/{h}/{s}.tsv" for s in SPLITS],
    ]
    missing = [p for p in expected if not (res / p).is_file()]
    assert not missing
    meta = json.loads((res / "index" / "20" / h / "meta.json").read_text())
    assert meta["mask_hash"] == h and meta["n_windows"] == len(
        list((res / f"index/20/{h}/windows").iterdir())
    )
    windows_before = mtimes(res / "windows" / "20")
    index_a = (res / "index" / "20" / h / "meta.json").stat().st_mtime_ns

    # 2. another mask: a new hash and a new index; windows are not re-written
    r = snakemake([override, random_mask])
    assert r.returncode == 0, r.stderr[-3000:]
    (h2,) = current_hashes(res)
    assert h2 != h
    assert (res / "index" / "20" / h2 / "meta.json").is_file()
    assert json.loads((res / "index" / "20" / h2 / "meta.json").read_text())["mask_hash"] == h2
    assert ran(r, "index") and not ran(r, "window") and not ran(r, "split")
    assert mtimes(res / "windows" / "20") == windows_before
    assert (res / "index" / "20" / h / "meta.json").stat().st_mtime_ns == index_a  # kept

    # 3. the original mask again: the checkpoint finds hash h, whose index is re-used
    r = snakemake([override])
    assert r.returncode == 0, r.stderr[-3000:]
    assert current_hashes(res) == [h]
    assert ran(r, "mask") and not ran(r, "index") and not ran(r, "tokenize")
    assert (res / "index" / "20" / h / "meta.json").stat().st_mtime_ns == index_a
    assert mtimes(res / "windows" / "20") == windows_before

    # 4. nothing changed: nothing to do
    r = snakemake([override])
    assert r.returncode == 0 and "Nothing to be done" in r.stderr + r.stdout

    # 5. a deleted mask store entry: a clear error as soon as a job needs it ...
    mask_file = res / "masks" / "20" / h / "mask.parquet"
    masked_before = load_mask(mask_file.parent.parent, h).masked
    mask_file.unlink()
    index_dir = res / "index" / "20" / h
    subprocess.run(["rm", "-r", str(index_dir)], check=True)
    r = snakemake([override])
    assert r.returncode != 0
    assert f"{mask_file} is missing" in r.stderr and "snakemake --forcerun mask" in r.stderr
    # ... and --forcerun mask writes the same mask back (then the index is rebuilt)
    r = snakemake([override], "--forcerun", "mask")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        load_mask(mask_file.parent.parent, h).masked == masked_before
    ).all()  # re-hashed on load
    assert (index_dir / "meta.json").is_file()

    # 6. a query tokenized with mask h2 against the index of mask h is refused
    out = tmp_path / "foreign.parquet"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ragimpute.cli",
            "retrieve",
            "--tokens",
            str(res / f"tokens/20/{h2}/val.parquet"),
            "--index",
            str(index_dir),
            "-k",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"built with mask {h}; the queries were tokenized with mask {h2}" in r.stderr
    assert not out.exists()


def test_lint_and_dry_run(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text(f"results: {tmp_path / 'results'}\n")
    r = snakemake([override], "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    r = snakemake([override], "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "demo_panel" in r.stdout + r.stderr
    assert not os.path.exists(tmp_path / "results" / "demo")


@pytest.mark.parametrize("rule", ["index", "states"])
def test_until_a_mask_keyed_stage_is_refused(tmp_path, rule):
    """--until cannot see the jobs whose paths carry a mask hash (behind the mask checkpoint): after a
    changed mask it ran nothing, not even the mask, and the old index stood as if current. Refused
    before anything runs, with the stage target to use instead."""
    override = tmp_path / "override.yaml"
    override.write_text(f"results: {tmp_path / 'results'}\n")
    r = snakemake([override], "--until", rule, "-n")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert f"--until {rule}" in out and "index_all" in out
    r = snakemake([override], "--until", "mask", "-n")  # before the checkpoint: works
    assert r.returncode == 0, r.stderr[-3000:]
