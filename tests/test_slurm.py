"""The tiny pipeline, its chromosome in two chunks and its targets in two batches, through a real
SLURM: `snakemake --profile profiles/slurm` (with the profiles/slurm-local overlay for a cluster
without accounting), every job submitted with sbatch, each chunk in jobs of its own that run side by
side, the profile's resources in the requests SLURM received, and artifacts equal to those of the
same configuration run locally.

Needs a SLURM controller and the executor plugin (pip install -e '.[slurm]'); .ci/run starts a
single-node cluster with tools/local-slurm/start.sh. Skipped with the reason when either is missing,
except where RAGIMPUTE_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from workflow_runs import (
    CHUNKS,
    REPO,
    SNAKEFILE,
    TINY,
    TINY_RESULTS,
    compare_runs,
    expected_resources,
    job_blocks,
    jobs_in_log,
    load_profile,
    wildcard_dict,
    workflow_rules,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# How .ci/run starts the local cluster: a fake GPU and room for the profile's cluster-sized memory
# requests, so that profiles/slurm runs unchanged (nothing is enforced on this node).
START = "FAKE_GPUS=1 NODE_MEM_MB=262144 bash tools/local-slurm/start.sh"
TIMEOUT_S = 600  # the run takes about a minute; SIGINT then lets Snakemake cancel its SLURM jobs
# Pending reasons that never clear by waiting: the job asks for more than any node has.
HOPELESS = ("PartitionConfig", "BadConstraints", "ReqNodeNotAvail", "PartitionNodeLimit")


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def scontrol_fields(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", text))


def why_no_cluster() -> str | None:
    """None when a SLURM controller answers and its node can run the profile's jobs; else why not."""
    if not shutil.which("sbatch"):
        return "SLURM client tools are not installed (apt-get install slurm-wlm munge)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "the SLURM executor plugin is not installed (pip install -e '.[slurm]')"
    ping = _run("scontrol", "ping")
    if " is UP" not in ping.stdout:
        return f"no SLURM controller answers (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()}); start one: {START}"
    nodes = [
        scontrol_fields(line) for line in _run("scontrol", "-o", "show", "node").stdout.splitlines()
    ]
    usable = [n for n in nodes if re.match(r"(IDLE|MIXED|ALLOCATED)", n.get("State", ""))]
    if not usable:
        return f"no SLURM node is up: {[(n.get('NodeName'), n.get('State')) for n in nodes]}"
    # the node must fit the largest request of a rule the workflow has, or sbatch refuses the job
    profile = load_profile("slurm")["set-resources"]
    rules = workflow_rules() & profile.keys()
    mem = max(expected_resources(r).get("mem_mb", 0) for r in rules)
    gpu = any(profile[r].get("gpu", 0) not in (0, "0") for r in rules)
    node = max(usable, key=lambda n: int(n.get("RealMemory", 0)))
    if int(node.get("RealMemory", 0)) < mem or (gpu and "gpu" not in node.get("Gres", "")):
        return (
            f"node {node.get('NodeName')} (RealMemory={node.get('RealMemory')} MB, "
            f"Gres={node.get('Gres')}) cannot take the profile's requests ({mem} MB"
            f"{', a GPU' if gpu else ''}); restart the local cluster as CI does: {START}"
        )
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = why_no_cluster()
    if reason is None:
        return
    if os.environ.get("RAGIMPUTE_REQUIRE_SLURM") == "1":
        pytest.fail(f"RAGIMPUTE_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def run_watched(cmd: list[str], workdir: Path, timeout: float) -> tuple[int, str, str]:
    """Run ``cmd`` (a Snakemake run submitting to SLURM); stop it with SIGINT, so that Snakemake
    cancels its jobs, at the timeout or as soon as one of its jobs waits for a node that cannot
    take it (SLURM would keep it pending forever). Returns (exit code, output, why it was stopped)."""
    out = workdir / "snakemake.out"
    with out.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=f, stderr=subprocess.STDOUT, text=True)
        deadline, stopped = time.monotonic() + timeout, ""
        while proc.poll() is None:
            time.sleep(2)
            pending = _run("squeue", "-h", "-t", "PD", "-o", "%i %r %Z").stdout.split("\n")
            hopeless = [
                line
                for line in pending
                if line.endswith(str(workdir)) and line.split(" ")[1] in HOPELESS
            ]
            if hopeless or time.monotonic() > deadline:
                stopped = f"SLURM jobs that no node can take: {hopeless}" if hopeless else "timeout"
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                break
    return proc.returncode, out.read_text(), stopped


def mb(value: str) -> float:
    """SLURM's memory display (32000M, 62.50G) in MB."""
    num, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", value).groups()
    return float(num) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit]


