"""Targets on the other strand: non-A/T, non-C/G records with the reference's alleles complemented are
named (``strand_flip``) and left out; A/T and C/G records with the reference's REF/ALT but inverted
genotypes are caught by their allele frequency (``strand_frequency``); records near MAF 1/2 or with
too few called alleles are not checked; and the embedded demos lose no record to the check."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
import yaml
from impute_data import CHROM, shared_env, vcf_lines, write_vcf

from ragimpute.demo import ADMIXED_TARGETS, DemoSpec, make_demo
from ragimpute.split import run_split_stage
from ragimpute.targets import (
    PALINDROMIC,
    STRAND_LLR_THRESHOLD,
    UNMATCHED_REASONS,
    harmonise_target,
    make_demo_targets,
    read_target,
    strand_frequency_check,
)
from ragimpute.windows import run_window_stage, sites_with_hash

REPO = Path(__file__).resolve().parents[1]
COMPLEMENT = {"A": "T", "T": "A", "C": "G", "G": "C"}
INVERT = {"0": "1", "1": "0", ".": "."}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared_env(tmp_path_factory)


def palindromic(record: list[str]) -> bool:
    return {record[3], record[4]} in ({"A", "T"}, {"C", "G"})


def complemented(record: list[str]) -> list[str]:
    """The record as the other strand reads it: alleles complemented, genotypes as they are."""
    return record[:3] + [COMPLEMENT[record[3]], COMPLEMENT[record[4]]] + record[5:]


def swapped(record: list[str]) -> list[str]:
    """REF and ALT the other way round, genotypes 0<->1: the same calls."""
    gts = ["|".join(INVERT[a] for a in g.split("|")) for g in record[9:]]
    return record[:3] + [record[4], record[3]] + record[5:9] + gts


def inverted(record: list[str]) -> list[str]:
    """Alleles as they are, genotypes 0<->1: an A/T site genotyped on the other strand."""
    return record[:9] + ["|".join(INVERT[a] for a in g.split("|")) for g in record[9:]]


def harmonise(env, target: Path, out: Path) -> dict:
    # a mask store of the test's own: the shared one stays as the other modules expect it
    return harmonise_target(
        target, env.windows, env.split, out / "masks", out / "aligned", CHROM, 0.05, env.panel,
        reference_splits=["train"],
    )  # fmt: skip


def typed_positions(out: Path) -> list[int]:
    return [int(r[1]) for r in vcf_lines(out / "aligned" / "target.vcf.gz")[1]]


def unmatched(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "aligned" / "unmatched.tsv", sep="\t")


def reference_af(env, pos: int) -> float:
    """The ALT frequency of the imputation reference (the train split) at ``pos``, read with pysam
    from the reference VCF, not from ``sites.parquet``."""
    with pysam.VariantFile(str(env.reference)) as vf:
        (rec,) = [r for r in vf.fetch(CHROM, pos - 1, pos) if r.pos == pos]
        alleles = [a for s in rec.samples.values() for a in s["GT"]]
    return sum(alleles) / len(alleles)


def brute_llr(record: list[str], r: float) -> float:
    """log L(k | 1 - r) - log L(k | r) of the record's ALT count k among its n called alleles, from the
    binomial probabilities themselves."""
    calls = [a for g in record[9:] for a in g.replace("/", "|").split("|") if a != "."]
    n, k = len(calls), calls.count("1")
    r = min(max(r, 1e-3), 1 - 1e-3)
    like = lambda f: math.comb(n, k) * f**k * (1 - f) ** (n - k)  # noqa: E731
    return math.log(like(1 - r)) - math.log(like(r))


# -- strand_flip ---------------------------------------------------------------------------------------


def test_complemented_records_are_strand_flips_not_used(env, tmp_path, caplog):
    """A/G where the reference has T/C (and G/A, swapped as well) were allele mismatches: now named,
    still not used, with a warning naming the file and the fix. A/T and C/G records are their own
    complement: they match as they are."""
    header, records = vcf_lines(env.target)
    other = [i for i, r in enumerate(records) if not palindromic(r)]
    flips = set(other[::3])
    also_swapped = set(other[1::6])  # complemented and REF/ALT swapped: G/A against T/C
    edited = [
        complemented(r) if i in flips else swapped(complemented(r)) if i in also_swapped else r[:]
        for i, r in enumerate(records)
    ]
    target = write_vcf(tmp_path / "other_strand.vcf", header, edited)
    with caplog.at_level(logging.WARNING):
        info = harmonise(env, target, tmp_path)
    gone = flips | also_swapped
    assert info["unmatched"]["strand_flip"] == len(gone) > 10
    assert info["unmatched"]["allele_mismatch"] == 0
    assert info["matched"] == len(records) - len(gone)
    listed = unmatched(tmp_path)
    assert set(listed["reason"]) == {"strand_flip"}
    assert sorted(listed["pos"]) == sorted(int(records[i][1]) for i in gone)
    assert typed_positions(tmp_path) == [int(r[1]) for i, r in enumerate(records) if i not in gone]
    warning = next(m for m in caplog.messages if "strand_flip" in m)
    assert str(target) in warning and f"{len(gone)} records" in warning
    assert "other strand" in warning and "A/T and C/G" in warning
    assert "bcftools +fixref" in warning and "-m flip" in warning and "strand file" in warning


def test_every_place_that_lists_reasons_has_the_new_ones(env, tmp_path):
    assert {"strand_flip", "strand_frequency"} <= set(UNMATCHED_REASONS)
    info = harmonise(env, env.target, tmp_path)
    assert list(info["unmatched"]) == list(UNMATCHED_REASONS)
    docs = (REPO / "docs" / "imputation.md").read_text() + (
        REPO / "docs" / "own-data.md"
    ).read_text()
    for reason in UNMATCHED_REASONS:
        assert f"`{reason}`" in docs, reason


# -- strand_frequency ------------------------------------------------------------------------------


def test_inverted_a_t_and_c_g_records_are_caught_by_frequency(env, tmp_path, caplog):
    """A/T or C/G records with the reference's REF/ALT genotyped on the other strand (genotypes
    inverted) where the reference MAF is well below 0.4: exactly those are left out."""
    sites = env.sites.set_index("pos")
    header, records = vcf_lines(env.target)
    pal = [i for i, r in enumerate(records) if palindromic(r)]
    assert len(pal) > 20  # the demo's JC69 alleles: a third of the sites are A/T or C/G
    chosen = [
        i
        for i in pal
        if sites.loc[int(records[i][1]), "maf"] < 0.15
        and brute_llr(inverted(records[i]), sites.loc[int(records[i][1]), "af"])
        > STRAND_LLR_THRESHOLD + 1
    ][:4]
    assert len(chosen) == 4
    edited = [inverted(r) if i in chosen else r[:] for i, r in enumerate(records)]
    target = write_vcf(tmp_path / "inverted.vcf", header, edited)
    with caplog.at_level(logging.WARNING):
        info = harmonise(env, target, tmp_path)

    positions = [int(records[i][1]) for i in chosen]
    assert info["unmatched"]["strand_frequency"] == 4
    assert sum(info["unmatched"].values()) == 4
    assert info["strand_frequency_check"]["flagged"] == 4
    listed = unmatched(tmp_path)
    assert sorted(listed["pos"]) == positions and set(listed["reason"]) == {"strand_frequency"}
    # every untouched A/T and C/G record is kept, as it was
    kept = typed_positions(tmp_path)
    assert kept == [int(r[1]) for i, r in enumerate(records) if i not in chosen]
    aligned = {int(r[1]): r for r in vcf_lines(tmp_path / "aligned" / "target.vcf.gz")[1]}
    for i in pal:
        if i not in chosen:
            assert aligned[int(records[i][1])][9:] == records[i][9:]
    warning = next(m for m in caplog.messages if "strand_frequency" in m)
    assert str(target) in warning and "4 A/T or C/G records" in warning
    assert "bcftools +fixref" in warning

    # the ratio, brute force, with the reference frequency read from the reference VCF: above the
    # threshold at a flagged site, below it at every kept checkable one
    flagged = chosen[0]
    assert brute_llr(edited[flagged], reference_af(env, positions[0])) > math.log(1000)
    kept_pal = [i for i in pal if i not in chosen and sites.loc[int(records[i][1]), "maf"] <= 0.4]
    best = max(kept_pal, key=lambda i: brute_llr(records[i], sites.loc[int(records[i][1]), "af"]))
    r = reference_af(env, int(records[best][1]))
    assert r == pytest.approx(sites.loc[int(records[best][1]), "af"])
    assert brute_llr(records[best], r) < math.log(1000)


def _hand_target(tmp_path: Path, rows: list[tuple[int, str, str, str, float]], n: int):
    """Records (pos, ref, alt, one GT for every one of n samples, reference ALT frequency) and
    the reference sites, with an ``af`` column, that ``read_target`` aligns them to."""
    samples = [f"T{j}" for j in range(n)]
    head = [
        "##fileformat=VCFv4.2",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        f"##contig=<ID={CHROM}>",
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]
        ),
    ]
    body = [
        "\t".join([CHROM, str(p), ".", ref, alt, ".", "PASS", ".", "GT", *[gt] * n])
        for p, ref, alt, gt, _ in rows
    ]
    path = tmp_path / "hand.vcf"
    path.write_text("\n".join(head + body) + "\n")
    sites = pd.DataFrame(
        {
            "chrom": CHROM,
            "pos": [r[0] for r in rows],
            "ref": [r[1] for r in rows],
            "alt": [r[2] for r in rows],
            "af": [r[4] for r in rows],
        }
    )
    return path, sites


def test_sites_near_maf_one_half_or_with_few_alleles_are_never_flagged(tmp_path):
    """Every one of 200 alleles ALT where the reference's ALT frequency is 0.45 or 0.59: near MAF 1/2
    the two strands give the same frequency, so it is not checked. Nor is a site with too few called
    alleles to reach the threshold. The same data at frequency 0.35 is flagged."""
    rows = [
        (100, "A", "T", "1|1", 0.45),
        (200, "T", "A", "1|1", 0.59),
        (300, "C", "G", "1|1", 0.35),  # the control: MAF 0.35, every allele the minor one's other
        (400, "G", "C", "0|0", 0.30),  # the reference's orientation and frequency: kept
        (500, "A", "G", "1|1", 0.05),  # not A/T or C/G: its strand is in its alleles
    ]
    path, sites = _hand_target(tmp_path, rows, 100)
    t = read_target(path, CHROM, sites)
    assert list(sites["pos"].iloc[t.site]) == [100, 200, 400, 500]
    assert t.unmatched[["pos", "reason"]].values.tolist() == [[300, "strand_frequency"]]
    c = t.report["strand_frequency_check"]
    assert c["palindromic"] == 4 and c["maf_above_max"] == 2 and c["checked"] == 2
    assert c["flagged"] == 1

    # two samples with calls, the rest missing: 4 alleles at r = 0.1 give at most 4 log 9 = 8.8,
    # 2 alleles at most 4.4 (below log 1000 = 6.9): only the first can be checked
    rows = [(100, "A", "T", "1|1", 0.1), (200, "C", "G", "1|1", 0.1)]
    path, sites = _hand_target(tmp_path, rows, 2)
    text = path.read_text().splitlines()
    text[-1] = text[-1].rsplit("\t", 1)[0] + "\t.|."  # one call of the second record missing
    path.write_text("\n".join(text) + "\n")
    t = read_target(path, CHROM, sites)
    assert t.unmatched["pos"].tolist() == [100]
    assert t.report["strand_frequency_check"]["too_few_alleles"] == 1

    # without a reference frequency (``af``) or with strand_check off nothing is checked
    t = read_target(path, CHROM, sites.drop(columns="af"))
    assert "strand_frequency_check" not in t.report and len(t.unmatched) == 0
    assert len(read_target(path, CHROM, sites, strand_check=False).unmatched) == 0


def test_the_check_is_the_ratio_and_the_maf_rule():
    """``strand_frequency_check`` against the rule written out: 2,000 alleles over a grid of
    reference frequencies and target counts."""
    # frequencies off the MAF 0.4 boundary, and 0 and 1 (clipped)
    grid = np.concatenate([[0.0, 1.0], np.linspace(0.0125, 0.9875, 40)])
    r = np.repeat(grid, 21)
    k = np.tile(np.linspace(0, 2000, 21).astype(int), len(grid))
    alleles = (np.arange(2000)[None, :] < k[:, None]).astype(np.int8)
    flagged, counts = strand_frequency_check(alleles, r, np.ones(len(r), dtype=bool))
    rc = np.clip(r, 1e-3, 1 - 1e-3)
    llr = (2 * k - 2000) * np.log((1 - rc) / rc)
    want = (np.abs(r - 0.5) > 0.1) & (llr > np.log(1000))
    assert np.array_equal(flagged, want)
    assert counts["flagged"] == int(want.sum()) > 0
    # target ALT frequency on the reference's side of 1/2: never flagged, however many alleles
    assert not flagged[(k / 2000 - 0.5) * (r - 0.5) > 0].any()


# -- no false positives ----------------------------------------------------------------------------


def test_the_shared_test_target_loses_nothing(env):
    t = read_target(env.target, CHROM, env.sites)
    c = t.report["strand_frequency_check"]
    assert c["checked"] > 20 and c["flagged"] == 0
    assert sum(t.report["unmatched"].values()) == 0


def _config_demo(name: str) -> tuple[DemoSpec, dict]:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if name != "config":
        for key, value in yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()).items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    fields = {f.name for f in dataclasses.fields(DemoSpec)}
    return DemoSpec(**{k: v for k, v in cfg["demo"].items() if k in fields}), cfg


@pytest.mark.parametrize("name", ["config", "admixed"])
def test_the_embedded_demos_targets_lose_nothing(name, tmp_path):
    """The workflow's own demo targets (config/config.yaml, and config/admixed.yaml: admixed targets
    against a reference of the three source populations), made as its stages make them: no record is
    flagged, although the check is not moot there (a third of the sites are A/T or C/G), and the same
    records with inverted genotypes are nearly all caught."""
    spec, cfg = _config_demo(name)
    panel, array = tmp_path / "panel.vcf.gz", tmp_path / "array_sites.tsv"
    make_demo(spec, panel, array)
    split = tmp_path / "samples.tsv"
    pops = tmp_path / "populations.tsv" if spec.admixed else None
    run_split_stage(
        panel, split, cfg["split"]["fractions"], cfg["split"]["seed"], None, pops, ADMIXED_TARGETS
    )
    windows = tmp_path / "windows"
    run_window_stage(
        panel, split, CHROM, cfg["windows"]["length"], cfg["windows"]["overlap"], windows
    )
    target, truth = tmp_path / "target.vcf.gz", tmp_path / "truth.vcf.gz"
    make_demo_targets(panel, split, windows, array, CHROM, target, truth)
    sites, _ = sites_with_hash(windows)

    t = read_target(target, CHROM, sites)
    c = t.report["strand_frequency_check"]
    assert c["flagged"] == 0 and sum(t.report["unmatched"].values()) == 0
    assert c["checked"] > 100
    typed = sites.iloc[t.site]
    pal = np.array([(a, b) in PALINDROMIC for a, b in zip(typed["ref"], typed["alt"], strict=True)])
    inv = np.where(t.alleles >= 0, 1 - t.alleles, -1)
    flagged, counts = strand_frequency_check(inv, typed["af"].to_numpy(), pal)
    assert counts["flagged"] >= 0.85 * counts["checked"]
