"""cli: every subcommand end to end on tiny data; user errors exit 1 with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ragimpute.cli import main
from ragimpute.index import HaplotypeIndex
from ragimpute.masks import load_mask
from ragimpute.split import load_split
from ragimpute.tokens import TokenTable
from ragimpute.vcf_io import read_panel


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """demo -> split -> window -> mask -> tokenize -> index -> retrieve through ``main``."""
    d = tmp_path_factory.mktemp("cli")
    p = {
        k: d / v
        for k, v in {
            "vcf": "panel.vcf.gz",
            "array": "array.tsv",
            "split": "split.tsv",
            "windows": "windows/20",
            "store": "masks/20",
            "index": "index",
            "retrieval": "retrieval/val.parquet",
        }.items()
    }
    assert (
        main(
            [
                "demo",
                "--vcf",
                str(p["vcf"]),
                "--array",
                str(p["array"]),
                "--samples",
                "16",
                "--length",
                "80000",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "split",
                "--panel",
                str(p["vcf"]),
                "--out",
                str(p["split"]),
                "--fractions",
                "0.5",
                "0.25",
                "0.25",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "window",
                "--panel",
                str(p["vcf"]),
                "--split",
                str(p["split"]),
                "--chrom",
                "chr20",
                "--length",
                "40",
                "--overlap",
                "10",
                "--out",
                str(p["windows"]),
            ]
        )
        == 0
    )
    return {"dir": d, **p}


def test_demo_and_split(chain):
    panel = read_panel(chain["vcf"], "20")
    assert len(panel.samples) == 16 and panel.n_sites > 50
    assert (chain["vcf"].parent / "panel.vcf.gz.tbi").exists()
    manifest = pd.read_csv(chain["array"], sep="\t", dtype={"chrom": str})
    assert list(manifest.columns) == ["chrom", "pos", "ref", "alt"] and len(manifest) > 0
    split = load_split(chain["split"])
    assert {k: len(v) for k, v in split.items()} == {"train": 8, "val": 4, "test": 4}
    assert json.loads(chain["split"].with_suffix(".json").read_text())["seed"] == 4


def test_window(chain):
    w = pd.read_parquet(chain["windows"] / "windows.parquet")
    assert (w["n_sites"].iloc[:-1] == 40).all() and (w["overlap"].iloc[1:] == 10).all()
    for s in ("train", "val", "test"):
        assert pq.ParquetFile(
            chain["windows"] / "haplotypes" / f"{s}.parquet"
        ).num_row_groups == len(w)


def test_mask_tokenize_index_retrieve(chain, capsys):
    assert (
        main(
            [
                "mask",
                "--windows",
                str(chain["windows"]),
                "--store",
                str(chain["store"]),
                "--strategy",
                "array",
                "--array",
                str(chain["array"]),
            ]
        )
        == 0
    )
    (h,) = capsys.readouterr().out.split()
    mask = load_mask(chain["store"], h)
    assert mask.spec == {"strategy": "array", "array_dropout": 0.0}
    assert json.loads((chain["store"] / "current.json").read_text())["hashes"] == [h]
    tokens = chain["dir"] / "tokens" / h
    for s in ("train", "val"):
        assert (
            main(
                [
                    "tokenize",
                    "--windows",
                    str(chain["windows"]),
                    "--store",
                    str(chain["store"]),
                    "--hash",
                    h,
                    "--split",
                    s,
                    "--out",
                    str(tokens / f"{s}.parquet"),
                ]
            )
            == 0
        )
        assert TokenTable(tokens / f"{s}.parquet").mask_hash == h
    assert (
        main(
            [
                "index",
                "--tokens",
                str(tokens / "train.parquet"),
                "--out",
                str(chain["index"]),
                "--kind",
                "binary_hnsw",
                "--hnsw-m",
                "8",
            ]
        )
        == 0
    )
    assert HaplotypeIndex(chain["index"]).kind == "binary_hnsw"
    assert (
        main(
            [
                "retrieve",
                "--tokens",
                str(tokens / "val.parquet"),
                "--index",
                str(chain["index"]),
                "-k",
                "4",
                "--out",
                str(chain["retrieval"]),
            ]
        )
        == 0
    )
    t = pq.read_table(chain["retrieval"])
    assert t.num_rows == TokenTable(tokens / "val.parquet").n_windows * 8
    assert np.stack(t.column("neighbours").to_numpy(zero_copy_only=False)).shape[1] == 4


def test_mask_schedule_prints_every_hash(chain, capsys, tmp_path):
    assert (
        main(
            [
                "mask",
                "--windows",
                str(chain["windows"]),
                "--store",
                str(tmp_path / "s"),
                "--strategy",
                "random",
                "--rate",
                "0.3",
                "--seed",
                "1",
                "--schedule",
                "3",
            ]
        )
        == 0
    )
    hashes = capsys.readouterr().out.split()
    assert len(set(hashes)) == 3 and all(len(h) == 16 for h in hashes)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["split", "--panel", "{d}/nope.vcf.gz", "--out", "{d}/s.tsv"],
            "nope.vcf.gz: file not found",
        ),
        (
            [
                "split",
                "--panel",
                "{d}/panel.vcf.gz",
                "--out",
                "{d}/s.tsv",
                "--fractions",
                "0.8",
                "0.1",
                "0.2",
            ],
            "split fractions must be >= 0 and sum to 1",
        ),
        (
            [
                "window",
                "--panel",
                "{d}/panel.vcf.gz",
                "--split",
                "{d}/split.tsv",
                "--chrom",
                "7",
                "--out",
                "{d}/w7",
            ],
            "chromosome '7' is not in this file",
        ),
        (
            [
                "window",
                "--panel",
                "{d}/panel.vcf.gz",
                "--split",
                "{d}/split.tsv",
                "--chrom",
                "20",
                "--length",
                "10",
                "--overlap",
                "10",
                "--out",
                "{d}/wx",
            ],
            "0 <= overlap < length",
        ),
        (
            [
                "window",
                "--panel",
                "{d}/panel.vcf.gz",
                "--split",
                "{d}/nope.tsv",
                "--chrom",
                "20",
                "--out",
                "{d}/wy",
            ],
            "nope.tsv is missing; run the split stage first",
        ),
        (
            ["mask", "--windows", "{d}/windows/20", "--store", "{d}/m", "--strategy", "array"],
            "no array manifest is configured",
        ),
        (
            # --strategy random: the default (the schema's) is array, which needs no rate
            [
                "mask",
                "--windows",
                "{d}/windows/20",
                "--store",
                "{d}/m",
                "--strategy",
                "random",
                "--rate",
                "1.5",
            ],
            "mask.rate must be in [0, 1]",
        ),
        (["mask", "--windows", "{d}/nowhere", "--store", "{d}/m"], "run the window stage first"),
        (
            [
                "tokenize",
                "--windows",
                "{d}/windows/20",
                "--store",
                "{d}/masks/20",
                "--hash",
                "0123456789abcdef",
                "--split",
                "val",
                "--out",
                "{d}/t.parquet",
            ],
            "snakemake --forcerun mask",
        ),
        (
            ["index", "--tokens", "{d}/windows/20/haplotypes/train.parquet", "--out", "{d}/i"],
            "is not a token table",
        ),
        (
            [
                "retrieve",
                "--tokens",
                "{d}/tokens/nope.parquet",
                "--index",
                "{d}/index",
                "--out",
                "{d}/r.parquet",
            ],
            "nope.parquet is missing",
        ),
    ],
)
def test_user_errors_exit_1_with_the_message(chain, capsys, args, message):
    args = [a.format(d=chain["dir"]) for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in err


def test_k_too_large_for_the_panel(chain, capsys):
    tokens = next((chain["dir"] / "tokens").iterdir()) / "val.parquet"
    args = [
        "retrieve",
        "--tokens",
        str(tokens),
        "--index",
        str(chain["index"]),
        "-k",
        "99",
        "--out",
        str(chain["dir"] / "r.parquet"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "k=99 neighbours asked but the index" in err and "Lower retrieval.k" in err


def test_console_script_prints_no_traceback(chain, tmp_path):
    exe = shutil.which("ragimpute") or f"{sys.executable} -m ragimpute.cli"
    cmd = [
        *exe.split(),
        "--log",
        str(tmp_path / "log.txt"),
        "window",
        "--panel",
        str(tmp_path / "missing.vcf.gz"),
        "--split",
        str(chain["split"]),
        "--chrom",
        "20",
        "--out",
        str(tmp_path / "w"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1
    assert "missing.vcf.gz: file not found. Check the path" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "file not found" in (tmp_path / "log.txt").read_text()


def test_version_and_help():
    r = subprocess.run(
        [sys.executable, "-m", "ragimpute.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("ragimpute ")
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2  # argparse: a subcommand is required
