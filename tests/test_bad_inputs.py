"""Bad inputs, in one place: each must stop with a clear message (the file, the record, what to do) or
be skipped and counted where the field's tools skip it, and must leave what was written before intact.

Most cases call the package (or the CLI) on tiny data; the workflow-level cases (configured files that
do not exist, unknown config keys, tools that cannot take the input) share one finished run of the tiny
config (slow). Many cases are also tested where their code lives (test_vcf_io, test_impute, test_cli);
here they are gathered so that the list of bad inputs users send is checked as one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import pid_written, survivors
from workflow_runs import REPO, TINY, TINY_RESULTS, output, snakemake

from ragimpute.smk import config_problems

SCHEMA = REPO / "config" / "schema.yaml"


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


def test_problems_name_the_file_or_option_that_set_the_key(tmp_path):
    """Snakemake merges config files and --config before the check: each problem names the last
    source that set its key (the one whose value the merged config holds)."""
    from ragimpute.smk import config_sources

    base = tmp_path / "config.yaml"
    base.write_text(TINY.read_text())
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  model:\n    d_modle: 8\nsplit:\n  seed: x\n")
    cfg = tiny_config()
    cfg["train"]["model"] = {"d_modle": 8}
    cfg["split"] = {"seed": "x"}
    cfg["chromsomes"] = ["20"]
    sources = config_sources([str(base), str(extra), str(extra)], {"chromsomes": ["20"]})
    assert [name for name, _ in sources] == [str(base), str(extra), "--config"]
    assert sorted(config_problems(cfg, SCHEMA, sources)) == [
        "config key 'split.seed' in " + str(extra) + ": 'x' is not of type 'integer'",
        "unknown config key 'chromsomes' in --config (did you mean 'chromosomes'?)",
        f"unknown config key 'train.model.d_modle' in {extra} (did you mean 'd_model'?)",
    ]


def test_a_value_is_blamed_on_the_overlay_that_set_it_not_on_the_snakefiles_configfile(
    tmp_path, monkeypatch
):
    """Snakemake lists the --configfile files first and the Snakefile's ``configfile:`` after them
    (by another spelling of the same path), though the latter yields to them: a bad value from the
    user's overlay is the overlay's, even where the Snakefile's file sets the same key."""
    from ragimpute.smk import config_sources

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(TINY.read_text() + "impute:\n  phase: auto\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("impute:\n  phase: yes\n")
    cfg = tiny_config()
    cfg["impute"] = {**cfg.get("impute", {}), "phase": True}
    given = [str(tmp_path / "config/config.yaml"), str(mine)]
    sources = config_sources([*given, "config/config.yaml"], {}, given)
    assert [name for name, _ in sources] == [*given, "--config"]
    assert config_problems(cfg, SCHEMA, sources) == [
        f"config key 'impute.phase' in {mine}: True is not of type 'string' (one of: auto, always, "
        "never); YAML reads yes, no, on and off as true or false: quote the value"
    ]
    # without --configfile the Snakefile's file is the only one, still before --config
    assert [n for n, _ in config_sources(["config/config.yaml"], {"x": 1}, [])] == [
        "config/config.yaml",
        "--config",
    ]


def test_impute_hds_is_a_boolean():
    cfg = tiny_config()
    cfg["impute"] = {**cfg.get("impute", {}), "hds": "HDS"}
    (problem,) = config_problems(cfg, SCHEMA)
    assert problem.startswith("config key 'impute.hds'") and "not of type 'boolean'" in problem
    cfg["impute"]["hds"] = True
    assert config_problems(cfg, SCHEMA) == []


def test_a_number_given_as_text_by_config_says_to_use_a_configfile():
    """Snakemake's --config 'mask={"array_dropout": 0.1}' hands the nested value over as text."""
    from ragimpute.smk import config_sources

    cfg = tiny_config()
    cfg["mask"] = {**cfg.get("mask", {}), "array_dropout": "0.1"}
    cli = {"mask": {"array_dropout": "0.1"}}
    (problem,) = config_problems(cfg, SCHEMA, config_sources([str(TINY)], cli, []))
    assert problem.startswith("config key 'mask.array_dropout' in --config: '0.1' is not of type")
    assert problem.endswith("set it in a --configfile")
    # the same text from a file is only a wrong type
    (problem,) = config_problems(cfg, SCHEMA)
    assert "--configfile" not in problem


@pytest.mark.parametrize(
    "key,given,fixed,plain",
    [("min_posterior", "1e-05", "1.0e-05", "0.00001"), ("ne", "2.5E4", "2.5e+4", "25000")],
)
def test_a_number_that_yaml_reads_as_text_says_how_to_write_it(tmp_path, key, given, fixed, plain):
    """PyYAML follows YAML 1.1: 1e-05 (no decimal point) and 2.5E3 (no sign) are strings."""
    from ragimpute.schema import read_yaml

    mine = tmp_path / "mine.yaml"
    mine.write_text(f"engine:\n  {key}: {given}\n")
    cfg = tiny_config()
    cfg["engine"] = {**cfg.get("engine", {}), **read_yaml(mine)["engine"]}
    (problem,) = config_problems(cfg, SCHEMA)
    assert problem == (
        f"config key 'engine.{key}': '{given}' is not of type 'number'; YAML reads {given} "
        f"as text (it needs a decimal point and a signed exponent): write {fixed} or {plain}"
    )
    mine.write_text(f"engine:\n  {key}: {fixed}\n")
    cfg["engine"] = {**cfg["engine"], **read_yaml(mine)["engine"]}
    assert config_problems(cfg, SCHEMA) == []


@pytest.mark.parametrize(
    "text,key", [("results:\n", "results"), ("panel:\n  genetic_map:\n", "panel.genetic_map")]
)
def test_a_key_left_without_a_value_says_what_yaml_made_of_it(tmp_path, text, key):
    """`genetic_map:` with nothing after it (meaning "none") is YAML's null, not "": the problem says
    so and how to write an empty value, instead of only that None is not text."""
    from ragimpute.schema import read_yaml

    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    cfg = tiny_config()
    given = read_yaml(mine)
    for section, value in given.items():
        cfg[section] = {**cfg.get(section, {}), **value} if isinstance(value, dict) else value
    (problem,) = config_problems(cfg, SCHEMA)
    assert problem == (
        f"config key {key!r}: None is not of type 'string'; YAML reads a key with no value as "
        'null: write "" for an empty value, or leave the key out for its default'
    )


def test_a_target_without_a_reference_panel_is_warned_about():
    """With panel.vcf left empty the demo panel is simulated: a user's target would be imputed from
    it (right only for the demo's own cohort), and the first error was a suggestion to lift over."""
    from ragimpute.smk import config_warnings

    cfg = tiny_config()
    cfg["impute"] = {**cfg.get("impute", {}), "target_vcf": "cohort.vcf.gz"}
    cfg["panel"] = {**cfg.get("panel", {}), "vcf": ""}
    assert config_problems(cfg, SCHEMA) == []
    (warning,) = config_warnings(cfg)
    assert warning.startswith("impute.target_vcf is set (cohort.vcf.gz) but panel.vcf is empty")
    assert warning.endswith("set panel.vcf to your reference panel")
    cfg["panel"]["vcf"] = "panel.vcf.gz"
    assert config_warnings(cfg) == []


@pytest.mark.parametrize("section", ["windows", "chunks"])
def test_an_overlap_not_shorter_than_the_length_is_named_before_anything_runs(section):
    cfg = tiny_config()
    cfg[section] = {**cfg.get(section, {}), "length": 8, "overlap": 8}
    assert config_problems(cfg, SCHEMA) == [
        f"config key '{section}.overlap': 8 is not less than {section}.length (8); consecutive "
        f"{section} must overlap by less than their length"
    ]
    cfg[section]["overlap"] = 7
    assert config_problems(cfg, SCHEMA) == []
    if section == "chunks":  # length 0: whole chromosomes, any overlap ignored
        cfg[section] = {"length": 0, "overlap": 2}
        assert config_problems(cfg, SCHEMA) == []


@pytest.mark.parametrize("engine", [{"states": 20}, {"states": 16, "candidates": 16}])
def test_engine_candidates_not_below_states_is_named_before_anything_runs(engine):
    """engine.states at or below engine.candidates (64 by default) failed only in the states job,
    after the jobs before it had run, with a traceback."""
    cfg = tiny_config()
    cfg["engine"] = {**cfg.get("engine", {}), **engine}
    candidates = engine.get("candidates", 64)
    assert config_problems(cfg, SCHEMA) == [
        f"config key 'engine.candidates': {candidates} is not less than engine.states "
        f"({engine['states']}); a step takes fewer candidates than there are states"
    ]
    cfg["engine"]["candidates"] = engine["states"] - 1
    assert config_problems(cfg, SCHEMA) == []


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


@pytest.mark.parametrize("value", [4, 0, "x"])
def test_a_bad_span_steps_is_named_with_what_it_may_be(value):
    cfg = tiny_config()
    cfg["engine"] = {"span_steps": value}
    (problem,) = config_problems(cfg, SCHEMA)
    assert problem.startswith(f"config key 'engine.span_steps': {value!r} is not allowed")
    assert "an odd number, or auto" in problem
    cfg["engine"] = {"span_steps": 5}
    assert config_problems(cfg, SCHEMA) == []


# -- the workflow: one finished tiny run, then bad configurations --------------------------------


@pytest.fixture(scope="module")
def finished(tiny_finished) -> Path:
    """The working directory of a finished run of the tiny config (read-only: copy to change it)."""
    return tiny_finished


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
    source = str(finished / "override.yaml")  # the file that set the key is named
    if "chromsomes" in override:
        assert f"unknown config key 'chromsomes' in {source} (did you mean 'chromosomes'?)" in text
    elif "results" in override:
        assert f"config key 'results' in {source}: '' is not allowed" in text
    else:
        assert f"unknown config key 'train.model.d_modle' in {source}" in text
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


# -- corrupted artifacts ---------------------------------------------------------------------------


def flip(path: Path, offset: int, n: int = 40) -> None:
    """Invert ``n`` bytes of ``path`` from ``offset`` (negative: from the end)."""
    data = bytearray(path.read_bytes())
    start = offset % len(data)
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_parquet_page(path: Path, column: str, row_group: int = 0, n: int = 4) -> None:
    """Flip ``n`` bytes near the end of one column chunk: inside its last data page's payload (not a
    page header, not the footer)."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(
        md.column(i)
        for i in range(md.num_columns)
        if md.column(i).path_in_schema.startswith(column)
    )
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    flip(path, start + chunk.total_compressed_size - n - 2, n)


@pytest.fixture
def built(demo_tokens, tmp_path) -> dict:
    """A private copy of the demo tokens and an index built on them (to corrupt)."""
    from ragimpute.index import build_index

    tokens = {
        s: Path(shutil.copy(p, tmp_path / f"{s}.parquet")) for s, p in demo_tokens["paths"].items()
    }
    build_index(tokens["train"], tmp_path / "index")
    return {"tokens": tokens, "index": tmp_path / "index", "hash": demo_tokens["hash"]}


def test_flipped_bytes_in_faiss_codes_are_refused(built, tmp_path):
    """Issue 11.2: 40 flipped bytes in the codes of one window's index gave exit 0 and other
    dosages; the checksum recorded in meta.json now catches them when the file is loaded."""
    from ragimpute.errors import ArtifactError
    from ragimpute.retrieval import retrieve

    w0 = built["index"] / "windows" / "w00000.faiss"
    flip(w0, -60)  # the codes are at the end of a flat index file
    with pytest.raises(ArtifactError) as e:
        retrieve(built["tokens"]["val"], built["index"], 4, tmp_path / "r.parquet")
    msg = str(e.value)
    assert str(w0) in msg and "checksum mismatch" in msg
    assert "snakemake --cores all --forcerun index" in msg
    assert not (tmp_path / "r.parquet").exists()


def test_corrupted_faiss_header_names_the_file(built, tmp_path):
    """Without checksums (an index of an earlier version) a broken header is still an error naming
    the file and the fix, not FAISS's own message alone."""
    import json

    from ragimpute.errors import ArtifactError
    from ragimpute.index import HaplotypeIndex

    meta = json.loads((built["index"] / "meta.json").read_text())
    del meta["files_sha256"]
    (built["index"] / "meta.json").write_text(json.dumps(meta))
    w0 = built["index"] / "windows" / "w00000.faiss"
    flip(w0, 0, 4)
    with pytest.raises(ArtifactError, match="cannot be read") as e:
        HaplotypeIndex(built["index"]).window_index(0)
    assert str(w0) in str(e.value) and "--forcerun index" in str(e.value)


def test_cli_reports_a_corrupted_index_in_one_line(built, tmp_path, capsys):
    from ragimpute.cli import main

    flip(built["index"] / "windows" / "w00001.faiss", -30, 10)
    args = ["retrieve", "--tokens", str(built["tokens"]["val"]), "--index", str(built["index"]),
            "-k", "4", "--out", str(tmp_path / "r.parquet")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "w00001.faiss: checksum mismatch" in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["page", "truncated", "empty"])
def test_corrupted_token_table(built, how):
    """A flipped data page (caught by the Parquet page checksums), a cut file or an empty one."""
    from ragimpute.errors import ArtifactError
    from ragimpute.tokens import TokenTable

    path = built["tokens"]["val"]
    if how == "page":
        flip_parquet_page(path, "tokens", row_group=1)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    else:
        path.write_bytes(b"")
    with pytest.raises(ArtifactError) as e:
        table = TokenTable(path)
        for w in range(table.n_windows):
            table.read(w)
    msg = str(e.value)
    assert str(path) in msg and "cannot be read" in msg
    assert "snakemake --cores all --forcerun tokenize" in msg and "ragimpute tokenize" in msg


def test_parquet_artifacts_carry_page_checksums(demo_windows, demo_tokens, tmp_path):
    """Every kind of Parquet artifact is written with a CRC per page: a flipped page fails the
    verification pyarrow does when asked (as our readers ask)."""
    import pyarrow.parquet as pq

    paths = {
        "sites": (demo_windows / "sites.parquet", "pos"),
        "windows": (demo_windows / "windows.parquet", "first_pos"),
        "haplotypes": (demo_windows / "haplotypes" / "train.parquet", "alleles"),
        "tokens": (demo_tokens["paths"]["val"], "tokens"),
        "mask": (demo_tokens["store"] / demo_tokens["hash"] / "mask.parquet", "masked"),
    }
    for name, (path, column) in paths.items():
        copy = Path(shutil.copy(path, tmp_path / f"{name}.parquet"))
        flip_parquet_page(copy, column)
        with pytest.raises(OSError, match="CRC checksum verification failed"):
            pq.read_table(copy, page_checksum_verification=True)


@pytest.mark.parametrize("what", ["sites", "haplotypes", "retrieval", "mask"])
def test_corrupted_stage_tables_name_file_and_rebuild(tmp_path_factory, tmp_path, what):
    """Each stage's Parquet table, with a data page flipped, names the file and its stage."""
    from ragimpute.errors import ArtifactError
    from ragimpute.masks import load_mask
    from ragimpute.tokens import TokenTable
    from ragimpute.train_data import read_retrieval
    from ragimpute.windows import WindowedTable, load_sites

    src = _tiny_results(tmp_path_factory)
    res = Path(shutil.copytree(src["results"], tmp_path / "r"))
    h = src["hashes"][0]
    path, column, stage, read = {
        "sites": (res / "windows/20/sites.parquet", "af", "window",
                  lambda: load_sites(res / "windows/20")),
        "haplotypes": (res / "windows/20/haplotypes/val.parquet", "alleles", "window",
                       lambda: WindowedTable(res / "windows/20/haplotypes/val.parquet",
                                             "alleles").read(0)),
        "retrieval": (res / f"retrieval/20/{h}/val.parquet", "neighbours", "retrieve",
                      lambda: read_retrieval(res / f"retrieval/20/{h}/val.parquet",
                                             TokenTable(res / f"tokens/20/{h}/val.parquet"))),
        "mask": (res / f"masks/20/{h}/mask.parquet", "masked", "mask",
                 lambda: load_mask(res / "masks/20", h)),
    }[what]  # fmt: skip
    flip_parquet_page(path, column)
    with pytest.raises(ArtifactError) as e:
        read()
    assert str(path) in str(e.value) and f"--forcerun {stage}" in str(e.value)


@pytest.mark.parametrize("column,stage", [("prior", "prior"), ("tokens", "tokenize"),
                                          ("alleles", "window")])  # fmt: skip
def test_a_windowed_table_cut_short_names_the_stage_that_writes_it(tmp_path, column, stage):
    """A prior table cut short named `--forcerun window`, which does not make it again."""
    from ragimpute.errors import ArtifactError
    from ragimpute.windows import WindowedTable

    path = tmp_path / "val.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 100)
    with pytest.raises(ArtifactError) as e:
        WindowedTable(path, column)
    assert str(path) in str(e.value) and f"--forcerun {stage}`" in str(e.value)


def test_a_corrupted_mask_is_written_again_by_the_mask_stage(tmp_path_factory, tmp_path):
    """`--forcerun mask` (the fix the message gives) repairs a corrupted stored mask."""
    from ragimpute.masks import load_mask, run_mask_stage_dir

    src = _tiny_results(tmp_path_factory)
    res = Path(shutil.copytree(src["results"], tmp_path / "r"))
    h = src["hashes"][0]
    before = load_mask(res / "masks/20", h).masked
    flip_parquet_page(res / f"masks/20/{h}/mask.parquet", "masked")
    store = res / "masks/20"
    hashes = run_mask_stage_dir(res / "windows/20", {"strategy": "array"}, store,
                                store / "current.json", res / "demo/array_sites.tsv")  # fmt: skip
    assert hashes == [h]
    assert (load_mask(store, h).masked == before).all()


_TINY: dict = {}


def _tiny_results(tmp_path_factory) -> dict:
    """One tiny pipeline run (package functions, no Snakemake) for this module; copy to change."""
    if "d" not in _TINY:
        from pipeline_data import build_tiny_results

        _TINY["d"] = build_tiny_results(tmp_path_factory.mktemp("tiny-bad"))
    return _TINY["d"]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip archive"])
def test_corrupted_model_file_names_file_and_rebuild(tmp_path, content):
    from ragimpute.errors import ArtifactError
    from ragimpute.predictors import load_predictor

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ArtifactError) as e:
        load_predictor(str(path), "cpu")
    assert str(path) in str(e.value) and "--forcerun train" in str(e.value)


