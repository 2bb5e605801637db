"""split: disjoint, seeded, fractions respected; a user's table is checked like any other input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import vcf_text, write_vcf

from ragimpute.atomic import read_json
from ragimpute.errors import InputError
from ragimpute.split import (
    SPLITS,
    check_disjoint,
    load_split,
    random_split,
    read_split_table,
    run_split_stage,
)

NAMES = [f"S{i:03d}" for i in range(100)]
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.mark.parametrize("n", [3, 4, 10, 37, 100])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_split_disjoint_complete_and_sized(n, seed):
    names = NAMES[:n]
    df = random_split(names, FRACTIONS, seed)
    assert df["sample"].tolist() == names  # file order kept
    groups = {s: set(df.loc[df["split"] == s, "sample"]) for s in SPLITS}
    assert set().union(*groups.values()) == set(names)
    assert sum(len(g) for g in groups.values()) == n  # disjoint
    for s in ("val", "test"):
        assert len(groups[s]) == max(1, round(FRACTIONS[s] * n))
    assert len(groups["train"]) == n - len(groups["val"]) - len(groups["test"]) >= 1


def test_random_split_is_seeded():
    a = random_split(NAMES, FRACTIONS, 7)
    b = random_split(NAMES, FRACTIONS, 7)
    c = random_split(NAMES, FRACTIONS, 8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_random_split_draws_uniformly():
    """Over many seeds every sample lands in test about as often as the fraction says."""
    counts = np.zeros(20)
    for seed in range(400):
        df = random_split(NAMES[:20], {"train": 0.5, "val": 0.25, "test": 0.25}, seed)
        counts += (df["split"] == "test").to_numpy()
    # 5 of 20 each time -> expect 100 per sample; binomial sd ~ 8.7, so 5 sd is a safe bound
    assert np.abs(counts - 100).max() < 45


@pytest.mark.parametrize(
    "fractions",
    [{"train": 0.8, "val": 0.1, "test": 0.2}, {"train": 1.2, "val": -0.1, "test": -0.1}],
)
def test_random_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        random_split(NAMES, fractions, 0)


def test_random_split_too_few_samples():
    with pytest.raises(InputError, match="2 samples cannot be split"):
        random_split(NAMES[:2], FRACTIONS, 0)
    with pytest.raises(InputError, match="no training samples"):
        random_split(NAMES[:3], {"train": 0.0, "val": 0.5, "test": 0.5}, 0)


# -- the user's table ------------------------------------------------------------------------------


def _table(tmp_path, rows: list[tuple[str, str]], header: str = "sample\tsplit"):
    p = tmp_path / "split.tsv"
    p.write_text(header + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return p


def test_table_is_used_in_vcf_order(tmp_path):
    vcf = ["A", "B", "C", "D", "E"]
    p = _table(tmp_path, [("E", "test"), ("B", "train"), ("A", "val"), ("D", "train")])
    df = read_split_table(p, vcf)
    assert df["sample"].tolist() == ["A", "B", "D", "E"]  # C is left out, order is the VCF's
    assert df["split"].tolist() == ["val", "train", "train", "test"]


@pytest.mark.parametrize(
    "rows,pattern",
    [
        (
            [("A", "train"), ("B", "val"), ("C", "test"), ("A", "test")],
            r"sample A is in two splits \(test, train\)",
        ),
        (
            [("A", "train"), ("B", "val"), ("C", "test"), ("A", "train")],
            r"sample A is listed twice \(train\)",
        ),
        (
            [("A", "train"), ("B", "val"), ("C", "test"), ("ZZ", "train")],
            r"1 samples are not in the panel VCF: ZZ",
        ),
        ([("A", "train"), ("B", "val"), ("C", "testing")], r"unknown split labels \['testing'\]"),
        ([("A", "train"), ("B", "train"), ("C", "test")], r"no samples in split\(s\) \['val'\]"),
        ([("A", "train"), ("B", "val"), ("C", "")], r"sample C has no split label"),
    ],
)
def test_table_errors_name_the_file_and_the_problem(tmp_path, rows, pattern):
    p = _table(tmp_path, rows)
    with pytest.raises(InputError, match=pattern) as e:
        read_split_table(p, ["A", "B", "C", "D"])
    assert str(e.value).startswith(str(p))


def test_table_with_wrong_columns(tmp_path):
    p = _table(tmp_path, [("A", "train")], header="id\tset")
    with pytest.raises(InputError, match=r"needs columns 'sample' and 'split'"):
        read_split_table(p, ["A"])


def test_table_missing(tmp_path):
    with pytest.raises(InputError, match="split table not found"):
        read_split_table(tmp_path / "nope.tsv", ["A"])


def test_check_disjoint(tmp_path):
    check_disjoint(["A", "B"], ["C", "D"], tmp_path / "t.vcf.gz")
    with pytest.raises(
        InputError, match=r"t\.vcf\.gz: 2 target samples are also in the reference panel: B, C"
    ):
        check_disjoint(["A", "B", "C"], ["C", "B", "D"], tmp_path / "t.vcf.gz")


def test_run_split_stage_writes_tsv_and_provenance(tmp_path):
    samples = [f"X{i}" for i in range(10)]
    vcf = write_vcf(
        tmp_path / "p.vcf.gz", vcf_text([("20", 100, "A", "C", "PASS", ["0|1"] * 10)], samples)
    )
    out = tmp_path / "split" / "samples.tsv"
    df = run_split_stage(vcf, out, FRACTIONS, seed=5)
    loaded = load_split(out)
    assert {s: len(v) for s, v in loaded.items()} == {"train": 8, "val": 1, "test": 1}
    assert sorted(sum(loaded.values(), [])) == sorted(samples)
    assert pd.read_csv(out, sep="\t")["sample"].tolist() == samples
    prov = read_json(out.with_suffix(".json"))
    assert prov["seed"] == 5 and prov["fractions"] == FRACTIONS and prov["panel"] == str(vcf)
    assert prov["counts"] == {"train": 8, "val": 1, "test": 1}
    pd.testing.assert_frame_equal(df, random_split(samples, FRACTIONS, 5))
    # a table replaces the random draw, and is recorded as the source
    table = _table(tmp_path, [("X1", "train"), ("X2", "val"), ("X3", "test"), ("X4", "train")])
    run_split_stage(vcf, out, FRACTIONS, seed=5, table=table)
    assert load_split(out) == {"train": ["X1", "X4"], "val": ["X2"], "test": ["X3"]}
    assert read_json(out.with_suffix(".json"))["source"] == str(table)


def test_names_that_look_like_missing_values_stay_names(tmp_path):
    """pandas reads "NA", "null", "nan" as missing by default; sample names must survive."""
    names = ["NA", "null", "nan", "S1", "S2", "S3"]
    out = tmp_path / "samples.tsv"
    from ragimpute.split import write_split

    write_split(random_split(names, FRACTIONS, 0), out, {})
    assert sorted(sum(load_split(out).values(), [])) == sorted(names)
    p = _table(tmp_path, [("NA", "train"), ("null", "val"), ("S1", "test")])
    assert read_split_table(p, names)["sample"].tolist() == ["NA", "null", "S1"]


def _written(tmp_path, n: int = 200):
    """The split stage's samples.tsv (and samples.json) of ``n`` samples, and its bytes."""
    from ragimpute.split import write_split

    out = tmp_path / "split" / "samples.tsv"
    out.parent.mkdir()
    write_split(random_split([f"S{i}" for i in range(n)], FRACTIONS, 1), out, {"seed": 1})
    return out, out.read_bytes()


