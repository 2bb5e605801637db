"""Shared fixtures: seeded tiny msprime panels (via ``ragimpute.demo``) and hand-made VCF text.

Session fixtures build each artifact once (demo panel -> split -> windows -> mask -> tokens -> index);
tests must treat them as read-only and write anything of their own under ``tmp_path``.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from ragimpute.demo import DemoSpec, make_demo
from ragimpute.split import load_split, random_split, write_split

HAVE_BCFTOOLS = shutil.which("bcftools") is not None
needs_bcftools = pytest.mark.skipif(
    not HAVE_BCFTOOLS, reason="bcftools CLI not on PATH (apt-get install bcftools)"
)

# One tiny panel for most tests: ~470 biallelic SNVs, 30 samples (60 haplotypes), one multi-allelic site.
DEMO_SPEC = DemoSpec(seed=5, n_samples=30, sequence_length=200_000, array_spacing_bp=2000)
WINDOW_LENGTH, WINDOW_OVERLAP = 64, 16


@pytest.fixture(autouse=True)
def _restore_logging():
    """``ragimpute.logs.setup_logging`` (called by the CLI) replaces the root handlers with ones bound
    to this test's captured stderr; put pytest's back so later tests do not log to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


# -- hand-made VCF text ---------------------------------------------------------------------------


def vcf_text(
    records: list[tuple],
    samples: list[str],
    contigs: tuple[str, ...] | None = ("20",),
    extra_header: tuple[str, ...] = (),
    fmt: str = "GT",
) -> str:
    """VCF text from ``(chrom, pos, ref, alt, filter, [gt per sample])`` tuples.

    ``contigs=None`` leaves out the ``##contig`` lines (many hand-made and older files have none).
    """
    head = [
        "##fileformat=VCFv4.2",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=DS,Number=1,Type=Float,Description="ALT dosage">',
    ]
    head += [f"##contig=<ID={c}>" for c in contigs or ()]
    head += list(extra_header)
    head.append(
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"] + samples
        )
    )
    body = [
        "\t".join([str(c), str(p), ".", ref, alt, ".", flt, ".", fmt, *gts])
        for c, p, ref, alt, flt, gts in records
    ]
    return "\n".join(head + body) + "\n"


def write_vcf(path: Path, text: str, compress: str | None = "bgzip", index: bool = False) -> Path:
    """Write VCF text plain, bgzipped (``bgzip``, optionally tabix-indexed) or plain-gzipped (``gzip``)."""
    path = Path(path)
    if compress is None:
        path.write_text(text)
    elif compress == "gzip":
        with gzip.open(path, "wt") as f:
            f.write(text)
    elif compress == "bgzip":
        plain = path.with_name(path.name + ".plain.vcf")
        plain.write_text(text)
        pysam.tabix_compress(str(plain), str(path), force=True)
        plain.unlink()
        if index:
            pysam.tabix_index(str(path), preset="vcf", force=True)
    else:
        raise ValueError(compress)
    return path


def random_records(
    rng: np.random.Generator, n_sites: int, n_samples: int, chrom: str = "20", start: int = 1000
) -> list[tuple]:
    """Phased biallelic SNV records at increasing positions with random genotypes."""
    out = []
    pos = start
    for _ in range(n_sites):
        pos += int(rng.integers(1, 50))
        ref, alt = rng.choice(list("ACGT"), size=2, replace=False)
        g = rng.integers(0, 2, size=(n_samples, 2))
        out.append((chrom, pos, str(ref), str(alt), "PASS", [f"{a}|{b}" for a, b in g]))
    return out


# -- independent readers (the references the package is checked against) --------------------------


def pysam_read(
    path: str | Path, chrom: str, pass_only: bool = True
) -> tuple[pd.DataFrame, np.ndarray]:
    """Biallelic PASS SNVs and their haplotypes, one pysam record and one sample at a time."""
    rows, haps = [], []
    with pysam.VariantFile(str(path)) as vf:
        samples = list(vf.header.samples)
        for rec in vf:
            if rec.chrom != chrom or rec.alts is None or len(rec.alts) != 1:
                continue
            alt = rec.alts[0]
            if len(rec.ref) != 1 or len(alt) != 1 or rec.ref not in "ACGT" or alt not in "ACGT":
                continue
            filters = list(rec.filter.keys())
            if pass_only and filters and filters != ["PASS"]:
                continue
            row = []
            for s in samples:
                call = rec.samples[s]
                assert call.phased
                row += list(call["GT"])
            rows.append((rec.chrom, rec.pos, rec.id or ".", rec.ref, alt))
            haps.append(row)
    sites = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt"])
    return sites, np.asarray(haps, dtype=np.uint8)