# -- evaluation -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impute_env(tmp_path_factory):
    from impute_data import shared_env

    return shared_env(tmp_path_factory)


def test_evaluation_reports_samples_missing_from_the_truth(impute_env, tmp_path, caplog):
    """Issue 11.6: scoring only the samples shared with the truth file was silent; now the log says
    so and summary.json counts them (no shared sample at all stays an error, test_evaluate)."""
    from impute_data import vcf_lines, write_bgzip

    from ragimpute.evaluate import evaluate

    env = impute_env
    header, records = vcf_lines(env.truth)
    cols = header[-1].split("\t")
    n = len(cols) - 9
    keep = list(range(9)) + list(range(9, 9 + n - 2))  # the truth lacks the last two samples
    header[-1] = "\t".join(cols[i] for i in keep)
    truth = write_bgzip(tmp_path / "truth.vcf.gz", header, [[r[i] for i in keep] for r in records])
    caplog.set_level("WARNING", logger="ragimpute")
    summary = evaluate(env.truth, truth, env.windows / "sites.parquet", env.target, "t", tmp_path)
    assert summary["samples_imputed"] == n and summary["samples_scored"] == n - 2
    assert summary["samples_not_in_truth"] == 2
    assert f"2 of its {n} samples are not in the truth VCF" in caplog.text
    assert cols[-1] in caplog.text


