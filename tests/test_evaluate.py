"""Evaluation: metrics against an independent numpy computation, readers for every tool's VCF, the
comparison across methods and chromosomes, and the workflow end to end (slow)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
from impute_data import CHROM, shared_env, vcf_lines, write_bgzip

from ragimpute.errors import InputError, UnreadableArtifactError
from ragimpute.evaluate import (
    BIN_LABELS,
    bin_table,
    compare,
    evaluate,
    maf_bin,
    read_dosages,
    read_truth,
    site_scores,
)
from ragimpute.impute import impute_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared_env(tmp_path_factory)


def numpy_metrics(ds, gt, truth):
    """The field's definitions, written directly over the flattened pairs."""
    ok = ~np.isnan(truth) & ~np.isnan(ds)
    x, y = ds[ok], truth[ok]
    r2 = np.corrcoef(x, y)[0, 1] ** 2
    okg = ok & ~np.isnan(gt)
    c, t = gt[okg], truth[okg]
    conc = np.mean(c == t)
    nonref = (c > 0) | (t > 0)
    nrc = np.mean(c[nonref] == t[nonref])
    tp = np.minimum(c, t).sum()
    fp = np.clip(c - t, 0, None).sum()
    fn = np.clip(t - c, 0, None).sum()
    return r2, conc, nrc, 2 * tp / (2 * tp + fp + fn), ok.sum()


def test_metrics_match_numpy():
    rng = np.random.default_rng(5)
    n_sites, n = 400, 25
    maf = rng.choice([0.001, 0.004, 0.007, 0.02, 0.04, 0.1, 0.3, 0.5], n_sites)
    truth = rng.binomial(2, maf[:, None], (n_sites, n)).astype(float)
    ds = np.clip(truth + rng.normal(0, 0.4, truth.shape), 0, 2)
    gt = np.rint(ds)
    truth[rng.random(truth.shape) < 0.02] = np.nan  # missing true genotypes are left out
    ds[rng.random(ds.shape) < 0.01] = np.nan
    per = site_scores(ds, gt, truth)
    per["bin"] = maf_bin(maf)
    per["info_r2"] = rng.random(n_sites)
    table = bin_table(per).set_index("maf_bin")
    for b, label in enumerate([*BIN_LABELS, "all"]):
        sel = slice(None) if label == "all" else maf_bin(maf) == b
        r2, conc, nrc, f1, n_pairs = numpy_metrics(ds[sel], gt[sel], truth[sel])
        row = table.loc[label]
        assert row["r2"] == pytest.approx(r2, rel=1e-9)
        assert row["concordance"] == pytest.approx(conc)
        assert row["nonref_concordance"] == pytest.approx(nrc)
        assert row["alt_f1"] == pytest.approx(f1)
        assert row["n_genotypes"] == n_pairs
    # Per-site true r² (NaN where the truth or the dosage is constant) and its correlation with INFO R2.
    n_defined = 0
    for i in range(n_sites):
        ok = ~np.isnan(truth[i]) & ~np.isnan(ds[i])
        if ds[i][ok].std() == 0 or truth[i][ok].std() == 0:
            assert np.isnan(per["true_r2"][i])
            continue
        n_defined += 1
        assert per["true_r2"][i] == pytest.approx(np.corrcoef(ds[i][ok], truth[i][ok])[0, 1] ** 2)
    assert n_defined > 100
    both = per[["info_r2", "true_r2"]].dropna()
    corr = np.corrcoef(both["info_r2"], both["true_r2"])[0, 1]
    assert table.loc["all", "info_r2_vs_true_r2"] == pytest.approx(corr)


def test_dosage_parser_reads_what_python_reads():
    """The compiled parser of dosage fields gives float()'s value to the bit; what it does not take
    (exponents, nan, empty fields, long mantissas) goes the slow way with the same result."""
    from ragimpute.evaluate import _numbers

    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, 5000)
    tokens = [f"{v:.{rng.integers(0, 7)}f}" for v in x] + [".", "0", "2", "1.", ".5", "-0.0"]
    tokens = [tokens[i] for i in rng.permutation(len(tokens))]
    seps = rng.choice(["\t", ","], len(tokens) - 1)
    text = tokens[0] + "".join(sep + t for sep, t in zip(seps, tokens[1:], strict=True))
    want = np.array([np.nan if t == "." else float(t) for t in tokens])
    got = _numbers(text, len(tokens))
    np.testing.assert_array_equal(got, want)  # NaN where NaN, equal bits elsewhere
    assert np.array_equal(np.signbit(got), np.signbit(want))
    for odd in ("1e-05\t0.5", "nan\t1", "0.5\t\t1", "0.12345678901234567\t1", "0.5\tx"):
        ref = pd.to_numeric(pd.Series(odd.replace(",", "\t").split("\t")), errors="coerce")
        np.testing.assert_array_equal(_numbers(odd, 2), ref.to_numpy(dtype=float))
    assert _numbers("", 0).size == 0