def bcftools_cli_read(
    path: str | Path, chrom: str, samples: list[str] | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The same through the bcftools command line (biallelic SNVs, PASS or '.' FILTER)."""
    cmd = ["bcftools", "view", "-m2", "-M2", "-v", "snps", "-f", "PASS,.", "-Ou"]
    if samples is not None:
        cmd += ["-s", ",".join(samples)]
    view = subprocess.run([*cmd, str(path)], check=True, capture_output=True)
    q = subprocess.run(
        ["bcftools", "query", "-t", chrom, "-f", "%CHROM\t%POS\t%ID\t%REF\t%ALT[\t%GT]\n", "-"],
        input=view.stdout,
        check=True,
        capture_output=True,
    )
    rows, haps = [], []
    for line in q.stdout.decode().splitlines():
        f = line.split("\t")
        rows.append((f[0], int(f[1]), f[2], f[3], f[4]))
        haps.append([int(a) for gt in f[5:] for a in gt.split("|")])
    sites = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt"])
    return sites, np.asarray(haps, dtype=np.uint8)


# -- the seeded demo pipeline, built once per session ---------------------------------------------


@dataclass
class Demo:
    dir: Path
    vcf: Path
    array: Path
    spec: DemoSpec


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    d = tmp_path_factory.mktemp("demo")
    make_demo(DEMO_SPEC, d / "panel.vcf.gz", d / "array_sites.tsv")
    return Demo(d, d / "panel.vcf.gz", d / "array_sites.tsv", DEMO_SPEC)


@pytest.fixture(scope="session")
def demo_split(demo, tmp_path_factory) -> Path:
    """A seeded 0.6/0.2/0.2 split of the demo samples (18/6/6)."""
    from ragimpute.vcf_io import vcf_samples

    out = tmp_path_factory.mktemp("split") / "samples.tsv"
    df = random_split(vcf_samples(demo.vcf), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    write_split(df, out, {"seed": 3})
    return out


@pytest.fixture(scope="session")
def demo_windows(demo, demo_split, tmp_path_factory) -> Path:
    from ragimpute.windows import run_window_stage

    out = tmp_path_factory.mktemp("windows") / "20"
    run_window_stage(demo.vcf, demo_split, "20", WINDOW_LENGTH, WINDOW_OVERLAP, out)
    return out


@pytest.fixture(scope="session")
def split_dict(demo_split) -> dict[str, list[str]]:
    return load_split(demo_split)


@pytest.fixture(scope="session")
def demo_tokens(demo_windows, tmp_path_factory) -> dict:
    """Tokens of every split under a seeded random mask (rate 0.4), and the mask store."""
    from ragimpute.masks import load_mask, run_mask_stage_dir
    from ragimpute.tokens import run_tokenize_stage

    base = tmp_path_factory.mktemp("tokens")
    store = base / "masks"
    (h,) = run_mask_stage_dir(
        demo_windows, {"strategy": "random", "rate": 0.4, "seed": 11}, store, base / "current.json"
    )
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = base / h / f"{split}.parquet"
        run_tokenize_stage(demo_windows, store, h, split, paths[split])
    return {"hash": h, "store": store, "mask": load_mask(store, h), "paths": paths, "dir": base}


# -- one finished run of the tiny config, shared by the workflow tests that only read it -----------


def _finished_run(tmp_path_factory, name: str, *configs: Path) -> Path:
    from workflow_runs import output, snakemake

    workdir = tmp_path_factory.mktemp(name)
    r = snakemake(workdir, "--cores", "2", configs=configs)
    assert r.returncode == 0, output(r)[-4000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_finished(tmp_path_factory) -> Path:
    """The working directory of one finished ``snakemake --cores 2`` run of .test/tiny/config.yaml
    (every method, Beagle and Minimac4 when installed; results under ``results-tiny/``). Read-only:
    copy it to change it. One run instead of one per module: it takes a minute or more."""
    from workflow_runs import TINY

    return _finished_run(tmp_path_factory, "tiny-finished", TINY)


@pytest.fixture(scope="session")
def tiny_chunked_finished(tmp_path_factory) -> Path:
    """The same with .test/chunks/config.yaml on top (two chunks, two sample batches), run locally:
    tests/test_chunks.py compares it with the chromosome in one piece, tests/test_slurm.py with the
    same run through SLURM. Read-only."""
    from workflow_runs import CHUNKS, TINY

    return _finished_run(tmp_path_factory, "tiny-chunked-finished", TINY, CHUNKS)


# -- processes that must die with a killed job ----------------------------------------------------


def pid_written(pid_file: Path, timeout: float = 60) -> int:
    """The pid a started process writes into ``pid_file``, once it has."""
    import time

    deadline = time.time() + timeout
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    return int(pid_file.read_text())


def survivors(pids: list[int], timeout: float = 10) -> list[int]:
    """Which of ``pids`` still run after ``timeout`` s (a zombie waiting to be reaped does not
    count); those are killed, so that a failing test leaves nothing behind."""
    import os
    import signal
    import time

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    deadline = time.time() + timeout
    while any(running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if running(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return left
