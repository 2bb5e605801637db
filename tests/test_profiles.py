"""The Snakemake profiles and conda environments: what they set, how they combine, and that the
cluster profile's per-rule resources reach the jobs (a dry run, no cluster needed; tests/test_slurm.py
submits them to a real SLURM)."""

from __future__ import annotations

import re

import pytest
import yaml
from workflow_runs import (
    REPO,
    expected_resources,
    job_blocks,
    job_stats,
    load_profile,
    output,
    snakemake,
    workflow_rules,
)

# Keys that must stay out of profiles/default: Snakemake loads it on every run, also with
# --profile profiles/slurm, and its keys win there. `cores` would cap every cluster job's threads at
# the submit host's core count; the others would replace the cluster profile's settings or tables.
CLUSTER_KEYS = {
    "cores",
    "jobs",
    "executor",
    "latency-wait",
    "retries",
    "default-resources",
    "set-resources",
    "set-threads",
    "resources",
    "groups",
    "local-cores",
    "max-threads",
}
# Keys whose value is a whole table: a later profile that sets one replaces the earlier table.
TABLE_KEYS = {"default-resources", "set-resources", "set-threads", "resources", "groups"}


def test_workflow_profile_leaves_the_cluster_profile_alone():
    default, slurm = load_profile("default"), load_profile("slurm")
    assert not CLUSTER_KEYS & default.keys()
    clashes = {k for k in default.keys() & slurm.keys() if default[k] != slurm[k]}
    assert not clashes, f"profiles/default would override profiles/slurm for {clashes}"


def test_local_cluster_overlay():
    slurm, local = load_profile("slurm"), load_profile("slurm-local")
    # a real cluster has accounting: the executor's own choice (sacct) must not be overridden there
    assert not any(k.startswith("slurm-status") for k in slurm)
    assert slurm["executor"] == "slurm"
    # without slurmdbd, sacct fails and the executor would wait forever
    assert local["slurm-status-command"] == "squeue"
    # setting a table here would silently drop the cluster profile's table
    assert not TABLE_KEYS & local.keys()
    # squeue forgets a job MinJobAge s after it ended; below 3x the init seconds the executor
    # falls back to sacct and hangs (shared/notes/local-slurm.md)
    start = (REPO / "tools" / "local-slurm" / "start.sh").read_text()
    min_job_age = int(re.search(r"MIN_JOB_AGE=\$\{MIN_JOB_AGE:-(\d+)\}", start).group(1))
    assert "MinJobAge=${MIN_JOB_AGE}" in start
    assert 3 * local["slurm-init-seconds-before-status-checks"] <= min_job_age


def test_every_rule_has_cluster_resources():
    rules = {r for r in workflow_rules() if re.fullmatch(r"\w+", r) and not r.endswith("all")}
    assert {"window", "mask", "index"} <= rules
    missing = rules - load_profile("slurm")["set-resources"].keys()
    assert not missing, f"rules without resources in profiles/slurm/config.yaml: {missing}"


def test_cluster_resources_dry_run(tmp_path):
    """profiles/slurm without its executor, in a dry run: every expression evaluates, a rule the
    workflow does not have is ignored, and the jobs carry the profile's memory and runtime."""
    profile = load_profile("slurm")
    del profile["executor"]
    profile["set-resources"]["no_such_rule"] = {"mem_mb": 1, "gpu": 3}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    r = snakemake(tmp_path, "-n", "--profile", str(tmp_path / "profile"))
    assert r.returncode == 0, output(r)[-3000:]
    # both chromosomes' window and mask jobs are known before anything ran (tests/test_scatter.py)
    assert job_stats(output(r))["window"] == 2
    jobs = [b for b in job_blocks(output(r)) if b["output"]]
    assert {b["rule"] for b in jobs} >= {"demo_panel", "split", "window", "mask"}
    for job in jobs:
        want = expected_resources(job["rule"], job["wildcards"])
        got = dict(kv.split("=", 1) for kv in job["resources"].split(", "))
        for key in ("mem_mb", "runtime", "gpu"):
            if key in want:
                assert got[key] == str(want[key]), (job["rule"], key, got)
    window = next(b for b in jobs if b["rule"] == "window")
    assert "mem_mb=32000," in window["resources"]  # the profile's, not the rule's 4000


def test_workstation_profile_dry_run(tmp_path):
    r = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "default"), "--cores", "2")
    assert r.returncode == 0, output(r)[-3000:]
    assert "Using profile" in r.stderr and "profiles/default" in r.stderr


def test_envs_are_pinned_and_used():
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert {e.name for e in envs} >= {"ragimpute.yaml", "torch.yaml"}
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        assert spec["channels"][:2] == ["conda-forge", "bioconda"], env
        assert "nodefaults" in spec["channels"], env
        for dep in spec["dependencies"]:
            if isinstance(dep, dict) or dep == "pip":
                continue
            assert re.fullmatch(r"[\w.-]+ =[\w.]+", dep), f"{env.name}: {dep!r} is not pinned"
    # every conda: directive names an env file that exists
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for path in re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", smk.read_text()):
            assert (smk.parent / path).resolve().is_file(), f"{smk.name}: {path}"


@pytest.mark.parametrize(
    "rule,wildcards,gpu",
    [("impute", "method=model", 1), ("impute", "method=af", 0), ("train", "", 1)],
)
def test_gpu_requests(rule, wildcards, gpu):
    # the model needs the GPU; the baselines imputed by the same rule do not
    assert expected_resources(rule, wildcards).get("gpu", 0) == gpu
