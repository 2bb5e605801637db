"""Helpers for tests that run the Snakemake workflow: a run in its own working directory, parsing of
Snakemake's job log, a shared two-chromosome run, and an artifact-by-artifact comparison of two runs.

Runs use ``-d <tmp dir>`` so that their results, ``.snakemake/`` metadata and SLURM logs stay out
of the repository and apart from each other; the workflow profile (profiles/default) is still
loaded, as it is for a user, because Snakemake finds it next to the Snakefile.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TINY = REPO / ".test" / "tiny" / "config.yaml"
TINY_RESULTS = "results-tiny"  # `results:` of .test/tiny/config.yaml
TWO_CHROM = REPO / ".test" / "two-chrom" / "config.yaml"
CHUNKS = REPO / ".test" / "chunks" / "config.yaml"  # on top of TINY
TWO_CHROM_RESULTS = "results-two-chrom"  # `results:` of .test/two-chrom/config.yaml
CHROMS = ("20", "21")


def snakemake(
    workdir: Path,
    *args: str,
    targets: tuple[str, ...] = (),
    configs: tuple[Path, ...] = (TINY, TWO_CHROM),
    wrap: tuple[str, ...] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``snakemake [targets] -s Snakefile -d workdir --configfile configs... args``.

    Targets go first: ``--configfile`` takes every following word up to the next option.
    ``wrap`` prefixes the command (e.g. ``timeout -s INT 600``).
    """
    cmd = [
        *wrap,
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "-s",
        str(SNAKEFILE),
        "-d",
        str(workdir),
        "--configfile",
        *map(str, configs),
        *args,
    ]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def output(r: subprocess.CompletedProcess) -> str:
    return r.stdout + r.stderr


# A job block in Snakemake's log starts with "rule window:" / "checkpoint mask:" (submitted to a
# cluster) or "localrule ...:" / "localcheckpoint ...:" (run by this Snakemake process), indented
# inside a group job's block, and is followed by "    key: value" lines (input, output, wildcards).
_HEADER = re.compile(r"^\s*(local)?(?:rule|checkpoint) (\w+):$")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")


def job_blocks(text: str) -> list[dict]:
    """Every job block of a Snakemake log: rule, local (run by this process, not submitted),
    wildcards, resources and threads (text, where the log shows them), input and output lists."""
    blocks: list[dict] = []
    current = None
    for line in text.splitlines():
        if m := _HEADER.match(line):
            current = {"rule": m.group(2), "local": bool(m.group(1)), "wildcards": ""}
            current.update(input=[], output=[])
            blocks.append(current)
        elif current is not None and (m := _FIELD.match(line)):
            key, value = m.groups()
            if key in ("input", "output"):
                current[key] = value.split(", ")
            elif key in ("wildcards", "resources", "threads"):
                current[key] = value.strip()
        else:
            current = None
    return blocks


def jobs_in_log(text: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job in a Snakemake log that writes something: target rules such
    as `all` (no output, nothing to run) are left out."""
    return {(b["rule"], b["wildcards"]) for b in job_blocks(text) if b["output"]}


def wildcard_dict(wildcards: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in wildcards.split(", ") if "=" in kv)


def job_stats(text: str) -> dict[str, int]:
    """The first "Job stats" table of a log (a dry run prints the jobs it knows of)."""
    m = re.search(r"Job stats:\n.*\n-+\s+-+\n((?:\S+\s+\d+\n)+)", text)
    assert m, f"no job stats in:\n{text[-2000:]}"
    return {k: int(v) for k, v in (line.split() for line in m.group(1).splitlines())}


@dataclass(frozen=True)
class Run:
    workdir: Path
    log: str  # Snakemake's output (stdout and stderr)


_LOCAL_TWO_CHROM: dict[str, Run] = {}


def local_two_chrom_run(tmp_path_factory) -> Run:
    """One local run (2 cores) of the tiny config on two chromosomes, made once per test session.

    Shared by the scatter tests; treat it as read-only: copy the working directory to change
    anything. (The SLURM test compares itself with the chunked tiny run, ``tiny_chunked_finished``.)
    """
    if "run" not in _LOCAL_TWO_CHROM:
        workdir = tmp_path_factory.mktemp("local-two-chrom")
        r = snakemake(workdir, "--cores", "2")
        assert r.returncode == 0, output(r)[-4000:]
        _LOCAL_TWO_CHROM["run"] = Run(workdir, output(r))
    return _LOCAL_TWO_CHROM["run"]


def chromosomes_of(path: str) -> set[str]:
    """The chromosomes a results path belongs to (``windows/20/...``, ``index/21/<hash>``)."""
    return set(Path(path).parts) & set(CHROMS)


# -- the cluster profile ----------------------------------------------------------------------------


def load_profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text()) or {}


class _Wildcards(dict):
    """Enough of Snakemake's Wildcards for the profile's expressions: attribute access and get()."""

    __getattr__ = dict.__getitem__


def workflow_rules() -> set[str]:
    """The rule names of the workflow (``snakemake --list-rules`` on the tiny config)."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--list-rules",
            "--configfile",
            ".test/tiny/config.yaml",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


def expected_resources(rule: str, wildcards: str = "", attempt: int = 1) -> dict:
    """What profiles/slurm sets for a job of ``rule`` itself: its set-resources, expressions evaluated
    as Snakemake does (with ``attempt`` and ``wildcards``). These win over the rule's own resources;
    default-resources (see default_resources) only fill in what neither sets."""
    raw = load_profile("slurm").get("set-resources", {}).get(rule, {})
    namespace = {"attempt": attempt, "wildcards": _Wildcards(wildcard_dict(wildcards))}
    return {k: eval(v, namespace) if isinstance(v, str) else v for k, v in raw.items()}


# -- comparing the artifacts of two runs ------------------------------------------------------------

# JSON keys whose values may differ between two runs of the same inputs (wall-clock measurements).
_VOLATILE_KEY = re.compile(
    r"(^|_)(seconds|secs|elapsed|time|timestamp|date|duration|host|hostname|pid|created|rss|per_s)"
    r"(_|$)"
)
# VCF header lines that record when or where a file was written.
_VOLATILE_VCF_HEADER = re.compile(r"^##(fileDate|.*[Tt]ime.*|.*[Dd]ate=)")


def _strip_volatile(obj):
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items() if not _VOLATILE_KEY.search(str(k))}
    if isinstance(obj, (list, tuple)):
        return [_strip_volatile(v) for v in obj]
    return obj


