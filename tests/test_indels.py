"""``panel.indels``: the panel's biallelic indels are imputed as untyped sites, several sites may share
a position, typed sites stay SNVs.

The panel is the demo's with indels added: one at the position of each of a few untyped SNVs with
that SNV's haplotypes (the same position and cM, so the same dosages), and a few at positions of
their own. A copy of the panel with those own-position indels written as SNVs (the same haplotypes)
must impute the same dosages there: the engine sees alleles 0/1 and cM only.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
from impute_data import CHROM, imputed_records, vcf_lines, write_bgzip, write_vcf

from ragimpute.demo import DemoSpec, make_demo
from ragimpute.errors import InputError
from ragimpute.evaluate import evaluate
from ragimpute.genmap import write_site_map
from ragimpute.impute import impute_target
from ragimpute.ligate import ligate
from ragimpute.masks import match_sites, read_site_list, run_mask_stage_dir
from ragimpute.split import run_split_stage
from ragimpute.targets import (
    make_demo_targets,
    read_target,
    write_minimac4_target,
    write_reference_vcf,
)
from ragimpute.vcf_io import RecordFilter, SitePositions, read_panel
from ragimpute.windows import run_window_stage

HAS_BCFTOOLS = shutil.which("bcftools") is not None
SAME_POS = ("T", "GA")  # an indel at an SNV's position: REF = the SNV's REF + this, or ALT = it
OWN = [("A", "ACG"), ("CTT", "C"), ("G", "GNA")]  # indels at positions of their own


@dataclass
class IndelRun:
    root: Path
    panel: Path
    array: Path
    split: Path
    windows: Path
    reference: Path
    target: Path
    truth: Path
    imputed: Path
    same_pos: list[int]  # positions of an SNV and an indel with its haplotypes
    own: list[int]  # positions of an indel alone (an SNV in the brute-force copy)


def _with_indels(header, records, typed: set[int], as_snvs: bool):
    """The demo panel's records with indels added (``as_snvs``: the own-position ones as SNVs),
    and a multi-nucleotide and a symbolic record that stay skipped."""
    out, same_pos, own = [], [], []
    taken = {int(r[1]) for r in records}
    for i, r in enumerate(records):
        out.append(r)
        pos = int(r[1])
        if pos in typed or i % 23 != 5:
            continue
        if len(same_pos) < 4:
            ext = SAME_POS[len(same_pos) % 2]
            ref, alt = (r[3] + ext, r[3]) if len(ext) == 1 else (r[3], r[3] + ext)
            out.append([r[0], r[1], ".", ref, alt, *r[5:]])
            same_pos.append(pos)
        elif len(own) < len(OWN) and pos + 1 not in taken:
            ref, alt = ("A", "C") if as_snvs else OWN[len(own)]
            out.append([r[0], str(pos + 1), ".", ref, alt, *r[5:]])
            own.append(pos + 1)
    tail = out[-1]
    out.append([tail[0], str(int(tail[1]) + 1), ".", "AC", "GT", *tail[5:]])
    out.append([tail[0], str(int(tail[1]) + 2), ".", "A", "<DEL>", *tail[5:]])
    return out, same_pos, own


def build_run(root: Path, as_snvs: bool = False, method: str = "copying") -> IndelRun:
    res = root / "results"
    demo = root / "demo"
    spec = DemoSpec(seed=3, n_samples=40, sequence_length=300_000, array_spacing_bp=2000)
    make_demo(spec, demo / "panel.vcf.gz", demo / "array_sites.tsv")
    array = demo / "array_sites.tsv"
    typed = set(read_site_list(array)["pos"].astype(int))
    header, records = vcf_lines(demo / "panel.vcf.gz")
    records, same_pos, own = _with_indels(header, records, typed, as_snvs)
    panel = write_bgzip(root / "panel.vcf.gz", header, records)
    pysam.tabix_index(str(panel), preset="vcf", force=True)
    split = res / "split/samples.tsv"
    run_split_stage(panel, split, {"train": 0.7, "val": 0.15, "test": 0.15}, 1)
    windows = res / "windows" / CHROM
    run_window_stage(panel, split, CHROM, 128, 32, windows, indels=True)
    store = res / "masks" / CHROM
    run_mask_stage_dir(windows, {"strategy": "array"}, store, store / "current.json", array)
    t = res / "targets" / CHROM
    write_reference_vcf(panel, split, windows, CHROM, t / "reference.vcf.gz", indels=True)
    make_demo_targets(
        panel, split, windows, array, CHROM, t / "target.vcf.gz", t / "truth.vcf.gz", indels=True
    )
    imputed = root / f"{method}.vcf.gz"
    impute_target(
        res, CHROM, split, t / "target.vcf.gz", method, imputed,
        panel_vcf=panel, reference_splits=("train",), options={"k": 16},
    )  # fmt: skip
    return IndelRun(
        root, panel, array, split, windows, t / "reference.vcf.gz", t / "target.vcf.gz",
        t / "truth.vcf.gz", imputed, same_pos, own,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> IndelRun:
    return build_run(tmp_path_factory.mktemp("indels"))


def _sites(path: Path) -> list[tuple[int, str, str]]:
    return [(int(r[1]), r[3], r[4]) for r in vcf_lines(path)[1]]


def test_indels_are_sites_several_at_a_position(run):
    sites = pd.read_parquet(run.windows / "sites.parquet")
    keys = list(zip(sites["pos"], sites["ref"], sites["alt"], strict=True))
    panel = [s for s in _sites(run.panel) if s[1] != "AC" and s[2] != "<DEL>"]
    assert keys == panel  # every SNV and indel, in the panel's order; MNP and <DEL> not
    skipped = pd.read_csv(run.windows / "skipped.tsv", sep="\t").set_index("reason")["records"]
    assert skipped["non_snv"] == 2
    for p in run.same_pos:
        at = sites[sites["pos"] == p]
        assert len(at) == 2 and at["cm"].nunique() == 1
    # off (the default): the indels are skipped as before
    plain = read_panel(run.panel, CHROM)
    assert plain.skipped["non_snv"] == 2 + len(run.same_pos) + len(run.own)


@pytest.mark.skipif(not HAS_BCFTOOLS, reason="bcftools is not installed")
def test_imputed_vcf_has_the_indels_as_the_panel_writes_them(run):
    out = subprocess.run(
        ["bcftools", "query", "-f", "%POS\t%REF\t%ALT\t%INFO/IMP\n", str(run.imputed)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    got = [tuple(line.split("\t")) for line in out]
    sites = pd.read_parquet(run.windows / "sites.parquet")
    assert [(int(p), r, a) for p, r, a, _ in got] == list(
        zip(sites["pos"], sites["ref"], sites["alt"], strict=True)
    )
    indel = {(p, r, a) for p, r, a in _sites(run.panel) if len(r) != len(a) and "<" not in a}
    flags = {(int(p), r, a): imp for p, r, a, imp in got}
    assert len(indel) == len(run.same_pos) + len(run.own)
    assert all(flags[k] == "1" for k in indel)  # imputed, never typed


def test_indel_dosages_equal_those_of_the_snv_with_its_haplotypes(run):
    rec = imputed_records(run.imputed)
    keys = list(zip(rec["pos"].astype(int), rec["ref"], rec["alt"], strict=True))
    for p in run.same_pos:
        rows = [i for i, k in enumerate(keys) if k[0] == p]
        assert len(rows) == 2
        np.testing.assert_array_equal(rec["ds"][rows[0]], rec["ds"][rows[1]])
        assert rec["info"][rows[0]]["R2"] == rec["info"][rows[1]]["R2"]


def test_indel_dosages_equal_a_brute_force_copy_with_snvs(run, tmp_path):
    """The own-position indels written as SNVs (same haplotypes, position and cM): the same
    dosages at every site."""
    snv = build_run(tmp_path, as_snvs=True)
    assert snv.own == run.own
    a, b = imputed_records(run.imputed), imputed_records(snv.imputed)
    np.testing.assert_array_equal(a["pos"], b["pos"])
    np.testing.assert_array_equal(a["ds"], b["ds"])
    np.testing.assert_array_equal(a["gt"], b["gt"])
    at = np.isin(a["pos"], run.own)
    assert at.sum() == len(run.own) and set(np.asarray(b["alt"])[at]) == {"C"}


def test_target_indels_are_skipped_and_typed_sites_are_snvs(run, tmp_path):
    header, records = vcf_lines(run.target)
    extra = []
    for r in records[:3]:
        extra.append(r)
        extra.append([r[0], r[1], ".", r[3] + "T", r[3], *r[5:]])  # an indel at a typed SNV
    target = write_vcf(tmp_path / "target.vcf", header, extra + records[3:])
    sites = pd.read_parquet(run.windows / "sites.parquet")
    aligned = read_target(target, CHROM, sites)
    assert aligned.report["skipped"]["non_snv"] == 3
    np.testing.assert_array_equal(aligned.site, read_target(run.target, CHROM, sites).site)
    typed = sites.iloc[aligned.site]
    assert (typed["ref"].str.len() == 1).all() and (typed["alt"].str.len() == 1).all()


def test_an_indel_on_the_array_is_left_out_with_a_warning(run, tmp_path, caplog):
    sites = pd.read_parquet(run.windows / "sites.parquet")
    manifest = read_site_list(run.array)
    indel = sites[sites["pos"] == run.same_pos[0]].iloc[1]
    row = pd.DataFrame([{"chrom": CHROM, "pos": indel["pos"], "ref": indel["ref"],
                         "alt": indel["alt"]}])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ragimpute"):
        hit = match_sites(sites, pd.concat([manifest, row]), "array.tsv")
    assert "1 rows are not SNVs" in caplog.text and f"{CHROM}:{indel['pos']}" in caplog.text
    np.testing.assert_array_equal(hit, match_sites(sites, manifest, "array.tsv"))
    # without alleles a position is an SNV's: the SNV there is typed, not the indel beside it
    no_alleles = pd.concat([manifest[["chrom", "pos"]], row[["chrom", "pos"]]])
    typed = match_sites(sites, no_alleles, "array.tsv")
    assert typed.sum() == hit.sum() + 1
    at = np.flatnonzero(sites["pos"].to_numpy() == indel["pos"])
    assert typed[at].tolist() == [True, False]


@pytest.mark.skipif(not HAS_BCFTOOLS, reason="bcftools is not installed")
def test_reference_vcf_for_beagle_and_minimac4_carries_the_indels(run):
    sites = pd.read_parquet(run.windows / "sites.parquet")
    assert _sites(run.reference) == list(zip(sites["pos"], sites["ref"], sites["alt"], strict=True))
    out = subprocess.run(["bcftools", "view", "-H", "-v", "indels", str(run.reference)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert len(out.splitlines()) == len(run.same_pos) + len(run.own)
    # the truth has them too, from the same panel records
    assert {s for s in _sites(run.truth) if len(s[1]) != len(s[2])} == {
        s for s in _sites(run.reference) if len(s[1]) != len(s[2])
    }


def test_evaluation_scores_the_indels_by_position_and_alleles(run, tmp_path):
    aligned = Path(f"{run.imputed}.aligned") / "target.vcf.gz"
    kw = dict(sites_parquet=run.windows / "sites.parquet", typed_vcf=aligned, method="copying")
    on = evaluate(run.imputed, run.truth, out_dir=tmp_path / "on", indels=True, **kw)
    off = evaluate(run.imputed, run.truth, out_dir=tmp_path / "off", **kw)
    n_indels = len(run.same_pos) + len(run.own)
    assert on["scored_sites"] == off["scored_sites"] + n_indels  # off: the truth's are not read
    assert off["scored_sites_not_in_output"] == on["scored_sites_not_in_output"] == 0
    per_site = pd.read_csv(tmp_path / "on" / "sites.tsv.gz", sep="\t")
    per_site_off = pd.read_csv(tmp_path / "off" / "sites.tsv.gz", sep="\t")
    assert len(per_site) == len(per_site_off) + n_indels
    sites = pd.read_parquet(run.windows / "sites.parquet")
    for p in run.same_pos:  # two rows, the SNV's and the indel's, named by their alleles
        rows = per_site[per_site["pos"] == p]
        at = sites[sites["pos"] == p]
        pairs = sorted(zip(rows["ref"], rows["alt"], strict=True))
        assert pairs == sorted(zip(at["ref"], at["alt"], strict=True))
        assert len(rows) == 2 and rows.drop(columns=["pos", "ref", "alt"]).nunique().max() == 1
    # a truth whose indel has other alleles than the panel's is not scored there
    header, records = vcf_lines(run.truth)
    p0 = str(run.own[0])
    other = [r[:4] + ["ACGT"] + r[5:] if r[1] == p0 else r for r in records]
    truth = write_bgzip(tmp_path / "truth.vcf.gz", header, other)
    moved = evaluate(run.imputed, truth, out_dir=tmp_path / "moved", indels=True, **kw)
    per_site = pd.read_csv(tmp_path / "moved" / "sites.tsv.gz", sep="\t")
    assert int(run.own[0]) not in set(per_site["pos"])
    assert moved["truth_sites_not_in_reference"] == on["truth_sites_not_in_reference"] + 1


def test_record_filter_allows_an_snv_and_indels_at_a_position():
    def keep_all(recs, indels=True):
        skipped = dict.fromkeys(("multiallelic", "non_snv", "no_alt", "filtered"), 0)
        f = RecordFilter("panel.vcf", True, skipped, indels=indels)
        return [f.keep("20", p, r, a) for p, r, a in recs], skipped

    kept, _ = keep_all([(100, "A", "G"), (100, "AT", "A"), (100, "ATT", "A"), (101, "C", "CN")])
    assert kept == [True] * 4
    kept, skipped = keep_all([(100, "A", "G"), (100, "AT", "A")], indels=False)
    assert kept == [True, False] and skipped["non_snv"] == 1
    with pytest.raises(InputError, match="two AT/A records at position 100"):
        keep_all([(100, "AT", "A"), (100, "A", "G"), (100, "at", "a")])
    with pytest.raises(InputError, match="two biallelic SNV records at position 100"):
        keep_all([(100, "A", "G"), (100, "AT", "A"), (100, "A", "C")])


def _chunk_vcf(path: Path, records: list[tuple[int, str, str, str]]) -> Path:
    header = ["##fileformat=VCFv4.2", "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL",
              "FILTER", "INFO", "FORMAT", "S1"])]  # fmt: skip
    rows = [[CHROM, str(p), ".", r, a, ".", "PASS", "IMP", "GT", gt] for p, r, a, gt in records]
    return write_bgzip(path, header, rows)


def test_ligate_keeps_the_sites_that_share_a_position(tmp_path):
    a = _chunk_vcf(tmp_path / "a.vcf.gz", [(10, "A", "G", "0|1"), (20, "A", "G", "0|1"),
                                           (20, "AT", "A", "1|0"), (30, "C", "T", "0|1")])  # fmt: skip
    b = _chunk_vcf(tmp_path / "b.vcf.gz", [(20, "A", "G", "0|1"), (20, "AT", "A", "1|0"),
                                           (30, "C", "T", "0|1"), (30, "CA", "C", "1|1"),
                                           (40, "G", "A", "1|0")])  # fmt: skip
    out = tmp_path / "out.vcf.gz"
    info = ligate([(a, 1, 25), (b, 26, 50)], out)
    assert info["records"] == [3, 3]
    assert _sites(out) == [(10, "A", "G"), (20, "A", "G"), (20, "AT", "A"), (30, "C", "T"),
                           (30, "CA", "C"), (40, "G", "A")]  # fmt: skip
    twice = _chunk_vcf(tmp_path / "c.vcf.gz", [(20, "AT", "A", "0|1"), (20, "AT", "A", "0|1")])
    with pytest.raises(Exception, match="out of order"):
        ligate([(twice, 1, 50)], tmp_path / "twice.vcf.gz")


def test_chunk_planning_finds_the_indels(run, tmp_path):
    """Chunks are planned over the records the window stage keeps: with indels, the indels' too
    (indexed: region queries; not indexed: one read through, cached apart from the SNV-only one)."""
    plain = write_vcf(tmp_path / "panel.vcf", *vcf_lines(run.panel))
    for path in (run.panel, plain):
        p = run.own[0]
        with SitePositions(path, CHROM, cache_dir=tmp_path / "cache", indels=True) as at:
            assert at.next_at(p, p) == p
        with SitePositions(path, CHROM, cache_dir=tmp_path / "cache") as at:
            assert at.next_at(p, p) is None
    assert len(list((tmp_path / "cache").glob("positions-*.npz"))) == 2


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("beagle", "minimac4", "bcftools")),
    reason="beagle, minimac4 or bcftools is not installed",
)
def test_beagle_and_minimac4_impute_the_indels_of_the_reference(run, tmp_path):
    """The reference VCF the workflow gives them (an SNV and an indel at one position included) is
    taken by both tools, which write every indel; each is scored, none missing from the output."""
    aligned = Path(f"{run.imputed}.aligned") / "target.vcf.gz"
    site_map = tmp_path / "site.map"
    write_site_map(run.windows, site_map)
    beagle = f"ref={run.reference} gt={aligned} out={tmp_path}/beagle map={site_map} seed=1"
    subprocess.run(f"beagle {beagle} gp=true nthreads=1", shell=True, check=True,
                   capture_output=True)  # fmt: skip
    msav = tmp_path / "ref.msav"
    with open(msav, "wb") as f:
        subprocess.run(["minimac4", "--compress-reference", str(run.reference)], stdout=f,
                       check=True, capture_output=False, stderr=subprocess.DEVNULL)  # fmt: skip
    target = tmp_path / "minimac4_target.vcf.gz"
    write_minimac4_target(aligned, target, tmp_path / "minimac4.json")
    subprocess.run(["minimac4", "-t", "1", "-f", "GT,DS,GP", "-O", "vcf.gz", "-o",
                    str(tmp_path / "minimac4.vcf.gz"), "--map", str(site_map), str(msav),
                    str(target)], check=True, capture_output=True)  # fmt: skip
    indels = {s for s in _sites(run.reference) if len(s[1]) != len(s[2])}
    for tool in ("beagle", "minimac4"):
        vcf = tmp_path / f"{tool}.vcf.gz"
        assert indels <= set(_sites(vcf))
        s = evaluate(vcf, run.truth, run.windows / "sites.parquet", aligned, tool,
                     tmp_path / tool, indels=True)  # fmt: skip
        assert s["scored_sites_not_in_output"] == 0
        per_site = pd.read_csv(tmp_path / tool / "sites.tsv.gz", sep="\t")
        assert {p for p, _, _ in indels} <= set(per_site["pos"])


def test_a_deletion_is_read_once_when_the_evaluation_reads_by_region(run, tmp_path):
    """Read a site per region, a deletion reaches into the next region; it is that region's by its
    POS only (``bcftools -r`` would give it to both), so the counts are those of one whole read."""
    aligned = Path(f"{run.imputed}.aligned") / "target.vcf.gz"
    kw = dict(sites_parquet=run.windows / "sites.parquet", typed_vcf=aligned, method="copying")
    n_test = len(
        read_target(run.target, CHROM, pd.read_parquet(run.windows / "sites.parquet")).samples
    )
    whole = evaluate(run.imputed, run.truth, out_dir=tmp_path / "whole", indels=True, **kw)
    each = evaluate(run.imputed, run.truth, out_dir=tmp_path / "each", indels=True,
                    block_genotypes=n_test, **kw)  # fmt: skip
    for key in ("scored_sites", "truth_sites_not_in_reference", "scored_sites_not_in_output"):
        assert each[key] == whole[key], key
    a = pd.read_csv(tmp_path / "whole" / "sites.tsv.gz", sep="\t")
    b = pd.read_csv(tmp_path / "each" / "sites.tsv.gz", sep="\t")
    pd.testing.assert_frame_equal(a, b)


def test_a_long_deletion_in_the_panel_costs_no_memory_of_its_length(tmp_path):
    """1000 Genomes phase 1 writes deletions of 100 kb out in full: matching target SNVs to a panel
    holding one must not size an array of every site by that allele (it took 16 GB, and the job was
    killed). Run with its address space capped at 2 GiB, where that array (8 GB here) cannot exist."""
    script = tmp_path / "match.py"
    script.write_text(
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "import numpy as np, pandas as pd\n"
        "from ragimpute.targets import _SiteMatch\n"
        "n = 5_000\n"
        "sites = pd.DataFrame({'pos': np.arange(1, n + 1) * 10, 'ref': ['A'] * n, 'alt': ['G'] * n})\n"
        "sites.loc[7, 'ref'] = 'A' * 400_000  # a 400 kb deletion\n"
        "recs = [('20', 10 * i, 'A', 'G') for i in (1, 2, 8, 9, 4000)]\n"
        "m = _SiteMatch(recs, sites)\n"
        "print(m.same.tolist(), m.idx.tolist())\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # the record at the deletion's position (80) has no SNV to match; the others match theirs
    assert done.stdout.split("\n")[0] == "[True, True, False, True, True] [0, 1, 8, 8, 3999]"


@pytest.mark.skipif(not HAS_BCFTOOLS, reason="bcftools is not installed")
def test_a_bcf_panel_gives_the_indels_its_vcf_gives(run, tmp_path):
    """A panel as BCF (how large panels are shipped) reads to the same sites, indels among them,
    and the same haplotypes as the same panel as VCF."""
    bcf = tmp_path / "panel.bcf"
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(run.panel)], check=True)
    subprocess.run(["bcftools", "index", str(bcf)], check=True)
    a, b = read_panel(run.panel, CHROM, indels=True), read_panel(bcf, CHROM, indels=True)
    assert (a.sites["ref"].str.len() != a.sites["alt"].str.len()).sum() == len(run.same_pos) + len(
        run.own
    )
    pd.testing.assert_frame_equal(a.sites, b.sites)
    assert np.array_equal(a.haplotypes, b.haplotypes) and a.skipped == b.skipped


def test_the_cli_keeps_indels_by_default_and_drops_them_with_no_indels(run, tmp_path):
    from ragimpute.cli import main

    n_indels = len(run.same_pos) + len(run.own)
    counts = {}
    for flags in ([], ["--no-indels"]):
        out = tmp_path / (flags[0] if flags else "default")
        args = ["window", "--panel", str(run.panel), "--split", str(run.split), "--chrom", CHROM]
        assert main([*args, "--length", "128", "--overlap", "32", "--out", str(out), *flags]) == 0
        sites = pd.read_parquet(out / "sites.parquet")
        skipped = pd.read_csv(out / "skipped.tsv", sep="\t", index_col="reason")["records"]
        kept = (sites["ref"].str.len() != sites["alt"].str.len()).sum()
        assert json.loads((out / "windows.json").read_text())["n_indels"] == kept  # and the log's
        counts[bool(flags)] = (kept, skipped)
    (kept, skipped), (kept_off, skipped_off) = counts[False], counts[True]
    assert kept == n_indels and kept_off == 0
    # the multi-nucleotide and the symbolic record are skipped either way
    assert skipped["non_snv"] == 2 and skipped_off["non_snv"] == 2 + n_indels


def test_the_cli_scores_indels_by_default_and_not_with_no_indels(run, tmp_path):
    from ragimpute.cli import main

    aligned = Path(f"{run.imputed}.aligned") / "target.vcf.gz"
    args = ["evaluate", "--imputed", str(run.imputed), "--truth", str(run.truth), "--chrom", CHROM]
    args += ["--results", str(run.root / "results"), "--typed", str(aligned), "--method", "copying"]
    rows = {}
    for flags in ([], ["--no-indels"]):
        out = tmp_path / (flags[0] if flags else "default")
        assert main([*args, "--out", str(out), *flags]) == 0
        rows[bool(flags)] = pd.read_csv(out / "sites.tsv.gz", sep="\t", keep_default_na=False)
    n_indels = len(run.same_pos) + len(run.own)
    on, off = rows[False], rows[True]
    assert len(on) == len(off) + n_indels and (off["ref"].str.len() == off["alt"].str.len()).all()


def test_truth_records_no_reference_imputes_are_not_counted_as_missing_from_it(run, tmp_path):
    """A truth's ALT `*` (a deletion spanning the site) or `.` (no ALT) record is no site of any
    reference; the evaluation reads only what the panel reader keeps, so such records do not count
    as truth sites the reference lacks (nor does an `N` base)."""
    aligned = Path(f"{run.imputed}.aligned") / "target.vcf.gz"
    kw = dict(sites_parquet=run.windows / "sites.parquet", typed_vcf=aligned, method="copying")
    base = evaluate(run.imputed, run.truth, out_dir=tmp_path / "base", indels=True, **kw)
    header, records = vcf_lines(run.truth)
    odd = []
    for r in records:
        odd.append(r)
        if r is records[10]:  # three records after it, at positions of their own
            p = int(r[1])
            odd += [
                [r[0], str(p + k), ".", "A", alt, *r[5:]]
                for k, alt in ((1, "*"), (2, "."), (3, "N"))
            ]
    truth = write_bgzip(tmp_path / "truth.vcf.gz", header, odd)
    got = evaluate(run.imputed, truth, out_dir=tmp_path / "odd", indels=True, **kw)
    assert got["truth_sites_not_in_reference"] == base["truth_sites_not_in_reference"]
    assert got["scored_sites"] == base["scored_sites"]