def minutes(limit: str) -> int:
    """SLURM's time limit display ([D-]HH:MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = map(int, hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


# The chromosome in two chunks, the targets in two batches (CHUNKS): every kind of job of a scaled
# run (per chunk, per batch, the merges and the ligation) goes through sbatch. (Two chromosomes side
# by side: tests/test_scatter.py, locally.)


def test_pipeline_under_slurm(cluster, tiny_chunked_finished, tmp_path):
    local_wd = tiny_chunked_finished  # the same configuration run locally
    wd = tmp_path / "cluster"
    wd.mkdir()
    profiles = ["--profile", str(REPO / "profiles" / "slurm")]
    profiles += ["--profile", str(REPO / "profiles" / "slurm-local")]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(wd)]
    cmd += ["--configfile", str(TINY), str(CHUNKS), *profiles]
    t0 = time.monotonic()
    rc, log, stopped = run_watched(cmd, wd, TIMEOUT_S)
    elapsed = time.monotonic() - t0
    assert rc == 0 and not stopped, f"rc={rc} after {elapsed:.0f} s {stopped}\n{log[-6000:]}"

    # -- every job went through sbatch ----------------------------------------------------------
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", log)
    assert submitted, log[-3000:]
    ids = [i for i, _ in submitted]
    assert len(set(ids)) == len(ids)
    slurm_logs = {i: Path(p).read_text() for i, p in submitted}  # kept by profiles/slurm-local
    assert all(Path(p).stem == i for i, p in submitted)
    main_jobs = jobs_in_log(log)
    in_slurm = {i: jobs_in_log(text) for i, text in slurm_logs.items()}
    assert set().union(*in_slurm.values()) == main_jobs
    # nothing ran on the submit host (only target rules such as `all`, which run nothing)
    assert not [b for b in job_blocks(log) if b["local"] and b["output"]]
    rules = {rule for rule, _ in main_jobs}
    assert rules >= {"demo_panel", "split", "window", "mask", "index", "states", "impute", "beagle"}
    assert rules >= {"merge_batches", "ligate"}  # the batches merged, the chunks ligated

    # -- chunks in jobs of their own, side by side; batches too ----------------------------------
    units = ["20.c000", "20.c001"]

    def units_of(jobs):
        return {wildcard_dict(w).get("unit") for _, w in jobs} - {None}

    assert all(len(units_of(jobs)) <= 1 for jobs in in_slurm.values()), in_slurm
    for rule in ("window", "mask", "states"):
        by_unit = {
            u: [
                i
                for i, jobs in in_slurm.items()
                if any(r_ == rule and wildcard_dict(w).get("unit") == u for r_, w in jobs)
            ]
            for u in units
        }
        assert all(len(v) == 1 for v in by_unit.values()), (rule, by_unit)
    batches = {
        (wildcard_dict(w)["unit"], wildcard_dict(w)["batch"])
        for jobs in in_slurm.values()
        for r_, w in jobs
        if r_ == "impute" and wildcard_dict(w).get("method") == "copying"
    }
    assert batches == {(u, b) for u in units for b in ("b000", "b001")}
    ligated = {
        wildcard_dict(w).get("chrom")
        for jobs in in_slurm.values()
        for r_, w in jobs
        if r_ == "ligate"
    }
    assert ligated == {"20"}

    info = {}
    for i in ids:
        shown = _run("scontrol", "show", "job", "-o", i)
        if shown.returncode == 0:
            info[i] = scontrol_fields(shown.stdout)
    min_job_age = int(
        re.search(r"MinJobAge\s*=\s*(\d+)", _run("scontrol", "show", "config").stdout).group(1)
    )
    if elapsed < min_job_age:  # SLURM forgets a finished job MinJobAge s after it ended
        assert info.keys() == set(ids)
    assert all(f["JobState"] == "COMPLETED" for f in info.values()), info

    window = [i for i, jobs in in_slurm.items() if {r_ for r_, _ in jobs} == {"window"}][:2]
    if set(window) <= info.keys():
        spans = [
            (
                datetime.fromisoformat(info[i]["StartTime"]),
                datetime.fromisoformat(info[i]["EndTime"]),
            )
            for i in window
        ]
        (s1, e1), (s2, e2) = spans
        assert s1 <= e2 and s2 <= e1, f"two window jobs did not overlap in time: {spans}"

    # -- the profile's requests are what SLURM received ------------------------------------------
    blocks = {(b["rule"], b["wildcards"]): b for b in job_blocks(log) if b["output"]}
    checked = 0
    for i, jobs in in_slurm.items():
        if len(jobs) != 1 or i not in info:
            continue  # group jobs add up their members' requests
        ((rule, wildcards),) = jobs
        want = expected_resources(rule, wildcards)
        got = info[i]
        if "mem_mb" in want:  # else the rule's own (e.g. from the config), checked by Snakemake
            assert mb(got["MinMemoryNode"]) == want["mem_mb"], (rule, got["MinMemoryNode"])
        if "runtime" in want:
            assert minutes(got["TimeLimit"]) == want["runtime"], (rule, got["TimeLimit"])
        assert int(got["NumCPUs"]) == int(blocks[(rule, wildcards)].get("threads", 1)), rule
        gpus = re.search(r"gpu:(\d+)", got.get("TresPerJob", ""))
        assert (int(gpus.group(1)) if gpus else 0) == want.get("gpu", 0), (
            rule,
            got.get("TresPerJob"),
        )
        checked += 1
    assert checked >= 4  # demo_panel, split, 2 x window, 2 x mask at least

    # -- same artifacts as the local run ---------------------------------------------------------
    assert compare_runs(local_wd, wd, TINY_RESULTS) == []
    print(f"SLURM run: {len(ids)} sbatch jobs, {elapsed:.0f} s")
