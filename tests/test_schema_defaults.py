"""Every default lives in config/schema.yaml: the command line reads it from there, and the dataclasses
with defaults of their own must agree with it (they disagreed before: window 1024/256, -k 32 and mask
seed 0 on the command line against the config's 4096/1024, 256 and 7)."""

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from ragimpute.baselines import RetrievalPredictor
from ragimpute.cli import build_parser
from ragimpute.demo import DemoSpec
from ragimpute.engine import EngineParams
from ragimpute.impute import engine_params
from ragimpute.schema import SCHEMA_PATH, default, load_schema, section_defaults
from ragimpute.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def dataclass_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_the_package_reads_the_repository_schema():
    assert SCHEMA_PATH == REPO / "config" / "schema.yaml"
    assert load_schema() == yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def test_train_config_defaults_are_the_schemas():
    want = section_defaults("train")
    got = dataclass_defaults(TrainConfig)
    assert {key: got.get(key) for key in want} == want
    assert got["k"] == default("retrieval.k")
    # what TrainConfig has beyond the config's train section
    assert set(got) - set(want) == {"k", "grad_clip", "threads"}


def test_engine_params_defaults_are_the_schemas():
    schema = section_defaults("engine")
    # device says where the engine runs, not what it computes (ragimpute.impute.engine_device)
    assert set(schema) - {"device"} == {f.name for f in dataclasses.fields(EngineParams)}
    assert schema["device"] == "cpu"
    assert engine_params(schema) == EngineParams()
    assert dataclasses.asdict(engine_params(schema)) == dataclasses.asdict(EngineParams())


def test_demo_and_baseline_defaults_are_the_schemas():
    spec, schema = dataclass_defaults(DemoSpec), section_defaults("demo")
    assert set(spec) <= set(schema)  # the demo section may hold settings used elsewhere
    assert spec == {key: schema[key] for key in spec}
    params = inspect.signature(RetrievalPredictor).parameters
    want = default("baselines.retrieval")
    assert {k: params[k].default for k in want} == want == section_defaults("baselines.retrieval")


# (subcommand, its required arguments): option -> the schema's setting
CLI = {
    ("demo", "--vcf v --array a"): {
        "seed": "demo.seed",
        "samples": "demo.n_samples",
        "length": "demo.sequence_length",
        "chromosomes": "demo.chromosomes",
    },
    ("split", "--panel p --out o"): {"seed": "split.seed"},
    ("window", "--panel p --split s --chrom 20 --out o"): {
        "length": "windows.length",
        "overlap": "windows.overlap",
    },
    ("mask", "--windows w --store s"): {
        "strategy": "mask.strategy",
        "rate": "mask.rate",
        "seed": "mask.seed",
        "maf_threshold": "mask.maf_threshold",
        "array_dropout": "mask.array_dropout",
        "schedule": "mask.schedule",
    },
    ("index", "--tokens t --out o"): {
        "kind": "index.kind",
        "hnsw_m": "index.hnsw_m",
        "threads": "index.threads",
    },
    ("retrieve", "--tokens t --index i --out o"): {"k": "retrieval.k"},
    ("impute", "--results r --chrom 20 --split s --target t --out o"): {
        "k": "retrieval.k",
        "device": "impute.device",
        "max_missing": "impute.max_missing",
        "batch": "impute.batch_haplotypes",
        "threads": "impute.threads",
        "index_kind": "index.kind",
    },
}


@pytest.mark.parametrize("command", list(CLI), ids=[c for c, _ in CLI])
def test_cli_defaults_are_the_schemas(command):
    name, required = command
    args = build_parser().parse_args([name, *required.split()])
    got = {option: getattr(args, option) for option in CLI[command]}
    assert got == {option: default(path) for option, path in CLI[command].items()}


def test_cli_split_fractions_and_filter_are_the_schemas():
    parser = build_parser()
    args = parser.parse_args(["split", "--panel", "p", "--out", "o"])
    assert dict(zip(("train", "val", "test"), args.fractions, strict=True)) == default(
        "split.fractions"
    )
    args = parser.parse_args(
        ["window", "--panel", "p", "--split", "s", "--chrom", "1", "--out", "o"]
    )
    assert args.keep_filtered is not default("panel.pass_only")