# -- tools that cannot take the input (issue 11.5) ------------------------------------------------

RUNNER = REPO / "workflow" / "scripts" / "external_tool.sh"
needs_htslib = pytest.mark.skipif(
    shutil.which("bgzip") is None or shutil.which("tabix") is None, reason="bgzip/tabix not on PATH"
)


def run_tool(tmp_path: Path, target: Path, min_sites: int, *command: str):
    """external_tool.sh as the beagle/minimac4 rules call it."""
    import subprocess

    out = tmp_path / "out.vcf.gz"
    args = ["bash", str(RUNNER), "beagle", str(tmp_path / "tool.log"), str(target), str(min_sites),
            str(tmp_path / ".tmp.vcf.gz"), str(out), f"{out}.tbi", "--", *command]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True), out


@needs_htslib
def test_tool_with_too_few_typed_sites_is_left_out_with_the_reason(impute_env, tmp_path):
    from ragimpute.evaluate import not_run_reason

    r, out = run_tool(tmp_path, impute_env.target, 10_000, "false")
    assert r.returncode == 0, r.stderr
    assert "beagle cannot run on" in r.stderr and "left out of the comparison" in r.stderr
    reason = not_run_reason(out)
    assert reason.startswith("the target types") and "needs at least 10000" in reason
    assert Path(f"{out}.tbi").exists()


@needs_htslib
def test_tool_that_fails_on_the_input_is_left_out_with_its_error(impute_env, tmp_path):
    from ragimpute.evaluate import not_run_reason

    script = "echo 'Exception in thread \"main\" java.lang.IllegalArgumentException: Window has only one position' >&2; exit 1"  # noqa: E501
    r, out = run_tool(tmp_path, impute_env.target, 1, "bash", "-c", script)
    assert r.returncode == 0, r.stderr
    reason = not_run_reason(out)
    assert "failed with exit status 1" in reason and "Window has only one position" in reason
    assert "Window has only one position" in (tmp_path / "tool.log").read_text()


@needs_htslib
@pytest.mark.parametrize("how", ["killed", "oom"])
def test_tool_killed_or_out_of_memory_fails_the_job(impute_env, tmp_path, how):
    """Limits are not the input's fault: the job fails, so that Snakemake or SLURM run it again."""
    script = {"killed": "kill -9 $$", "oom": "echo java.lang.OutOfMemoryError >&2; exit 1"}[how]
    r, out = run_tool(tmp_path, impute_env.target, 1, "bash", "-c", script)
    assert r.returncode != 0 and not out.exists()
    assert ("was killed" if how == "killed" else "ran out of memory") in r.stderr


@needs_htslib
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not on PATH")
def test_a_killed_tool_job_leaves_no_tool_running(impute_env, tmp_path):
    """SIGKILL of the job (no trap runs) left Beagle running on, orphaned, to its end: it dies
    with the job."""
    import signal
    import subprocess

    pid_file = tmp_path / "pid"
    out = tmp_path / "out.vcf.gz"
    script = f"echo $$ > {pid_file}; exec sleep 120"
    job = subprocess.Popen(["bash", str(RUNNER), "beagle", str(tmp_path / "tool.log"),
                            str(impute_env.target), "1", str(tmp_path / ".tmp.vcf.gz"), str(out),
                            f"{out}.tbi", "--", "bash", "-c", script])  # fmt: skip
    tool = pid_written(pid_file)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not survivors([tool]), "the tool outlived the killed job"


