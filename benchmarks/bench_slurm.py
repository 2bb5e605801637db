"""What the SLURM route costs: the same workflow run locally and through `--profile profiles/slurm`
(with the profiles/slurm-local overlay), wall time side by side, and per SLURM job the time it
queued, ran, and waited for Snakemake to notice it had ended (the executor's status polling).

Needs a running SLURM controller and the executor plugin, as tests/test_slurm.py does:

    FAKE_GPUS=1 NODE_MEM_MB=262144 MIN_JOB_AGE=3600 tools/local-slurm/start.sh
    python benchmarks/bench_slurm.py                    # tiny config, two chromosomes: ~2 min
    python benchmarks/bench_slurm.py --configfile .test/tiny/config.yaml my.yaml

Prints a summary and writes benchmarks/results/slurm.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def run(workdir: Path, configs: list[str], extra: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += ["--configfile", *configs, *extra]
    t0 = time.monotonic()
    # SIGINT at the limit lets Snakemake cancel its SLURM jobs
    r = subprocess.run(["timeout", "-s", "INT", "1800", *cmd], capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    if r.returncode:
        sys.exit(f"snakemake failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return elapsed, r.stdout + r.stderr


def slurm_jobs(log: str) -> list[dict]:
    """Per submitted job: rule (from the log path), queue, run and notice times in seconds."""
    jobs = []
    finished = {}  # Snakemake's "Finished jobid: N" time, by Snakemake job id
    for stamp, jobid in re.findall(
        r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]\nFinished jobid: (\S+)", log
    ):
        finished[jobid] = datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y")
    for smk_id, slurm_id, path in re.findall(
        r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", log
    ):
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True
        )
        f = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
        if "StartTime" not in f:
            continue  # forgotten by SLURM (MinJobAge)
        submit, start, end = (
            datetime.fromisoformat(f[k]) for k in ("SubmitTime", "StartTime", "EndTime")
        )
        job = {
            "rule": path.split("slurm_logs/")[1].split("/")[0].removeprefix("rule_"),
            "slurm_id": slurm_id,
            "queued_s": (start - submit).total_seconds(),
            "ran_s": (end - start).total_seconds(),
        }
        if smk_id in finished:
            job["noticed_after_s"] = (finished[smk_id] - end).total_seconds()
        jobs.append(job)
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--configfile",
        nargs="+",
        default=[str(REPO / ".test/tiny/config.yaml"), str(REPO / ".test/two-chrom/config.yaml")],
    )
    a = p.parse_args()
    profiles = [
        "--profile",
        str(REPO / "profiles/slurm"),
        "--profile",
        str(REPO / "profiles/slurm-local"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        local_dir, slurm_dir = Path(tmp, "local"), Path(tmp, "slurm")
        local_dir.mkdir()
        slurm_dir.mkdir()
        local_s, _ = run(local_dir, a.configfile, ["--cores", "2"])
        slurm_s, log = run(slurm_dir, a.configfile, profiles)
    jobs = slurm_jobs(log)

    def median(key: str) -> float | None:
        values = [j[key] for j in jobs if key in j]
        return round(statistics.median(values), 1) if values else None

    result = {
        "configs": a.configfile,
        "local_s": round(local_s, 1),
        "slurm_s": round(slurm_s, 1),
        "sbatch_jobs": len(jobs),
        "median_queued_s": median("queued_s"),
        "median_ran_s": median("ran_s"),
        "median_noticed_after_s": median("noticed_after_s"),
        "jobs": jobs,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "slurm.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"local {result['local_s']} s, SLURM {result['slurm_s']} s for {len(jobs)} sbatch jobs; "
        f"per job (median): queued {result['median_queued_s']} s, ran {result['median_ran_s']} s, "
        f"noticed {result['median_noticed_after_s']} s after it ended"
    )


if __name__ == "__main__":
    main()