@pytest.mark.parametrize("cut", ["half", "line", "mid-label", "header", "empty"])
def test_a_truncated_split_table_is_refused(tmp_path, cut):
    """`truncate -s 50%` of results/split/samples.tsv silently halved the reference panel."""
    from ragimpute.errors import UnreadableArtifactError

    out, data = _written(tmp_path)
    n = {
        "half": len(data) // 2,
        "line": data.rfind(b"\n", 0, len(data) // 2) + 1,  # at the end of a line: rows all whole
        "mid-label": len(data) - 3,
        "header": 5,
        "empty": 0,
    }[cut]
    out.write_bytes(data[:n])
    with pytest.raises(UnreadableArtifactError) as e:
        load_split(out)
    msg = str(e.value)
    assert msg.startswith(str(out)) and "--forcerun split" in msg
    assert "truncated or corrupted" in msg or "corrupt or truncated" in msg


def test_a_split_table_that_does_not_match_its_record_says_so(tmp_path):
    from ragimpute.errors import UnreadableArtifactError

    out, data = _written(tmp_path)
    lines = data.decode().splitlines(keepends=True)
    out.write_text("".join(lines[:-2] + lines[-1:]))  # a whole row gone from the middle
    with pytest.raises(UnreadableArtifactError, match=r"counts per split, .* are not those its record .*"
                       r"samples\.json gives.*--forcerun split"):  # fmt: skip
        load_split(out)


def test_a_complete_split_table_without_its_record_is_read(tmp_path):
    """A table written by hand (or by pandas) with no samples.json beside it is still read."""
    out, _ = _written(tmp_path, 10)
    out.with_suffix(".json").unlink()
    assert sum(len(v) for v in load_split(out).values()) == 10