def test_maf_bins_are_closed_above():
    assert list(maf_bin([0, 0.005, 0.0051, 0.01, 0.05, 0.0501, 0.5])) == [0, 0, 1, 1, 2, 3, 3]


def test_maf_bins_of_the_minor_allele_count_exactly(env, tmp_path):
    """A site at a bin edge is binned by its minor allele's count whichever allele is ALT: AC 760 of
    800 is MAF 5 % (1-5 %), as AC 40 is, though 1 - 760/800 is 0.050000000000000044."""
    from fractions import Fraction

    sites = pd.read_parquet(env.windows / "sites.parquet")
    rng = np.random.default_rng(2)
    sites["an"] = 800
    sites["ac"] = rng.choice([0, 4, 796, 5, 795, 8, 792, 40, 760, 41, 759, 400, 800], len(sites))
    af = sites["ac"] / sites["an"]
    sites["af"], sites["maf"] = af, np.minimum(af, 1 - af)  # what the window stage wrote before
    sites.to_parquet(tmp_path / "sites.parquet")
    evaluate(env.truth, env.truth, tmp_path / "sites.parquet", env.target, "truth", tmp_path / "e")
    per_site = pd.read_csv(tmp_path / "e" / "sites.tsv.gz", sep="\t")
    edges = [Fraction(1, 200), Fraction(1, 100), Fraction(1, 20)]
    at = sites.set_index("pos")
    want = [
        sum(Fraction(min(a, 800 - a), 800) > e for e in edges)
        for a in at.loc[per_site["pos"], "ac"]
    ]
    assert per_site["bin"].tolist() == want
    assert {760, 792, 796} <= set(at.loc[per_site["pos"], "ac"])  # the edges, from above
    bins = pd.read_csv(tmp_path / "e" / "bins.tsv", sep="\t").set_index("maf_bin")
    for b, label in enumerate(BIN_LABELS):
        assert bins.loc[label, "n_sites"] == want.count(b)


