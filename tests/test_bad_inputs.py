"""Bad inputs, in one place: each must stop with a clear message (the file, the record, what to do) or
be skipped and counted where the field's tools skip it, and must leave what was written before intact.

Most cases call the package (or the CLI) on tiny data; the workflow-level cases (configured files that
do not exist, unknown config keys, tools that cannot take the input) share one finished run of the tiny
config (slow). Many cases are also tested where their code lives (test_vcf_io, test_impute, test_cli);
here they are gathered so that the list of bad inputs users send is checked as one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from workflow_runs import REPO, TINY, output, snakemake

from ragimpute.smk import config_problems

SCHEMA = REPO / "config" / "schema.yaml"
TINY_RESULTS = "results-tiny"  # `results:` of .test/tiny/config.yaml


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``: equal snapshots mean nothing was touched."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj))
    return path


# -- the configuration ----------------------------------------------------------------------------


def tiny_config() -> dict:
    return yaml.safe_load(TINY.read_text())


def test_unknown_top_level_key_is_named_with_a_suggestion():
    problems = config_problems({**tiny_config(), "chromsomes": ["20"]}, SCHEMA)
    assert problems == ["unknown config key 'chromsomes' (did you mean 'chromosomes'?)"]


def test_unknown_nested_keys_are_named():
    cfg = tiny_config()
    cfg["train"]["model"] = {"d_modle": 8}
    cfg["impute"]["trget_vcf"] = "x.vcf.gz"
    problems = config_problems(cfg, SCHEMA)
    assert "unknown config key 'train.model.d_modle' (did you mean 'd_model'?)" in problems
    assert "unknown config key 'impute.trget_vcf' (did you mean 'target_vcf'?)" in problems


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_results_directory_is_refused(value):
    (problem,) = config_problems({**tiny_config(), "results": value}, SCHEMA)
    assert problem.startswith(f"config key 'results': {value!r} is not allowed")


def test_the_shipped_configs_are_clean():
    for path in (REPO / "config/config.yaml", TINY, REPO / ".test/two-chrom/config.yaml"):
        assert config_problems(yaml.safe_load(path.read_text()), SCHEMA) == [], path


def test_wrong_types_name_the_key():
    cfg = tiny_config()
    cfg["split"] = {"seed": "x"}
    assert config_problems(cfg, SCHEMA) == ["config key 'split.seed': 'x' is not of type 'integer'"]


# -- the workflow: one finished tiny run, then bad configurations --------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The working directory of a finished run of the tiny config (read-only: copy to change it)."""
    workdir = tmp_path_factory.mktemp("finished")
    r = snakemake(workdir, "--cores", "2", configs=(TINY,))
    assert r.returncode == 0, output(r)[-4000:]
    return workdir


def rerun(workdir: Path, override: dict, *args: str):
    """The tiny config plus ``override`` in ``workdir``; returns the run and whether any result file
    changed."""
    before = snapshot(workdir / TINY_RESULTS)
    extra = write_yaml(workdir / "override.yaml", override)
    r = snakemake(workdir, "--cores", "2", *args, configs=(TINY, extra))
    return r, snapshot(workdir / TINY_RESULTS) != before


@pytest.mark.slow
@pytest.mark.parametrize(
    "override",
    [
        {"chromsomes": ["20"]},
        {"results": ""},
        {"train": {"model": {"d_modle": 8}}},
    ],
    ids=["typo", "empty-results", "nested-typo"],
)
def test_workflow_refuses_bad_config_keys(finished, override):
    r, changed = rerun(finished, override)
    text = output(r)
    assert r.returncode != 0 and not changed
    assert "the configuration has errors" in text
    if "chromsomes" in override:
        assert "unknown config key 'chromsomes' (did you mean 'chromosomes'?)" in text
    elif "results" in override:
        assert "config key 'results': '' is not allowed" in text
    else:
        assert "unknown config key 'train.model.d_modle'" in text
    assert not (finished / "results").exists()  # `results: ""` wrote nothing into the directory


@pytest.mark.slow
@pytest.mark.parametrize("key", ["impute.target_vcf", "impute.truth_vcf", "panel.array_manifest",
                                 "split.table", "panel.vcf"])  # fmt: skip
def test_workflow_refuses_configured_files_that_do_not_exist(finished, tmp_path, key):
    """Issue 11.3: after a finished run, a configured path that does not exist gave "Nothing to be
    done" and the previous input's results; now the run stops and names the key and the path."""
    res = finished / TINY_RESULTS
    target, truth = tmp_path / "target.vcf.gz", tmp_path / "truth.vcf.gz"
    shutil.copy(res / "targets/20/target.vcf.gz", target)
    shutil.copy(res / "targets/20/truth.vcf.gz", truth)
    missing = str(tmp_path / "nowhere" / "file")
    override = {
        "impute.target_vcf": {"impute": {"target_vcf": missing, "truth_vcf": str(truth)}},
        "impute.truth_vcf": {"impute": {"target_vcf": str(target), "truth_vcf": missing}},
        "panel.array_manifest": {
            "panel": {"vcf": str(res / "demo/panel.vcf.gz"), "array_manifest": missing}
        },
        "split.table": {"split": {"table": missing}},
        "panel.vcf": {"panel": {"vcf": missing}},
    }[key]
    r, changed = rerun(finished, override)
    text = output(r)
    assert r.returncode != 0 and not changed, text[-3000:]
    assert "Nothing to be done" not in text
    assert f"{key}: {missing} does not exist" in text