def _same_values(a, b) -> bool:
    """Deep equality where NaN equals NaN and tensors/arrays compare element-wise."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_values(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_values(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "numpy") and hasattr(b, "numpy"):  # torch tensors
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _table_without_volatile(text: str, sep: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text), delimiter=sep))
    if not rows:
        return rows
    keep = [i for i, col in enumerate(rows[0]) if not _VOLATILE_KEY.search(col)]
    return [[r[i] for i in keep if i < len(r)] for r in rows]


def artifact_files(results: Path) -> dict[str, Path]:
    """Every file under a results directory except logs and Snakemake benchmarks (timings)."""
    return {
        str(p.relative_to(results)): p
        for p in sorted(results.rglob("*"))
        if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "benchmarks")
    }


def same_artifact(a: Path, b: Path, workdir_a: Path, workdir_b: Path) -> bool:
    """Whether two artifacts hold the same content.

    Bytes first; else by kind: Parquet tables and their metadata, JSON without wall-clock keys,
    gzipped text (VCF, TSV) without date header lines. Absolute paths of the two working directories
    count as equal.
    """
    if a.read_bytes() == b.read_bytes():
        return True

    def norm(text: str, workdir: Path) -> str:
        return text.replace(str(workdir.resolve()), "<workdir>").replace(str(workdir), "<workdir>")

    name = a.name
    if name.endswith(".parquet"):
        ta, tb = pq.read_table(a), pq.read_table(b)
        meta = [
            {k.decode(): norm(v.decode(), w) for k, v in (t.schema.metadata or {}).items()}
            for t, w in ((ta, workdir_a), (tb, workdir_b))
        ]
        return ta.equals(tb) and meta[0] == meta[1]
    if name.endswith(".json"):
        ja = json.loads(norm(a.read_text(), workdir_a))
        jb = json.loads(norm(b.read_text(), workdir_b))
        return _strip_volatile(ja) == _strip_volatile(jb)
    if name.endswith(".gz"):
        try:
            la = norm(gzip.decompress(a.read_bytes()).decode(), workdir_a).splitlines()
            lb = norm(gzip.decompress(b.read_bytes()).decode(), workdir_b).splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        return [x for x in la if not _VOLATILE_VCF_HEADER.match(x)] == [
            x for x in lb if not _VOLATILE_VCF_HEADER.match(x)
        ]
    if name.endswith((".tsv", ".csv")):
        sep = "\t" if name.endswith(".tsv") else ","
        return _table_without_volatile(norm(a.read_text(), workdir_a), sep) == (
            _table_without_volatile(norm(b.read_text(), workdir_b), sep)
        )
    if name.endswith(".txt"):
        return norm(a.read_text(), workdir_a) == norm(b.read_text(), workdir_b)
    if name.endswith(".pt"):
        # checkpoints: the same weights, optimizer state and history, wall-clock columns aside
        import torch

        sa, sb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
        return _same_values(_strip_volatile(sa), _strip_volatile(sb))
    if name.endswith(".msav"):
        # Minimac4's compressed reference embeds a random 16-byte file id (savvy format), so two
        # runs never match byte for byte; the imputed minimac4.vcf.gz made from it is compared.
        return a.stat().st_size == b.stat().st_size
    return False


def compare_runs(workdir_a: Path, workdir_b: Path, results: str) -> list[str]:
    """Differences between the artifacts of two runs (empty: same files, same contents). Raises if
    either run has no artifacts under ``results``: two missing directories are not equal runs."""
    fa = artifact_files(workdir_a / results)
    fb = artifact_files(workdir_b / results)
    for workdir, files in ((workdir_a, fa), (workdir_b, fb)):
        if not files:
            raise AssertionError(f"no artifacts under {workdir / results}: nothing to compare")
    problems = [f"only in {workdir_a}: {k}" for k in sorted(fa.keys() - fb.keys())]
    problems += [f"only in {workdir_b}: {k}" for k in sorted(fb.keys() - fa.keys())]
    problems += [
        f"differs: {k}"
        for k in sorted(fa.keys() & fb.keys())
        if not same_artifact(fa[k], fb[k], workdir_a, workdir_b)
    ]
    return problems