@pytest.mark.parametrize("splits", [("train",), ("train", "val", "test"), ("val", "test")])
def test_maf_bins_are_the_imputation_references(env, tmp_path, splits):
    """The bins are the MAF of the panel the tools imputed from: with one's own targets the whole
    panel (every split), not the train split alone. Brute force: the panel VCF's genotypes."""
    from fractions import Fraction

    want = set(sum((env.split_samples[s] for s in splits), []))
    text = subprocess.run(
        ["bcftools", "query", "-f", "%POS[\t%SAMPLE=%GT]\n", str(env.panel)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts = {}
    for line in text.splitlines():
        pos, *calls = line.split("\t")
        alleles = [a for c in calls for a in c.split("=")[1].split("|") if c.split("=")[0] in want]
        counts[int(pos)] = (alleles.count("1"), len(alleles))
    evaluate(env.truth, env.truth, env.windows / "sites.parquet", env.target, "truth", tmp_path,
             reference_splits=splits)  # fmt: skip
    per_site = pd.read_csv(tmp_path / "sites.tsv.gz", sep="\t")
    edges = [Fraction(1, 200), Fraction(1, 100), Fraction(1, 20)]
    expect = []
    for p in per_site["pos"]:
        ac, an = counts[p]
        expect.append(sum(Fraction(min(ac, an - ac), an) > e for e in edges))
    assert per_site["bin"].tolist() == expect
    minor = [min(counts[p][0], counts[p][1] - counts[p][0]) / counts[p][1] for p in per_site["pos"]]
    np.testing.assert_array_equal(per_site["maf"], minor)
    if splits != ("train",):  # the train split alone bins some of these sites otherwise
        assert (
            per_site["bin"] != maf_bin(env.sites.set_index("pos").loc[per_site["pos"], "maf"])
        ).any()


def test_perfect_imputation_scores_one(env, tmp_path):
    summary = evaluate(
        env.truth, env.truth, env.windows / "sites.parquet", env.target, "truth", tmp_path
    )
    bins = pd.read_csv(tmp_path / "bins.tsv", sep="\t").set_index("maf_bin")
    defined = bins["r2"].dropna()
    assert len(defined) >= 3 and np.allclose(defined, 1.0)
    assert np.allclose(bins[["concordance", "nonref_concordance", "alt_f1"]].dropna(), 1.0)
    n_typed = len(vcf_lines(env.target)[1])
    assert summary["typed_sites"] == n_typed
    assert summary["scored_sites"] == len(env.sites) - n_typed  # only untyped sites are scored
    assert summary["dose_field"] == "GT"


@pytest.fixture(scope="module")
def imputed(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("imputed")
    out = {}
    for m in ("af", "retrieval"):
        out[m] = d / f"{m}.vcf.gz"
        impute_target(
            env.results,
            CHROM,
            env.split,
            env.target,
            m,
            out[m],
            options={"k": 16},
            reference_splits=("train",),
        )
    return out


def test_retrieval_beats_allele_frequencies(env, imputed, tmp_path):
    scores = {}
    for m, path in imputed.items():
        s = evaluate(path, env.truth, env.windows / "sites.parquet", env.target, m, tmp_path / m)
        scores[m] = s["all"]
        assert s["info_field"] == "R2" and s["dose_field"] == "DS"
        assert s["scored_sites_not_in_output"] == 0
    assert scores["retrieval"]["r2"] > scores["af"]["r2"] + 0.1
    assert scores["retrieval"]["concordance"] > scores["af"]["concordance"]
    assert scores["af"]["mean_info_r2"] == 0  # one dosage for every target: no information
    table = compare([tmp_path / m / "sites.tsv.gz" for m in ("af", "retrieval")], tmp_path / "cmp")
    allrow = table[table["maf_bin"] == "all"].set_index("method")
    assert allrow.loc["af", "beats_retrieval"] == "no"
    assert allrow.loc["af", "r2_minus_retrieval"] == pytest.approx(
        scores["af"]["r2"] - scores["retrieval"]["r2"]
    )
    for png in ("r2_by_maf.png", "r2_calibration.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = pd.read_csv(tmp_path / "cmp" / "calibration.tsv", sep="\t")
    assert set(cal["method"]) >= {"retrieval"}
    assert cal.groupby("method")["n_sites"].sum()["retrieval"] == len(env.sites) - len(
        vcf_lines(env.target)[1]
    )


def test_compare_pools_chromosomes_exactly(env, imputed, tmp_path):
    evaluate(
        imputed["retrieval"],
        env.truth,
        env.windows / "sites.parquet",
        env.target,
        "retrieval",
        tmp_path,
    )
    per = pd.read_csv(tmp_path / "sites.tsv.gz", sep="\t")
    # the same scores, the same bytes (no temporary name or time in the gzip header)
    evaluate(imputed["retrieval"], env.truth, env.windows / "sites.parquet", env.target,
             "retrieval", tmp_path / "again")  # fmt: skip
    assert (tmp_path / "again" / "sites.tsv.gz").read_bytes() == (
        tmp_path / "sites.tsv.gz"
    ).read_bytes()
    half = len(per) // 2
    a, b = per.iloc[:half].copy(), per.iloc[half:].copy()
    b["chrom"] = "21"
    a.to_csv(tmp_path / "a.tsv.gz", sep="\t", index=False)
    b.to_csv(tmp_path / "b.tsv.gz", sep="\t", index=False)
    pooled = compare([tmp_path / "a.tsv.gz", tmp_path / "b.tsv.gz"], tmp_path / "pooled")
    whole = pd.read_csv(tmp_path / "bins.tsv", sep="\t")
    assert np.allclose(pooled["r2"], whole["r2"], equal_nan=True)
    assert (pooled["n_genotypes"] == whole["n_genotypes"]).all()


def test_compare_says_when_a_method_misses_scored_sites(env, imputed, tmp_path):
    """A tool whose output lacks some scored sites is pooled over fewer sites than the others:
    comparison.tsv says how many, not only its n_sites."""
    header, records = vcf_lines(imputed["retrieval"])
    typed = {int(r[1]) for r in vcf_lines(env.target)[1]}
    untyped = [i for i, r in enumerate(records) if int(r[1]) not in typed]
    drop = set(untyped[::7])
    kept = [r for i, r in enumerate(records) if i not in drop]
    partial = write_bgzip(tmp_path / "partial.vcf.gz", header, kept)
    tables = []
    for m, path in (("retrieval", imputed["retrieval"]), ("partial", partial)):
        evaluate(path, env.truth, env.windows / "sites.parquet", env.target, m, tmp_path / m)
        tables.append(tmp_path / m / "sites.tsv.gz")
    table = compare(tables, tmp_path / "cmp").set_index(["method", "maf_bin"])
    n_scored = len(env.sites) - len(typed)
    assert table.loc[("partial", "all"), "n_sites"] == n_scored - len(drop)
    assert table.loc[("retrieval", "all"), "note"] == ""
    assert table.loc[("partial", "all"), "note"] == (
        f"scored sites not in its output (scored on the others): {len(drop)} of {n_scored} on {CHROM}"
    )


def test_fewer_typed_sites_given_pooled_over_chunk_cores(env, tmp_path):
    """A tool given fewer typed sites (Minimac4 without the ones with a missing call) says so in a
    chunked run too: each chunk counts the typed sites of its core it was given, and the note sums
    the chunks of a chromosome, as an unchunked run counts them."""
    from ragimpute.evaluate import sites_in_core

    header, records = vcf_lines(env.target)
    given = write_bgzip(tmp_path / "given.vcf.gz", header, records[:3] + records[4:])
    pos = env.sites["pos"].to_numpy()
    mid = int(pos[len(pos) // 2])
    cores = [(int(pos[0]), mid), (mid + 1, int(pos[-1]))]
    tables = []
    for i, core in enumerate(cores):
        n = sites_in_core(given, core)
        assert n == sum(core[0] <= int(r[1]) <= core[1] for r in records[:3] + records[4:])
        out = tmp_path / f"c{i}"
        evaluate(env.truth, env.truth, env.windows / "sites.parquet", env.target, "minimac4", out,
                 core=core, typed_sites_given=n)  # fmt: skip
        tables.append(out / "sites.tsv.gz")
    table = compare(tables, tmp_path / "cmp")
    note = f"given fewer typed sites (missing calls left out): {len(records) - 1} of {len(records)} on {CHROM}"
    assert (table["note"] == note).all()


@pytest.mark.parametrize("damage", ["truncated", "summary_missing"])
def test_compare_refuses_a_damaged_evaluation(env, imputed, tmp_path, damage):
    """A per-site table cut short, or the summary.json beside it gone (its not-run reasons and
    caveats would be silently dropped), is refused naming the file and the rerun that makes it."""
    tables = []
    for m in ("af", "retrieval"):
        evaluate(imputed[m], env.truth, env.windows / "sites.parquet", env.target, m, tmp_path / m)
        tables.append(tmp_path / m / "sites.tsv.gz")
    if damage == "truncated":
        damaged = tables[1]
        data = damaged.read_bytes()
        damaged.write_bytes(data[: len(data) // 2])
    else:
        damaged = tmp_path / "retrieval" / "summary.json"
        damaged.unlink()
    with pytest.raises(UnreadableArtifactError) as e:
        compare(tables, tmp_path / "cmp")
    assert str(damaged) in str(e.value) and "--forcerun evaluate" in str(e.value)
    assert not (tmp_path / "cmp" / "comparison.tsv").exists()


def test_compare_reads_a_few_rows_at_a_time(env, imputed, tmp_path):
    """compare pools the sums of blocks of rows: three tables (one method over two chromosomes,
    another whole) read 5 rows at a time give the tables read whole, and those are the field's
    definitions over the concatenated rows."""
    per = {}
    for m in ("af", "retrieval"):
        evaluate(imputed[m], env.truth, env.windows / "sites.parquet", env.target, m, tmp_path / m)
        per[m] = pd.read_csv(tmp_path / m / "sites.tsv.gz", sep="\t")
    r = per["retrieval"]
    a, b = r.iloc[: len(r) // 2].copy(), r.iloc[len(r) // 2 :].copy()
    b["chrom"] = "21"
    a.to_csv(tmp_path / "a.tsv.gz", sep="\t", index=False)
    b.to_csv(tmp_path / "b.tsv.gz", sep="\t", index=False)
    files = [tmp_path / "a.tsv.gz", tmp_path / "af" / "sites.tsv.gz", tmp_path / "b.tsv.gz"]
    whole = compare(files, tmp_path / "whole", rows=10**9)
    few = compare(files, tmp_path / "few", rows=5)
    pd.testing.assert_frame_equal(few, whole, rtol=1e-9)
    cal = {k: pd.read_csv(tmp_path / k / "calibration.tsv", sep="\t") for k in ("whole", "few")}
    pd.testing.assert_frame_equal(cal["few"], cal["whole"], rtol=1e-9)
    assert list(whole["method"].unique()) == ["retrieval", "af"]  # in order of appearance
    row = whole[(whole["method"] == "retrieval") & (whole["maf_bin"] == "all")].iloc[0]
    both = r[["info_r2", "true_r2"]].dropna()
    assert row["n_sites"] == len(r) and row["n_genotypes"] == r["n"].sum()
    assert row["info_r2_vs_true_r2"] == pytest.approx(
        np.corrcoef(both["info_r2"], both["true_r2"])[0, 1], rel=1e-9
    )
    assert row["mean_true_r2"] == pytest.approx(r["true_r2"].mean(), rel=1e-12)
    c = cal["whole"][cal["whole"]["method"] == "retrieval"]
    assert c["n_sites"].sum() == r["info_r2"].notna().sum()
    for _, got in c.iterrows():
        lo, hi = (float(x) for x in got["info_r2_bin"].split("-"))
        sel = r[(r["info_r2"] >= lo) & ((r["info_r2"] < hi) | (hi == 1.0))]
        assert got["n_sites"] == len(sel)
        assert got["mean_info_r2"] == pytest.approx(sel["info_r2"].mean(), abs=1e-6)  # rounded


def test_scores_do_not_depend_on_how_the_files_are_read(env, imputed, tmp_path):
    """Read a few sites at a time or whole; a truth with its samples in another order, one sample
    more than was imputed, and no index (read whole); a chunk's core read a site at a time: the same
    per-site scores."""
    sites = env.windows / "sites.parquet"
    out = {}
    for name, block in (("whole", 10**9), ("few", 7 * 50)):
        evaluate(imputed["retrieval"], env.truth, sites, env.target, "r", tmp_path / name,
                 block_genotypes=block)  # fmt: skip
        out[name] = pd.read_csv(tmp_path / name / "sites.tsv.gz", sep="\t")
    header, records = vcf_lines(env.truth)
    cols = header[-1].split("\t")
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, *range(len(cols) - 1, 8, -1)]
    header[-1] = "\t".join([cols[i] for i in order] + ["EXTRA"])
    records = [[r[i] for i in order] + ["1|1"] for r in records]
    other = write_bgzip(tmp_path / "other.vcf.gz", header, records)  # not indexed
    s = evaluate(imputed["retrieval"], other, sites, env.target, "r", tmp_path / "other",
                 block_genotypes=1)  # fmt: skip
    assert s["samples_scored"] == len(cols) - 9
    out["other"] = pd.read_csv(tmp_path / "other" / "sites.tsv.gz", sep="\t")
    assert len(out["whole"]) > 50
    for name in ("few", "other"):
        pd.testing.assert_frame_equal(out[name], out["whole"], rtol=1e-12)
    # a chunk's core, read a site at a time: the whole run's rows within it
    pos = out["whole"]["pos"].to_numpy()
    core = (int(pos[len(pos) // 3]), int(pos[2 * len(pos) // 3]))
    evaluate(imputed["retrieval"], env.truth, sites, env.target, "r", tmp_path / "core",
             core=core, block_genotypes=1)  # fmt: skip
    got = pd.read_csv(tmp_path / "core" / "sites.tsv.gz", sep="\t")
    want = out["whole"][(pos >= core[0]) & (pos <= core[1])].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, rtol=1e-12)


def rewrite_dosages(src: Path, dst: Path, how: str) -> Path:
    """The same genotypes as another tool writes them: Beagle (no ##contig, DR2) or Minimac4 (HDS only),
    or with REF/ALT swapped."""
    header, records = vcf_lines(src)
    new_header = [h for h in header if not h.startswith(("##contig", "##INFO", "##FORMAT"))]
    fmt_lines = {
        "beagle": ['##INFO=<ID=DR2,Number=A,Type=Float,Description="Dosage R-Squared">',
                   '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
                   '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dose">'],
        "hds": ['##INFO=<ID=R2,Number=1,Type=Float,Description="R2">',
                '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
                '##FORMAT=<ID=HDS,Number=2,Type=Float,Description="Haplotype dosages">'],
        "swapped": ['##INFO=<ID=R2,Number=1,Type=Float,Description="R2">',
                    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
                    '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dose">'],
    }[how]  # fmt: skip
    if how != "beagle":
        new_header.insert(1, f"##contig=<ID={CHROM}>")
    new_header[-1:-1] = fmt_lines
    out = []
    for r in records:
        r2 = r[7].split("R2=")[1].split(";")[0]
        fields = [f.split(":") for f in r[9:]]
        if how == "beagle":
            out.append(r[:7] + [f"DR2={r2}", "GT:DS"] + [f"{f[0]}:{f[1]}" for f in fields])
        elif how == "hds":
            hds = []
            for f in fields:
                ds = float(f[1])
                hds.append(f"{f[0]}:{ds / 2:.4f},{ds / 2:.4f}")
            out.append(r[:7] + [f"R2={r2}", "GT:HDS"] + hds)
        else:
            flip = {"0": "1", "1": "0"}
            sw = [
                "|".join(flip[a] for a in f[0].split("|")) + f":{2 - float(f[1]):.3f}"
                for f in fields
            ]
            out.append(r[:3] + [r[4], r[3]] + r[5:7] + [f"R2={r2}", "GT:DS"] + sw)
    return write_bgzip(dst, new_header, out)


@pytest.mark.parametrize("how", ["beagle", "hds", "swapped"])
def test_other_tools_outputs_score_the_same(env, imputed, tmp_path, how):
    sites = env.windows / "sites.parquet"
    ref = evaluate(imputed["retrieval"], env.truth, sites, env.target, "ours", tmp_path / "ours")
    other = rewrite_dosages(imputed["retrieval"], tmp_path / f"{how}.vcf.gz", how)
    got = evaluate(other, env.truth, sites, env.target, how, tmp_path / how)
    assert got["all"]["r2"] == pytest.approx(ref["all"]["r2"], abs=1e-6)
    assert got["all"]["concordance"] == pytest.approx(ref["all"]["concordance"])
    assert got["all"]["info_r2_vs_true_r2"] == pytest.approx(
        ref["all"]["info_r2_vs_true_r2"], abs=1e-6
    )
    assert got["info_field"] == ("DR2" if how == "beagle" else "R2")
    assert got["dose_field"] == ("HDS" if how == "hds" else "DS")


@pytest.mark.parametrize("indexed", [True, False])
def test_truth_in_other_naming_without_contig_lines(env, tmp_path, indexed):
    """The truth's chromosome is found in either naming, with or without an index and ##contig
    lines; a chromosome the truth does not hold is an error naming it."""
    header, records = vcf_lines(env.truth)
    header = [h for h in header if not h.startswith("##contig")]
    for r in records:
        r[0] = f"chr{CHROM}"
    path = write_bgzip(tmp_path / "truth.vcf.gz", header, records)
    if indexed:
        pysam.tabix_index(str(path), preset="vcf", force=True)
    ref = read_truth(env.truth, CHROM)
    got = read_truth(path, CHROM)
    assert (got["sites"]["chrom"] == f"chr{CHROM}").all()
    pd.testing.assert_frame_equal(
        got["sites"].drop(columns="chrom"), ref["sites"].drop(columns="chrom")
    )
    np.testing.assert_array_equal(got["gt"], ref["gt"])
    with pytest.raises(InputError, match="no records on chromosome 21.*same chromosome"):
        read_truth(path, "21")


def test_lowercase_truth_and_imputed_alleles_are_the_uppercase_sites(env, tmp_path):
    """Bases are case-insensitive: a truth or imputed VCF with lowercase REF/ALT gives the sites
    (uppercase) and genotypes of the uppercase file, so that they meet the reference's sites."""
    header, records = vcf_lines(env.truth)
    for r in records:
        r[3], r[4] = r[3].lower(), r[4].lower()
    path = write_bgzip(tmp_path / "truth.vcf.gz", header, records)
    ref, got = read_truth(env.truth, CHROM), read_truth(path, CHROM)
    pd.testing.assert_frame_equal(got["sites"], ref["sites"])
    np.testing.assert_array_equal(got["gt"], ref["gt"])
    ref, got = read_dosages(env.truth, CHROM), read_dosages(path, CHROM)
    pd.testing.assert_frame_equal(got["sites"], ref["sites"])


def test_imputed_samples_not_in_truth(env, imputed, tmp_path):
    header, records = vcf_lines(env.truth)
    cols = header[-1].split("\t")
    header[-1] = "\t".join(cols[:9] + [f"OTHER{i}" for i in range(len(cols) - 9)])
    other = write_bgzip(tmp_path / "other_truth.vcf.gz", header, records)
    with pytest.raises(InputError, match="none of its .* samples is in the truth VCF"):
        evaluate(imputed["af"], other, env.windows / "sites.parquet", env.target, "af", tmp_path)


def test_read_dosages_of_a_real_beagle_run(env, tmp_path):
    if shutil.which("beagle") is None:
        pytest.skip("beagle is not installed")
    aligned = tmp_path / "aligned.vcf.gz"
    impute_target(env.results, CHROM, env.split, env.target, "af", tmp_path / "af.vcf.gz",
                  reference_splits=("train",),
                  aligned_dir=tmp_path / "al")  # fmt: skip
    aligned = tmp_path / "al" / "target.vcf.gz"
    run = subprocess.run(
        ["beagle", f"ref={env.reference}", f"gt={aligned}", f"out={tmp_path / 'bg'}", "nthreads=1",
         "seed=1", "gp=true"], capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    d = read_dosages(tmp_path / "bg.vcf.gz", CHROM)
    assert d["info_field"] == "DR2" and d["dose_field"] == "DS"
    assert len(d["sites"]) == len(env.sites)
    s = evaluate(
        tmp_path / "bg.vcf.gz",
        env.truth,
        env.windows / "sites.parquet",
        aligned,
        "beagle",
        tmp_path / "ev",
    )
    assert s["scored_sites_not_in_output"] == 0 and s["all"]["r2"] > 0.5


# -- the workflow ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("beagle") is None, reason="beagle is not installed")
def test_workflow_tiny_config_through_evaluation(tiny_finished, tmp_path):
    """The tiny config: demo -> ... -> train -> impute (af, retrieval, copying model, trained model,
    Beagle, Minimac4 if installed) -> evaluate -> comparison table, plots and a self-contained report."""
    from workflow_runs import TINY, TINY_RESULTS, output, snakemake

    results = tiny_finished / TINY_RESULTS
    table = pd.read_csv(results / "evaluation" / "comparison.tsv", sep="\t")
    want = {"af", "retrieval", "copying", "model", "beagle"} | (
        {"minimac4"} if shutil.which("minimac4") else set()
    )
    assert set(table["method"]) == want
    assert (table.groupby("method").size() == len(BIN_LABELS) + 1).all()
    overall = table[table["maf_bin"] == "all"].set_index("method")["r2"]
    assert overall["retrieval"] > overall["af"] and overall["beagle"] > overall["af"]
    assert overall["model"] > overall["af"] and overall["copying"] > overall["af"]
    # The model's VCF records which checkpoint made it.
    assert "model_sha256" in (results / "impute" / "20" / "model.json").read_text()
    assert "beats_retrieval" in table.columns
    # The demo target is typed on the training array: one mask, one index, shared.
    assert len(list((results / "index" / "20").iterdir())) == 1
    # Beagle's output is indexed; every imputed VCF has its report or Snakemake benchmark.
    assert (results / "impute" / "20" / "beagle.vcf.gz.tbi").exists()
    assert (results / "benchmarks" / "impute" / "20" / "beagle.tsv").exists()
    assert (results / "impute" / "20" / "retrieval.json").exists()
    again = snakemake(tiny_finished, "-n", configs=(TINY,))
    assert "Nothing to be done" in output(again)
    report = tmp_path / "report.html"
    rep = snakemake(tiny_finished, "--report", str(report), configs=(TINY,))
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = report.read_text(errors="replace")
    assert "comparison.tsv" in html and "r2_by_maf.png" in html