@needs_htslib
def test_tool_success_is_indexed_and_moved(impute_env, tmp_path):
    r, out = run_tool(tmp_path, impute_env.target, 1, "cp", str(impute_env.target),
                      str(tmp_path / ".tmp.vcf.gz"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == impute_env.target.read_bytes() and Path(f"{out}.tbi").exists()
    assert not (tmp_path / ".tmp.vcf.gz").exists()


@needs_htslib
def test_a_tool_failing_on_a_damaged_file_of_ours_fails_the_job(impute_env, tmp_path):
    """Beagle failing because the workflow's own reference is truncated is not the input's fault:
    the job fails naming the file, instead of leaving Beagle out of the comparison."""
    damaged = tmp_path / "reference.vcf.gz"
    data = impute_env.target.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    r, out = run_tool(tmp_path, impute_env.target, 1, "false", f"ref={damaged}")
    assert r.returncode != 0 and not out.exists()
    assert f"{damaged} is corrupted or truncated" in r.stderr and "run snakemake again" in r.stderr
    # the same failure with sound files leaves the tool out, as before
    r, out = run_tool(tmp_path, impute_env.target, 1, "false", f"ref={impute_env.target}")
    assert r.returncode == 0 and out.exists()


@needs_htslib
def test_beagles_log_is_kept_once(impute_env, tmp_path):
    """Beagle prints its log and writes the same text beside its output (.tmp.log): $log keeps what
    it printed, once, and the copy beside the output is removed."""
    script = (f"echo 'Command line: java -jar beagle.jar'; cp {impute_env.target} {tmp_path}/.tmp.vcf.gz; "
              f"echo 'Command line: java -jar beagle.jar' > {tmp_path}/.tmp.log")  # fmt: skip
    r, out = run_tool(tmp_path, impute_env.target, 1, "bash", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "tool.log").read_text().splitlines()
    assert sum(x.startswith("Command line:") for x in lines) == 1
    assert out.exists() and not (tmp_path / ".tmp.log").exists()


REFERENCE_VCF = (
    "##fileformat=VCFv4.2\n##contig=<ID=20>\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB\n"
    "20\t100\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|1\n"
    "20\t200\t.\tC\tT\t.\tPASS\t.\tGT\t0|0\t1|0\n"
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("minimac4") is None, reason="minimac4 is not installed")
@pytest.mark.parametrize("sound", [True, False], ids=["sound", "unreadable"])
def test_minimac4_reference_leaves_no_temporary(tmp_path, sound):
    """The minimac4_reference rule writes reference.msav.tmp and moves it onto reference.msav: a
    failed run left it beside the output. Here a killed run's leftover is there before the job."""
    import gzip

    d = tmp_path / TINY_RESULTS / "targets" / "20"
    d.mkdir(parents=True)
    text = REFERENCE_VCF if sound else "not a VCF\n"
    (d / "reference.vcf.gz").write_bytes(gzip.compress(text.encode()))
    (d / "reference.msav.tmp").write_text("left by a killed run")
    target = f"{TINY_RESULTS}/targets/20/reference.msav"
    args = ("--allowed-rules", "minimac4_reference", "--cores", "1")
    r = snakemake(tmp_path, *args, targets=(target,), configs=(TINY,), timeout=120)
    assert (r.returncode == 0) == sound, output(r)[-3000:]
    assert (d / "reference.msav").exists() == sound
    assert not (d / "reference.msav.tmp").exists()


def test_minimac4_target_leaves_out_sites_with_missing_calls(impute_env, tmp_path):
    """Minimac4 4.1 aborts on `.|.` / `.|1` at typed sites: its target leaves those sites out."""
    from impute_data import vcf_lines, write_bgzip

    from ragimpute.atomic import read_json
    from ragimpute.targets import write_minimac4_target

    header, records = vcf_lines(impute_env.target)
    records[2][9] = ".|."
    records[4][10] = ".|1"
    target = write_bgzip(tmp_path / "t.vcf.gz", header, records)
    report = write_minimac4_target(target, tmp_path / "m.vcf.gz", tmp_path / "m.json")
    kept_header, kept = vcf_lines(tmp_path / "m.vcf.gz")
    assert len(kept) == len(records) - 2 and not any("." in f for r in kept for f in r[9:])
    assert [r[1] for r in kept] == [r[1] for i, r in enumerate(records) if i not in (2, 4)]
    assert kept_header[-1] == header[-1]
    assert report == read_json(tmp_path / "m.json")
    assert report["sites_with_missing_calls_left_out"] == 2 and report["sites_kept"] == len(kept)
    assert report["first_left_out"] == [f"{records[2][0]}:{records[2][1]}",
                                        f"{records[4][0]}:{records[4][1]}"]  # fmt: skip


def test_minimac4_target_refuses_a_harmonised_target_cut_short(impute_env, tmp_path):
    """The harmonised target was read with gzip as it was: cut short it was a raw EOFError."""
    from impute_data import vcf_lines, write_bgzip

    from ragimpute.errors import InputError
    from ragimpute.targets import write_minimac4_target

    header, records = vcf_lines(impute_env.target)
    target = write_bgzip(tmp_path / "t.vcf.gz", header, records)
    target.write_bytes(target.read_bytes()[:-40])
    with pytest.raises(InputError, match="file is truncated"):
        write_minimac4_target(target, tmp_path / "m.vcf.gz", tmp_path / "m.json")
    assert not (tmp_path / "m.vcf.gz").exists()


@needs_htslib
def test_a_method_that_did_not_run_is_left_out_of_the_comparison(impute_env, tmp_path):
    """evaluate scores a placeholder as not run; compare keeps the method's rows, without scores,
    and says why in the `note` column (a method that did not run on every chromosome is left out
    altogether rather than pooled over other sites)."""
    import pandas as pd

    from ragimpute.evaluate import compare, evaluate

    env = impute_env
    _, placeholder = run_tool(tmp_path, env.target, 10_000, "false")
    sites = env.windows / "sites.parquet"
    s = evaluate(placeholder, env.truth, sites, env.target, "beagle", tmp_path / "20" / "beagle")
    assert s["not_run"].startswith("the target types") and s["all"]["n_sites"] == 0
    assert s["scored_sites_not_in_output"] == s["scored_sites"] > 0
    evaluate(env.truth, env.truth, sites, env.target, "truth", tmp_path / "20" / "truth")
    tables = [tmp_path / "20" / m / "sites.tsv.gz" for m in ("truth", "beagle")]
    table = compare(tables, tmp_path / "cmp", ["truth", "beagle"])
    written = pd.read_csv(tmp_path / "cmp" / "comparison.tsv", sep="\t", keep_default_na=False)
    assert list(written.columns)[-1] == "note"
    beagle = written[written["method"] == "beagle"]
    assert len(beagle) == len(table[table["method"] == "truth"])  # a row per bin, as the others
    assert (beagle["note"].str.startswith("not run: chromosome 20: the target types")).all()
    assert (beagle["r2"] == "").all() and (
        written[written["method"] == "truth"]["note"] == ""
    ).all()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("minimac4") is None, reason="minimac4 is not installed")
def test_workflow_missing_calls_at_typed_sites_do_not_sink_minimac4(finished, tmp_path):
    """Issue 11.5: `.|.` and `.|1` at typed sites made Minimac4 abort (an assertion) and the run
    fail. Now Minimac4's target leaves those sites out, and every method is scored."""
    import gzip

    import pandas as pd

    workdir = Path(shutil.copytree(finished, tmp_path / "wd"))
    res = workdir / TINY_RESULTS

    def own_samples(line: str) -> str:
        # your own targets are imputed from the whole panel: they must not carry panel names
        f = line.split("\t")
        return "\t".join(f[:9] + [f"OWN_{s}" for s in f[9:]])

    lines = gzip.decompress((res / "targets/20/target.vcf.gz").read_bytes()).decode().splitlines()
    n = 0
    for i, line in enumerate(lines):
        if line.startswith("#CHROM"):
            lines[i] = own_samples(line)
        if line.startswith("#"):
            continue
        n += 1
        f = line.split("\t")
        if n == 3:
            f[9] = ".|."
        if n == 5:
            f[10] = ".|1"
        lines[i] = "\t".join(f)
    (workdir / "target.vcf").write_text("\n".join(lines) + "\n")
    truth = gzip.decompress((res / "targets/20/truth.vcf.gz").read_bytes()).decode().splitlines()
    truth = [own_samples(ln) if ln.startswith("#CHROM") else ln for ln in truth]
    (workdir / "truth.vcf").write_text("\n".join(truth) + "\n")
    override = {"impute": {"target_vcf": "target.vcf", "truth_vcf": "truth.vcf",
                           "max_missing": 0.5}}  # fmt: skip
    r, _ = rerun(workdir, override)
    assert r.returncode == 0, output(r)[-4000:]
    table = pd.read_csv(res / "evaluation/comparison.tsv", sep="\t", keep_default_na=False)
    overall = table[table["maf_bin"] == "all"].set_index("method")
    assert {"minimac4", "beagle", "model"} <= set(overall.index)
    assert float(overall.loc["minimac4", "r2"]) > float(overall.loc["af", "r2"])
    report = yaml.safe_load((res / "targets/20/aligned/minimac4.json").read_text())
    assert report["sites_with_missing_calls_left_out"] == 2
    # scored like the others, and the table says that Minimac4 had two typed sites fewer
    kept, typed = report["sites_kept"], report["typed_sites"]
    assert overall.loc["minimac4", "note"] == (
        f"given fewer typed sites (missing calls left out): {kept} of {typed} on 20"
    )
    assert (overall.drop(index="minimac4")["note"] == "").all(), overall["note"]
    plotted = pd.read_csv(res / "evaluation/calibration.tsv", sep="\t")["method"]
    assert "minimac4" in set(plotted)  # not left out of the calibration either
    assert "it imputes them for every sample" in (res / "logs/minimac4_target/20.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("beagle") is None, reason="beagle is not installed")
def test_workflow_one_site_manifest_runs_without_beagle_and_says_why(finished, tmp_path):
    """Issue 11.5: a one-site array made Beagle fail ("Window has only one position") and the run
    with it. Now the run ends, and comparison.tsv keeps Beagle's rows, without scores, saying why."""
    import pandas as pd

    res = finished / TINY_RESULTS
    workdir = tmp_path / "wd"
    workdir.mkdir()
    for name in ("panel.vcf.gz", "panel.vcf.gz.tbi"):
        shutil.copy(res / "demo" / name, workdir / name)
    manifest = (res / "demo/array_sites.tsv").read_text().splitlines()
    (workdir / "one.tsv").write_text("\n".join(manifest[:1] + manifest[4:5]) + "\n")
    extra = write_yaml(workdir / "c.yaml", {"panel": {"vcf": "panel.vcf.gz",
                                                      "array_manifest": "one.tsv"}})  # fmt: skip
    r = snakemake(workdir, "--cores", "2", configs=(TINY, extra))
    text = output(r)
    assert r.returncode == 0, text[-4000:]
    assert "beagle cannot run on" in text and "needs at least 2" in text
    table = pd.read_csv(workdir / TINY_RESULTS / "evaluation/comparison.tsv", sep="\t",
                        keep_default_na=False)  # fmt: skip
    beagle = table[table["method"] == "beagle"]
    assert len(beagle) == 5 and (beagle["note"].str.startswith("not run: chromosome 20")).all()
    others = table[(table["method"] != "beagle") & (table["maf_bin"] == "all")]
    assert (others["note"] == "").all() and (others["n_sites"] > 0).all()
    log = (workdir / TINY_RESULTS / "logs/compare.log").read_text()
    assert "beagle is left out of the comparison" in log


# -- array manifests (issue 11.6) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message, record",
    [
        ("", "array manifest is empty (0 bytes)", None),
        (
            "chrom\tpos\n20\t1200\n20\tabc\n",
            "position 'abc' is not a positive whole number",
            "line 3",
        ),
        ("chrom\tpos\n20\t-5\n", "position '-5' is not a positive whole number", "line 2"),
        ("20\t1200\n20\t1300\n", "needs columns chrom and pos", None),
        ("chrom\tpos\n", "array manifest lists no sites", None),
    ],
    ids=["empty", "not-a-number", "negative", "no-header", "no-rows"],
)
def test_bad_manifest_is_named_with_the_fix(tmp_path, text, message, record):
    from ragimpute.errors import InputError
    from ragimpute.masks import read_site_list

    path = tmp_path / "array.tsv"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        read_site_list(path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert e.value.record == record
    if text.startswith("20"):
        assert "add a header line" in str(e.value)


def test_duplicate_manifest_rows_are_counted_once(demo_windows, tmp_path, caplog):
    """Issue 11.6: a site listed twice was reported as "not a panel SNV"."""
    from ragimpute.masks import match_sites, read_site_list
    from ragimpute.windows import load_sites

    sites = load_sites(demo_windows)
    rows = sites.iloc[[3, 3, 8]][["chrom", "pos", "ref", "alt"]]
    path = tmp_path / "array.tsv"
    rows.to_csv(path, sep="\t", index=False)
    caplog.set_level("WARNING", logger="ragimpute")
    hit = match_sites(sites, read_site_list(path), path)
    assert hit.sum() == 2
    assert "1 rows repeat a site listed before" in caplog.text
    assert "not panel SNVs" not in caplog.text


# -- targets and truth with a line cut short (issue 11.6) ------------------------------------------


@pytest.mark.parametrize("keep", [3, 8, 9, 10], ids=lambda k: f"{k}-columns")
def test_short_line_in_target_or_truth_names_the_record(impute_env, tmp_path, keep):
    """A record cut after `keep` columns: bcftools either fails without naming it or reads it as
    missing genotypes; both are now an error naming the record."""
    from impute_data import vcf_lines, write_vcf

    from ragimpute.errors import InputError
    from ragimpute.evaluate import read_truth
    from ragimpute.targets import read_target

    header, records = vcf_lines(impute_env.target)
    records[3] = records[3][:keep]
    where = f"{records[3][0]}:{records[3][1]}"
    path = write_vcf(tmp_path / "cut.vcf", header, records)
    for read in (lambda: read_target(path, "20", impute_env.sites), lambda: read_truth(path, "20")):
        with pytest.raises(InputError) as e:
            read()
        assert e.value.record == where and f"a record has {keep} columns" in str(e.value)
        assert str(path) in str(e.value) and "fix that line" in str(e.value)


@pytest.mark.parametrize("method,rule", [("copying", "impute"), ("beagle", "beagle")])
def test_a_damaged_imputed_vcf_names_the_rule_that_rebuilds_it(impute_env, tmp_path, method, rule):
    """An imputed VCF is the workflow's (or Beagle's) output: not a file to fetch again or fix by
    hand, as a damaged input is told, but one to make again."""
    from impute_data import vcf_lines, write_vcf

    from ragimpute.errors import UnreadableArtifactError
    from ragimpute.evaluate import evaluate

    env = impute_env
    header, records = vcf_lines(env.truth)
    records[3] = records[3][:9]
    cut = write_vcf(tmp_path / "imputed.vcf", header, records)
    sites = env.windows / "sites.parquet"
    with pytest.raises(UnreadableArtifactError) as e:
        evaluate(cut, env.truth, sites, env.target, method, tmp_path / method)
    msg = str(e.value)
    assert str(cut) in msg and f"{records[3][0]}:{records[3][1]}" in msg
    assert f"--forcerun {rule}`" in msg and "fix that line" not in msg


# -- the command line names its own options (issue 11.6) -------------------------------------------


def test_cli_missing_target_names_the_option(impute_env, tmp_path, capsys):
    from ragimpute.cli import main

    env = impute_env
    missing = tmp_path / "nowhere.vcf.gz"
    args = ["impute", "--results", str(env.results), "--chrom", "20", "--split", str(env.split),
            "--target", str(missing), "--out", str(tmp_path / "out.vcf.gz")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert f"{missing}: file not found. Check the path given to --target" in line
    assert "config" not in line and not (tmp_path / "out.vcf.gz").exists()


@pytest.mark.parametrize("chrom", ["20", "20.c001"])
def test_cli_on_a_chunked_run_says_it_imputes_whole_chromosomes(
    impute_env, tmp_path, capsys, chrom
):
    """A run with chunks.length keeps windows/20.c000/, ...: `--chrom 20` said "windows/20/
    sites.parquet is missing; run the window stage first" and `--chrom 20.c001` looked for target
    records on a chromosome of that name."""
    from ragimpute.cli import main

    env = impute_env
    results = tmp_path / "results"
    for unit in ("20.c000", "20.c001"):
        shutil.copytree(env.results / "windows/20", results / "windows" / unit)
    args = ["impute", "--results", str(results), "--chrom", chrom, "--split", str(env.split),
            "--target", str(env.target), "--out", str(tmp_path / "out.vcf.gz")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert f"{results}: this run is cut into chunks (chunks.length): 20 is 20.c000, 20.c001" in line
    assert "imputes whole chromosomes only. Impute through the workflow" in line
    assert not (tmp_path / "out.vcf.gz").exists()


@pytest.mark.parametrize("command", ["impute", "evaluate"])
def test_cli_chrom_named_otherwise_than_the_run_says_which_name(
    impute_env, tmp_path, capsys, command
):
    """`--chrom chr20` on a run whose config says `20` (its tables under windows/20/): the error was
    that windows/chr20/sites.parquet is missing, with the command to rebuild the window stage."""
    from ragimpute.cli import main

    env = impute_env
    out = tmp_path / "out.vcf.gz"
    common = ["--results", str(env.results), "--chrom", "chr20"]
    if command == "impute":
        args = ["impute", *common, "--split", str(env.split), "--target", str(env.target),
                "--out", str(out)]  # fmt: skip
    else:
        args = ["evaluate", *common, "--imputed", str(env.target), "--truth", str(env.target),
                "--typed", str(env.target), "--method", "x", "--out", str(tmp_path / "ev")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert f"{env.results}: this run has no chromosome named chr20: its tables are under " in line
    assert "windows/20/. Give --chrom 20" in line and "forcerun" not in line
    assert not out.exists() and not (tmp_path / "ev").exists()


def test_cli_model_without_a_checkpoint_names_the_option(impute_env, tmp_path):
    from ragimpute.cli import main

    env = impute_env
    args = ["impute", "--results", str(env.results), "--chrom", "20", "--split", str(env.split),
            "--target", str(env.target), "--method", "model",
            "--out", str(tmp_path / "out.vcf.gz")]  # fmt: skip
    with pytest.raises(SystemExit, match="--method model needs --checkpoint"):
        main(args)
    assert not (tmp_path / "out.vcf.gz").exists()


# -- leftovers of killed jobs (issue 11.6) ---------------------------------------------------------


def test_temp_files_of_dead_writers_are_removed_when_the_output_is_written_again(tmp_path):
    import subprocess
    import time

    from ragimpute import atomic

    out = tmp_path / "table.json"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = atomic._host()
    stale_file = tmp_path / f".table.json.tmp~{host}~{dead.pid}~abc123.json"
    stale_dir = tmp_path / f".table.json.tmp~{host}~{dead.pid}~def456"
    live = tmp_path / f".table.json.tmp~{host}~{os.getpid()}~ghi789"
    other_new = tmp_path / ".table.json.tmp~elsewhere~1~jkl"
    other_old = tmp_path / ".table.json.tmp~elsewhere~1~mno"
    unrelated = tmp_path / ".other.json.tmp~elsewhere~1~pqr"
    for p in (stale_file, live, other_new, other_old, unrelated):
        p.write_text("partial")
    stale_dir.mkdir()
    (stale_dir / "x").write_text("partial")
    old = time.time() - atomic.STALE_OTHER_HOST_S - 60
    os.utime(other_old, (old, old))
    atomic.write_json(out, {"a": 1})
    assert not stale_file.exists() and not stale_dir.exists() and not other_old.exists()
    assert live.exists() and other_new.exists() and unrelated.exists()
    assert atomic.read_json(out) == {"a": 1}


def test_a_killed_writer_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    """SIGKILL inside a write (no `finally` runs): the temporary file stays, and is removed when the
    same output is written again."""
    import signal
    import subprocess
    import sys
    import time

    from ragimpute.atomic import write_json

    out = tmp_path / "state.pt"
    code = (
        "import time, sys\n"
        "from ragimpute.atomic import atomic_path\n"
        f"with atomic_path({str(out)!r}, suffix='.pt') as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(tmp_path.glob(".state.pt.tmp~*"))
    assert len(leftovers) == 1 and not out.exists()
    time.sleep(0.01)
    write_json(out, {"epoch": 1})
    assert not list(tmp_path.glob(".state.pt.tmp~*")) and out.exists()


# -- the bad targets and panels users send, in one place -------------------------------------------
#
# Each bad target goes through `ragimpute impute` onto the output of an earlier good run: one clear
# ERROR line (the file, the record where there is one, what to do), no traceback, and the earlier
# output and the run's mask store untouched.


def _edit_records(edit):
    def make(env, path):
        from impute_data import vcf_lines, write_vcf

        header, records = vcf_lines(env.target)
        header, records = edit(env, header, [r[:] for r in records])
        return write_vcf(path, header, records)

    return make


def _unphased(env, h, r):
    j = next(j for j, g in enumerate(r[7][9:]) if g in ("0|1", "1|0"))
    r[7][9 + j] = "0/1"
    return h, r


def _haploid(env, h, r):
    r[2][9] = r[2][9].split("|")[0]
    return h, r


def _unsorted(env, h, r):
    r[3], r[4] = r[4], r[3]
    return h, r


def _duplicate(env, h, r):
    return h, r[:5] + [r[4][:]] + r[5:]


def _other_chromosome(env, h, r):
    h = [x.replace("##contig=<ID=20,", "##contig=<ID=21,") for x in h]
    for x in r:
        x[0] = "21"
    return h, r


def _no_overlap(env, h, r):
    taken = set(env.sites["pos"])
    for x in r:
        p = int(x[1]) + 1
        while p in taken:
            p += 1
        x[1] = str(p)
    r.sort(key=lambda x: int(x[1]))
    return h, r


def _shared_sample(env, h, r):
    cols = h[-1].split("\t")
    cols[9] = env.split_samples["train"][0]
    h[-1] = "\t".join(cols)
    return h, r


def _short_line(env, h, r):
    r[6] = r[6][:10]
    return h, r


def _truncated(env, path):
    data = env.target.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _plain_gzip(env, path):
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(gzip.decompress(env.target.read_bytes()))
    return path


def _empty(env, path):
    path.write_bytes(b"")
    return path


def _record(env, i):
    from impute_data import vcf_lines

    r = vcf_lines(env.target)[1][i]
    return f"{r[0]}:{r[1]}"


BAD_TARGETS = {
    # name: (make the file, what the message must say, the record it names: index into the records)
    "unphased": (_edit_records(_unphased), ["genotypes are unphased", "Beagle 5.4", "SHAPEIT5"], 7),
    "haploid": (_edit_records(_haploid), ["haploid genotype", "leave out chrX"], 2),
    "unsorted": (_edit_records(_unsorted), ["records are not sorted", "bcftools sort"], 3),
    "duplicate-position": (_edit_records(_duplicate),
                           ["two biallelic SNV records at position", "bcftools norm"], 4),
    "other-chromosome": (_edit_records(_other_chromosome),
                         ["no records on chromosome 20", "check `chromosomes:`"], None),
    "no-overlap": (_edit_records(_no_overlap), ["does not overlap the reference", "liftover"], None),
    "shared-samples": (_edit_records(_shared_sample),
                       ["also in the reference panel", "bcftools view -s ^NAMES"], None),
    "short-line": (_edit_records(_short_line), ["a record has 10 columns", "fix that line"], 6),
    "truncated": (_truncated, ["file is truncated", "fetch it again"], None),
    "plain-gzip": (_plain_gzip, ["gzip- but not bgzip", "bgzip"], None),
    "empty": (_empty, ["file is empty"], None),
}  # fmt: skip


@pytest.fixture(scope="module")
def earlier(impute_env, tmp_path_factory):
    """A good `ragimpute impute` run whose outputs the bad runs below must leave alone."""
    from ragimpute.cli import main

    out = tmp_path_factory.mktemp("earlier") / "imputed.vcf.gz"
    args = ["impute", "--results", str(impute_env.results), "--chrom", "20", "--split",
            str(impute_env.split), "--target", str(impute_env.target), "--method", "af",
            "--reference", "train", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.mark.parametrize("case", list(BAD_TARGETS))
def test_bad_target_is_refused_clearly_and_loses_nothing(
    impute_env, earlier, tmp_path, capsys, case
):
    from ragimpute.cli import main

    env = impute_env
    make, says, record = BAD_TARGETS[case]
    suffix = ".vcf.gz" if case in ("truncated", "plain-gzip") else ".vcf"
    bad = make(env, tmp_path / f"{case}{suffix}")
    outputs, store = snapshot(earlier.parent), snapshot(env.results / "masks")
    capsys.readouterr()
    args = ["impute", "--results", str(env.results), "--chrom", "20", "--split", str(env.split),
            "--target", str(bad), "--method", "af", "--reference", "train",
            "--out", str(earlier)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(bad) in errors[0]
    for text in says:
        assert text in errors[0], errors[0]
    if record is not None:
        assert f"(at {_record(env, record)})" in errors[0]
    assert snapshot(earlier.parent) == outputs and snapshot(env.results / "masks") == store


def test_skipped_records_are_counted_like_the_fields_tools_do(impute_env, tmp_path):
    """Multi-allelic and non-SNV records are skipped and counted (as Beagle and Minimac4 skip them);
    `chr20` against a `20` reference is the same chromosome; missing calls are imputed and counted."""
    from impute_data import vcf_lines, write_vcf

    from ragimpute.impute import impute_target

    env = impute_env
    header, records = vcf_lines(env.target)
    r0 = records[3]
    multi = r0[:1] + [str(int(r0[1]) + 1), ".", "A", "C,G"] + r0[5:]
    indel = r0[:1] + [str(int(r0[1]) + 2), ".", "AT", "A"] + r0[5:]
    records = [r[:] for r in records[:4]] + [multi, indel] + [r[:] for r in records[4:]]
    for r in records:
        r[0] = "chr20"
    header = [h.replace("##contig=<ID=20,", "##contig=<ID=chr20,") for h in header]
    records[10][9] = ".|" + records[10][9].split("|")[1]
    target = write_vcf(tmp_path / "t.vcf", header, records)
    report = impute_target(env.results, "20", env.split, target, "af", tmp_path / "o.vcf.gz",
                           max_missing=0.2, reference_splits=("train",))  # fmt: skip
    a = report["alignment"]
    assert a["skipped"] == {"multiallelic": 1, "non_snv": 1, "no_alt": 0}
    assert a["chrom_renamed"] and a["target_chrom"] == "chr20"
    assert a["missing"]["alleles_missing_at_typed_sites"] == 1
    assert report["missing_alleles_imputed_at_typed_sites"] == 1


def test_windows_without_a_typed_site_are_imputed_and_reported(impute_env, tmp_path, caplog):
    """A target typed only at the start of the chromosome: the other windows have no observed site.
    They are still imputed (from the reference frequencies and neighbours at distance 0), and the
    log says which windows had nothing to match on."""
    from impute_data import vcf_lines, write_vcf

    from ragimpute.impute import impute_target
    from ragimpute.windows import load_windows

    env = impute_env
    # a private copy: the new mask and its index must not appear in the shared set-up
    results = Path(shutil.copytree(env.results, tmp_path / "results"))
    header, records = vcf_lines(env.target)
    first = load_windows(env.windows).iloc[0]
    records = [r for r in records if int(r[1]) <= int(first["last_pos"]) // 2]
    assert records
    caplog.set_level("WARNING", logger="ragimpute")
    target = write_vcf(tmp_path / "t.vcf", header, records)
    report = impute_target(results, "20", results / "split/samples.tsv", target, "retrieval",
                           tmp_path / "o.vcf.gz", options={"k": 8},
                           reference_splits=("train",))  # fmt: skip
    assert report["sites"] == len(env.sites) and report["typed_sites"] == len(records)
    assert "windows have no observed site" in caplog.text


# A tiny reference panel, good and then broken in the ways panels are: the window stage refuses it,
# naming the file and the record, and the windows written before stay as they were.


def _panel(tmp_path: Path, edit=None) -> tuple[Path, list[str]]:
    import numpy as np
    from conftest import random_records, vcf_text, write_vcf

    rng = np.random.default_rng(4)
    samples = [f"S{i}" for i in range(8)]
    records = random_records(rng, 40, len(samples))
    if edit:
        records = edit(records)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_vcf(tmp_path / "panel.vcf.gz", vcf_text(records, samples), index=edit is None)
    return path, samples


def _set_gt(i, j, gt):
    def edit(records):
        c, p, ref, alt, flt, gts = records[i]
        gts = list(gts)
        gts[j] = gt
        records[i] = (c, p, ref, alt, flt, gts)
        return records

    return edit


BAD_PANELS = {
    "unphased": (_set_gt(5, 1, "0/1"), "unphased genotype '0/1' for sample S1"),
    "missing-genotype": (_set_gt(7, 2, ".|."), "missing genotype '.|.' for sample S2"),
    "unsorted": (lambda r: r[:3] + [r[4], r[3]] + r[5:], "records are not sorted"),
    "duplicate-position": (lambda r: r[:6] + [r[5]] + r[6:], "two biallelic SNV records"),
}


@pytest.mark.parametrize("case", list(BAD_PANELS))
def test_bad_panel_is_refused_and_earlier_windows_stay(tmp_path, case):
    from ragimpute.errors import InputError
    from ragimpute.split import random_split, write_split
    from ragimpute.windows import run_window_stage

    good, samples = _panel(tmp_path / "good")
    split = tmp_path / "split.tsv"
    write_split(random_split(samples, {"train": 0.5, "val": 0.25, "test": 0.25}, 1), split, {})
    out = tmp_path / "windows" / "20"
    run_window_stage(good, split, "20", 16, 4, out)
    before = snapshot(out)
    edit, says = BAD_PANELS[case]
    bad, _ = _panel(tmp_path / "bad", edit)
    with pytest.raises(InputError) as e:
        run_window_stage(bad, split, "20", 16, 4, out)
    assert str(bad) in str(e.value) and says in str(e.value)
    assert e.value.record is not None and e.value.hint
    assert snapshot(out) == before


@pytest.mark.parametrize("how", ["truncated", "plain-gzip"])
def test_truncated_or_plain_gzip_panel_is_refused(tmp_path, how):
    import gzip

    from ragimpute.errors import InputError
    from ragimpute.split import random_split, write_split
    from ragimpute.windows import run_window_stage

    good, samples = _panel(tmp_path / "good")
    split = tmp_path / "split.tsv"
    write_split(random_split(samples, {"train": 0.5, "val": 0.25, "test": 0.25}, 1), split, {})
    bad = tmp_path / "bad.vcf.gz"
    if how == "truncated":
        bad.write_bytes(good.read_bytes()[:-100])
    else:
        bad.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())))
    with pytest.raises(InputError) as e:
        run_window_stage(bad, split, "20", 16, 4, tmp_path / "w")
    says = {"truncated": "file is truncated", "plain-gzip": "gzip- but not bgzip"}[how]
    assert str(bad) in str(e.value) and says in str(e.value) and e.value.hint
    assert not (tmp_path / "w").exists()


def test_a_job_started_before_its_inputs_were_known_says_to_run_again_without_forcerun(tmp_path):
    """Snakemake can start a job whose input function hangs on a checkpoint it re-made (``input:
    <TBD>`` after --forcerun mask) without its named inputs: the script stops with what to do, in
    the rule's log, instead of an AttributeError on the first input it reads."""
    from types import SimpleNamespace

    from snakemake.iocontainers import InputFiles

    from ragimpute.smk import known_inputs

    log = tmp_path / "impute.log"
    # what Snakemake gives such a job: the checkpoint's output, unnamed
    job = SimpleNamespace(
        input=InputFiles(["results/targets/20/aligned/alignment.json"]),
        log=[str(log)],
        rule="impute",
    )
    with pytest.raises(SystemExit) as e:
        known_inputs(job, "alignment", "target")
    assert e.value.code == 1
    text = log.read_text()
    assert "alignment, target missing" in text and "run snakemake again without --forcerun" in text
    job.input = InputFiles(["a.json", "t.vcf.gz"])
    job.input._set_name("alignment", 0)
    job.input._set_name("target", 1)
    assert known_inputs(job, "alignment", "target") is job.input


def test_engine_settings_add_back_what_the_rules_leave_out_of_their_parameters():
    """The rules' engine parameter lacks the settings that leave the output as it is (so that a
    change reruns nothing); the scripts get them back from the config, and a method that does not
    run the engine still gets none."""
    from types import SimpleNamespace

    from ragimpute.methods import ENGINE_OUTPUT_NEUTRAL
    from ragimpute.smk import engine_settings

    config = {"engine": {"states": 40, "block_sites": 17, "ne": 5e4}}
    rule = {k: v for k, v in config["engine"].items() if k not in ENGINE_OUTPUT_NEUTRAL}
    assert "block_sites" not in rule
    job = SimpleNamespace(params=SimpleNamespace(engine=rule), config=config)
    assert engine_settings(job) == config["engine"]
    job.params.engine = {}
    assert engine_settings(job) == {}


@pytest.mark.parametrize("how", ["stale-index", "truncated-split"])
def test_window_stage_refuses_a_stale_panel_index_or_a_truncated_split(tmp_path, how):
    """A panel extended after it was indexed (htslib would read only the sites the old index lists)
    and a results/split/samples.tsv cut short (half the reference panel) stop the stage, named."""

    from ragimpute.errors import ArtifactError, InputError
    from ragimpute.split import random_split, write_split
    from ragimpute.windows import run_window_stage

    panel, samples = _panel(tmp_path / "p")
    split = tmp_path / "split" / "samples.tsv"
    split.parent.mkdir()
    write_split(random_split(samples, {"train": 0.5, "val": 0.25, "test": 0.25}, 1), split, {})
    if how == "stale-index":
        st = os.stat(f"{panel}.tbi")
        os.utime(f"{panel}.tbi", ns=(st.st_atime_ns, st.st_mtime_ns - 60 * 10**9))
        error, says = InputError, [str(panel), f"{panel}.tbi is older", "tabix -f -p vcf"]
    else:
        data = split.read_bytes()
        split.write_bytes(data[: len(data) // 2])
        error, says = ArtifactError, [str(split), "--forcerun split"]
    with pytest.raises(error) as e:
        run_window_stage(panel, split, "20", 16, 4, tmp_path / "w")
    assert all(s in str(e.value) for s in says), str(e.value)
    assert not (tmp_path / "w").exists()


def _contig_vcf(path: Path, contigs: list[str]) -> Path:
    """A bgzipped, indexed VCF of two samples with a few SNVs on each of ``contigs``."""
    import pysam

    lines = ["##fileformat=VCFv4.2", *(f"##contig=<ID={c}>" for c in contigs),
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB"]  # fmt: skip
    for c in contigs:
        lines += [f"{c}\t{p}\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|0" for p in (100, 200, 300)]
    plain = path.with_suffix("")
    plain.write_text("\n".join(lines) + "\n")
    pysam.tabix_compress(str(plain), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def _own_data_plan(
    tmp_path: Path,
    panel: list[str],
    target: list[str],
    chromosomes: list[str],
    genetic_map="",
    truth: list[str] | None = None,
):
    """``snakemake -n`` of a run on your own target: the panel on ``panel``, the target on
    ``target`` (also the array manifest), the truth on ``truth`` (None: no truth),
    ``chromosomes:`` and ``panel.genetic_map`` as given."""
    p = _contig_vcf(tmp_path / "panel.vcf.gz", panel)
    t = _contig_vcf(tmp_path / "target.vcf.gz", target)
    truth_vcf = "" if truth is None else str(_contig_vcf(tmp_path / "truth.vcf.gz", truth))
    extra = write_yaml(tmp_path / "own.yaml", {
        "panel": {"vcf": str(p), "array_manifest": str(t), "genetic_map": str(genetic_map)},
        "chromosomes": chromosomes, "impute": {"target_vcf": str(t), "truth_vcf": truth_vcf},
        "evaluate": {"methods": ["af"]}})  # fmt: skip
    return snakemake(tmp_path, "-n", "--cores", "1", configs=(TINY, extra)), t


@pytest.mark.slow
def test_a_panel_chromosome_the_own_target_lacks_is_not_planned(tmp_path):
    """A panel of chr1-chr3 and a target of 1 and 2 (and 5, which the panel lacks), `chromosomes:`
    empty: the run planned chr3 too, and its mask job failed minutes in with "check the build". Now
    only the chromosomes both have are planned, and the log says which were left out."""
    r, t = _own_data_plan(tmp_path, ["chr1", "chr2", "chr3"], ["1", "2", "5"], [])
    text = output(r)
    assert r.returncode == 0, text[-3000:]
    assert "panel chromosomes without target records are not imputed: chr3" in text
    assert "impute/chr1/af.vcf.gz" in text and "impute/chr2/af.vcf.gz" in text
    assert "chr3" not in text.replace("not imputed: chr3", "")
    # Unindexed, the target is read once and what it holds kept: the DAG is built in every job on
    # a cluster, and a whole-genome array VCF takes seconds to read.
    Path(f"{t}.tbi").unlink()
    r = snakemake(tmp_path, "-n", "--cores", "1", configs=(TINY, tmp_path / "own.yaml"))
    assert r.returncode == 0 and "not imputed: chr3" in output(r), output(r)[-3000:]
    assert list((tmp_path / TINY_RESULTS / "chunks").glob("positions-*.npz"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, chromosomes, says",
    [
        (["1", "2"], ["chr1", "chr3"], ["has no records on chr3, which `chromosomes:` names",
                                        "Remove chr3 from `chromosomes:`"]),
        (["7"], [], ["has records on no chromosome of the panel", "the panel's: chr1, chr2, chr3",
                     "same genome build"]),
    ],
    ids=["configured-chromosome-missing", "no-shared-chromosome"],
)  # fmt: skip
def test_own_target_chromosomes_are_checked_before_any_job_runs(
    tmp_path, target, chromosomes, says
):
    r, t = _own_data_plan(tmp_path, ["chr1", "chr2", "chr3"], target, chromosomes)
    text = output(r)
    assert r.returncode != 0
    assert f"{t}: the target (impute.target_vcf)" in text, text[-3000:]
    for words in says:
        assert words in text, text[-3000:]
    assert "Traceback" not in text


@pytest.mark.slow
def test_one_chromosomes_hapmap_map_is_refused_in_a_run_of_several(tmp_path):
    """A HapMap map of one chromosome (Position Rate Map: no chromosome column), as 1000 Genomes'
    genetic_map_chr1.txt, in a run of chr1 and chr2: chr2 silently got chr1's map. Now the plan
    stops and says to give one map with a chromosome column; a PLINK map of both runs."""
    hapmap = tmp_path / "genetic_map_chr1.txt"
    hapmap.write_text("Position(bp) Rate(cM/Mb) Map(cM)\n100 1.0 0.0\n300 1.0 0.0002\n")
    r, _ = _own_data_plan(tmp_path, ["chr1", "chr2"], ["1", "2"], [], genetic_map=hapmap)
    text = output(r)
    assert r.returncode != 0 and "Traceback" not in text
    assert f"{hapmap}: panel.genetic_map is one chromosome's HapMap map" in text, text[-3000:]
    assert "this run imputes chr1, chr2" in text and "cat plink.chr*.GRCh38.map" in text
    plink = tmp_path / "plink.map"
    plink.write_text("".join(f"{c}\t.\t{cm}\t{bp}\n" for c in ("chr1", "chr2")
                             for bp, cm in ((100, 0.0), (300, 0.0002))))  # fmt: skip
    r, _ = _own_data_plan(tmp_path, ["chr1", "chr2"], ["1", "2"], [], genetic_map=plink)
    assert r.returncode == 0, output(r)[-3000:]


@pytest.mark.slow
def test_a_truth_without_a_chromosome_of_the_run_is_refused_before_any_job_runs(tmp_path):
    """A truth VCF of chr1 only, in a run of chr1 and chr2: chr2's evaluate jobs failed after every
    imputation had run. Now the plan stops, naming the truth, chr2 and the ways out."""
    r, _ = _own_data_plan(tmp_path, ["chr1", "chr2"], ["1", "2"], [], truth=["1"])
    text = output(r)
    assert r.returncode != 0 and "Traceback" not in text
    truth = tmp_path / "truth.vcf.gz"
    assert f"{truth}: the truth (impute.truth_vcf) has no records on chr2" in text, text[-3000:]
    assert 'set impute.truth_vcf: "" to stop at the imputed VCFs' in text
    r, _ = _own_data_plan(tmp_path, ["chr1", "chr2"], ["1", "2"], [], truth=["chr1", "chr2"])
    assert r.returncode == 0, output(r)[-3000:]
