"""vcf_io: bulk reading equals independent per-record reads; every bad input is a clear InputError."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pysam.bcftools
import pytest
from conftest import (
    bcftools_cli_read,
    needs_bcftools,
    pysam_read,
    random_records,
    vcf_text,
    write_vcf,
)

from ragimpute import vcf_io
from ragimpute.errors import InputError
from ragimpute.evaluate import read_truth
from ragimpute.targets import read_target
from ragimpute.vcf_io import (
    check_readable,
    chrom_selection,
    decode_genotypes,
    query_lines,
    read_panel,
    resolve_contig,
    vcf_records_contigs,
    vcf_records_sites,
    vcf_samples,
)
from ragimpute.vcf_write import write_bgzip_vcf

SAMPLES = ["S1", "S2", "S3"]
# read_panel reads an indexed VCF as text lines from tabix, an unindexed one from the file itself
# (and a BCF as htslib formats its records): every check runs on each way.
FORMS = {"plain": (None, False), "bgzip": ("bgzip", False), "indexed": ("bgzip", True)}


def _write(tmp_path, text: str, form: str, name: str = "panel"):
    compress, index = FORMS[form]
    path = tmp_path / (f"{name}.vcf.gz" if compress else f"{name}.vcf")
    return write_vcf(path, text, compress, index=index)


def _gts(*gts: str) -> list[str]:
    return list(gts)


def _ok(pos: int, ref: str = "A", alt: str = "C", flt: str = "PASS", chrom: str = "20") -> tuple:
    return (chrom, pos, ref, alt, flt, _gts("0|1", "1|1", "0|0"))


# -- equality with independent readers ----------------------------------------------------------


def test_read_panel_equals_pysam_per_record(demo):
    panel = read_panel(demo.vcf, "20")
    sites, haps = pysam_read(demo.vcf, "20")
    assert panel.samples == list(pysam.VariantFile(str(demo.vcf)).header.samples)
    pd.testing.assert_frame_equal(panel.sites, sites, check_dtype=False)
    assert panel.haplotypes.dtype == np.uint8
    np.testing.assert_array_equal(panel.haplotypes, haps)
    # the demo is large enough to have both alleles at every site and some variation
    assert panel.n_sites > 300 and 0 < panel.haplotypes.mean() < 0.5


def _assert_same_panel(a, b):
    pd.testing.assert_frame_equal(a.sites, b.sites)
    np.testing.assert_array_equal(a.haplotypes, b.haplotypes)
    assert a.samples == b.samples and a.skipped == b.skipped and a.chrom == b.chrom


def test_tabix_and_bcftools_paths_agree(demo, tmp_path):
    fast = read_panel(demo.vcf, "20")
    unindexed = tmp_path / "copy.vcf.gz"
    unindexed.write_bytes(demo.vcf.read_bytes())
    _assert_same_panel(read_panel(unindexed, "20"), fast)
    bcf = tmp_path / "copy.bcf"
    pysam.bcftools.view("-Ob", "-o", str(bcf), str(demo.vcf), catch_stdout=False)
    _assert_same_panel(read_panel(bcf, "20"), fast)
    pysam.bcftools.index(str(bcf), catch_stdout=False)
    _assert_same_panel(read_panel(bcf, "20"), fast)
    csi = tmp_path / "csi.vcf.gz"
    csi.write_bytes(demo.vcf.read_bytes())
    pysam.bcftools.index(str(csi), catch_stdout=False)  # a .csi index, no .tbi
    assert (tmp_path / "csi.vcf.gz.csi").exists() and not (tmp_path / "csi.vcf.gz.tbi").exists()
    _assert_same_panel(read_panel(csi, "20"), fast)


@pytest.mark.parametrize("form", FORMS)
def test_genotypes_with_other_format_fields(tmp_path, form):
    """GT:DS records (e.g. an imputed panel) cannot be cut out of the text; the reader falls back."""
    recs = [
        ("20", 100, "A", "C", "PASS", ["0|1:1.0", "1|1:2.0", "0|0:0.0"]),
        ("20", 200, "G", "T", "PASS", ["1|0:0.9", "0|0:0.1", "0|1:1.0"]),
    ]
    path = _write(tmp_path, vcf_text(recs, SAMPLES, fmt="GT:DS"), form)
    panel = read_panel(path, "20", samples=["S3", "S1"])
    np.testing.assert_array_equal(panel.haplotypes, [[0, 0, 0, 1], [0, 1, 1, 0]])


@pytest.mark.parametrize("form", [*FORMS, "bcf"])
def test_gt_among_other_format_fields_is_read_as_bcftools_reads_it(tmp_path, form):
    """GT first, GT after another field (not what the spec allows, but htslib reads it), a sample
    column cut after GT: the GT read is what `bcftools query %GT` prints."""
    lines = [
        ("100", "A", "C", "GT:DS", "0|1:1.0", "1|1:2.0", "0|0:0.0"),
        ("200", "G", "T", "DS:GT", "0.9:1|0", "0.1:0|0", "1.0:0|1"),
        ("300", "G", "T", "GT:DS", "1|1", "0|1:1.0", "0|0:0.0"),
    ]
    text = vcf_text([], SAMPLES) + "".join(
        "\t".join(["20", pos, ".", ref, alt, ".", "PASS", ".", *rest]) + "\n"
        for pos, ref, alt, *rest in lines
    )
    path = _write(tmp_path, text, "indexed" if form == "bcf" else form)
    if form == "bcf":
        bcf = tmp_path / "panel.bcf"
        pysam.bcftools.view("-Ob", "-o", str(bcf), str(path), catch_stdout=False)
        path = bcf
    panel = read_panel(path, "20")
    gts = pysam.bcftools.query("-f", "[%GT\t]\n", str(path)).split("\n")[:3]
    want = [[int(a) for gt in line.split() for a in gt.split("|")] for line in gts]
    np.testing.assert_array_equal(panel.haplotypes, want)
    assert want[1] == [1, 0, 0, 0, 0, 1]


@pytest.mark.parametrize("form", FORMS)
def test_record_without_gt_is_a_missing_genotype(tmp_path, form):
    recs = [_ok(100), ("20", 200, "A", "G", "PASS", ["1.0", "2.0", "0.0"]), _ok(300)]
    text = vcf_text(recs, SAMPLES).replace("\tGT\t1.0", "\tDS\t1.0")
    path = _write(tmp_path, text, form)
    with pytest.raises(InputError, match=r"missing genotype '\.' for sample S1 \(at 20:200\)"):
        read_panel(path, "20")


@pytest.mark.parametrize("form", [*FORMS, "bcf"])
def test_panel_stream_blocks_make_the_panel(demo, tmp_path, monkeypatch, form):
    """The blocks of PanelStream, one after the other, are read_panel's panel; the skipped counts are
    complete when the iteration ends."""
    text = gzip.decompress(demo.vcf.read_bytes()).decode()
    if form == "bcf":
        path = tmp_path / "panel.bcf"
        pysam.bcftools.view("-Ob", "-o", str(path), str(demo.vcf), catch_stdout=False)
    else:
        path = _write(tmp_path, text, form)
    whole = read_panel(path, "20")
    monkeypatch.setattr(vcf_io, "_CHUNK_RECORDS", 100)
    stream = vcf_io.PanelStream(path, "20")
    blocks = list(stream)
    assert [len(s) for s, _ in blocks[:-1]] == [100] * (len(blocks) - 1)
    assert all(len(s) == len(h) for s, h in blocks)
    pd.testing.assert_frame_equal(vcf_io.site_table([x for s, _ in blocks for x in s]), whole.sites)
    np.testing.assert_array_equal(np.concatenate([h for _, h in blocks]), whole.haplotypes)
    assert stream.skipped == whole.skipped and sum(whole.skipped.values()) > 0


@needs_bcftools
def test_read_panel_equals_bcftools_cli(demo):
    panel = read_panel(demo.vcf, "20")
    sites, haps = bcftools_cli_read(demo.vcf, "20")
    pd.testing.assert_frame_equal(panel.sites, sites, check_dtype=False)
    np.testing.assert_array_equal(panel.haplotypes, haps)


@needs_bcftools
def test_sample_subset_in_requested_order(demo):
    all_samples = vcf_samples(demo.vcf)
    subset = [all_samples[7], all_samples[2], all_samples[19]]
    panel = read_panel(demo.vcf, "20", samples=subset)
    assert panel.samples == subset
    # `bcftools view -s` writes the samples in the order asked for, as read_panel does
    _, haps = bcftools_cli_read(demo.vcf, "20", samples=subset)
    np.testing.assert_array_equal(panel.haplotypes, haps)
    full = read_panel(demo.vcf, "20")
    cols = [2 * all_samples.index(s) + p for s in subset for p in (0, 1)]
    np.testing.assert_array_equal(panel.haplotypes, full.haplotypes[:, cols])


def test_unknown_sample_is_named(demo):
    with pytest.raises(InputError, match="samples not in the VCF: NOPE"):
        read_panel(demo.vcf, "20", samples=["SIM0001", "NOPE"])


def test_demo_multiallelic_sites_are_counted(demo):
    """The demo's Jukes-Cantor mutations leave multi-allelic records: counted, never silently lost."""
    with pysam.VariantFile(str(demo.vcf)) as vf:
        n_records = sum(1 for _ in vf)
    with pysam.VariantFile(str(demo.vcf)) as vf:
        n_multi = sum(1 for r in vf if len(r.alts) > 1)
    panel = read_panel(demo.vcf, "20")
    assert panel.skipped["multiallelic"] == n_multi
    assert panel.n_sites + sum(panel.skipped.values()) == n_records


# -- chromosome naming -------------------------------------------------------------------------


@pytest.mark.parametrize("file_chrom,asked", [("chr20", "20"), ("20", "chr20"), ("chr20", "chr20")])
@pytest.mark.parametrize("contig_lines", [True, False])
@pytest.mark.parametrize("indexed", [True, False])
def test_chr_prefix_resolves_both_ways(tmp_path, file_chrom, asked, contig_lines, indexed):
    recs = [_ok(100, chrom=file_chrom), _ok(200, chrom=file_chrom)]
    text = vcf_text(recs, SAMPLES, contigs=(file_chrom,) if contig_lines else None)
    path = write_vcf(tmp_path / "p.vcf.gz", text, index=indexed)
    panel = read_panel(path, asked)
    assert panel.chrom == file_chrom
    assert panel.sites["chrom"].tolist() == [file_chrom] * 2
    assert panel.sites["pos"].tolist() == [100, 200]
    assert resolve_contig(path, asked, vcf_records_contigs(path)) == file_chrom


def test_only_the_requested_chromosome_is_read(tmp_path):
    recs = [_ok(100, chrom="20"), _ok(200, chrom="20"), _ok(50, chrom="21")]
    path = write_vcf(
        tmp_path / "p.vcf.gz", vcf_text(recs, SAMPLES, contigs=("20", "21")), index=True
    )
    assert read_panel(path, "21").sites["pos"].tolist() == [50]
    assert read_panel(path, "20").sites["pos"].tolist() == [100, 200]
    assert vcf_records_contigs(path) == ["20", "21"]


@pytest.mark.parametrize("file_chrom", ["20", "chr20"])
@pytest.mark.parametrize("contig_lines", [True, False])
@pytest.mark.parametrize("indexed", [True, False])
def test_chrom_selection_reads_no_record(tmp_path, monkeypatch, file_chrom, contig_lines, indexed):
    """The records of a chromosome in either naming, found from the index or the header (not by
    reading every record first), in files with and without an index and ##contig lines."""
    recs = [_ok(100, chrom=file_chrom), _ok(200, chrom=file_chrom), _ok(50, chrom="21")]
    contigs = (file_chrom, "21", "22") if contig_lines else None
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text(recs, SAMPLES, contigs=contigs), index=indexed)

    def no_query(*args, **kwargs):
        raise AssertionError("the records were read")

    with monkeypatch.context() as m:
        m.setattr(vcf_io, "query_lines", no_query)
        m.setattr(pysam.bcftools, "query", no_query)
        chosen = {c: chrom_selection(path, c) for c in ("20", "chr20", "21", "22")}
    for asked in ("20", "chr20"):
        assert list(query_lines(path, "%CHROM\t%POS\n", chosen[asked])) == [
            f"{file_chrom}\t100",
            f"{file_chrom}\t200",
        ]
    assert list(query_lines(path, "%POS\n", chosen["21"])) == ["50"]
    # a chromosome without records: None from the index, else a selection that finds nothing
    if indexed:
        assert chosen["22"] is None
    else:
        assert list(query_lines(path, "%POS\n", chosen["22"])) == []


# -- skipped records -----------------------------------------------------------------------------


SKIP_RECORDS = [
    _ok(100),
    ("20", 110, "A", "C,G", "PASS", _gts("0|1", "2|1", "0|0")),  # multiallelic
    _ok(120, ref="AT", alt="A"),  # deletion
    _ok(130, ref="A", alt="AT"),  # insertion
    _ok(140, ref="A", alt="<DEL>"),  # symbolic
    _ok(150, ref="AC", alt="GT"),  # MNP
    _ok(160, flt="LowQual"),  # filtered
    _ok(170, ref="A", alt="."),  # no ALT (monomorphic record)
    ("20", 180, "C", "T,<*>", "PASS", _gts("0|1", "1|1", "0|0")),  # gVCF-style: 2 ALTs
    _ok(190, ref="A", alt="*"),  # spanning deletion only
    _ok(200, flt="."),  # missing FILTER is kept
    _ok(210),
]


@pytest.mark.parametrize("form", FORMS)
def test_skipped_records_are_counted(tmp_path, form):
    path = _write(tmp_path, vcf_text(SKIP_RECORDS, SAMPLES), form)
    panel = read_panel(path, "20")
    assert panel.sites["pos"].tolist() == [100, 200, 210]
    assert panel.skipped == {"multiallelic": 2, "non_snv": 4, "no_alt": 2, "filtered": 1}
    np.testing.assert_array_equal(panel.haplotypes[0], [0, 1, 1, 1, 0, 0])


@pytest.mark.parametrize("form", FORMS)
def test_lowercase_alleles_are_snvs_stored_uppercase(tmp_path, form):
    """VCF bases are case-insensitive (VCF 4.3, 1.6.1): a lowercase SNV is kept, not skipped as a
    non-SNV, and stored uppercase, so that it is the same site as the uppercase record."""
    records = [
        _ok(100),
        _ok(110, ref="a", alt="g"),
        _ok(120, ref="C", alt="t"),
        _ok(130, ref="at", alt="a"),
    ]
    upper = [
        _ok(100),
        _ok(110, ref="A", alt="G"),
        _ok(120, ref="C", alt="T"),
        _ok(130, ref="AT", alt="A"),
    ]
    panel = read_panel(_write(tmp_path, vcf_text(records, SAMPLES), form), "20")
    same = read_panel(_write(tmp_path, vcf_text(upper, SAMPLES), form, name="upper"), "20")
    assert panel.sites["pos"].tolist() == [100, 110, 120]
    assert panel.sites["ref"].tolist() == ["A", "A", "C"]
    assert panel.sites["alt"].tolist() == ["C", "G", "T"]
    assert panel.skipped["non_snv"] == 1  # the lowercase deletion is still not an SNV
    pd.testing.assert_frame_equal(panel.sites, same.sites)
    np.testing.assert_array_equal(panel.haplotypes, same.haplotypes)


def test_filtered_records_kept_when_asked(tmp_path):
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text(SKIP_RECORDS, SAMPLES))
    panel = read_panel(path, "20", pass_only=False)
    assert panel.sites["pos"].tolist() == [100, 160, 200, 210]
    assert panel.skipped["filtered"] == 0


# -- bad input: a clear InputError naming the file, the record and the sample ---------------------


def _bad_gt(gt: str) -> list[tuple]:
    return [_ok(100), ("20", 200, "A", "G", "PASS", _gts("0|1", gt, "0|0")), _ok(300)]


BAD_GENOTYPES = [
    ("0/1", "unphased genotype '0/1' for sample S2"),
    (".|.", "missing genotype '.|.' for sample S2"),
    ("./.", "missing genotype './.' for sample S2"),
    (".|1", "missing genotype '.|1' for sample S2"),
    (".", "missing genotype '.' for sample S2"),
    ("1", "haploid genotype '1' for sample S2"),
]


@pytest.mark.parametrize("gt,problem", BAD_GENOTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_bad_genotype_names_file_record_and_sample(tmp_path, gt, problem, form):
    path = _write(tmp_path, vcf_text(_bad_gt(gt), SAMPLES), form)
    with pytest.raises(InputError) as e:
        read_panel(path, "20")
    msg = str(e.value)
    assert msg.startswith(str(path))
    assert problem in msg
    assert "(at 20:200)" in msg
    assert e.value.record == "20:200"
    assert e.value.hint


def test_unsorted_positions(tmp_path):
    path = write_vcf(tmp_path / "p.vcf", vcf_text([_ok(100), _ok(300), _ok(200)], SAMPLES), None)
    with pytest.raises(
        InputError, match=r"not sorted: position 200 comes after 300.*at 20:200.*bcftools sort"
    ):
        read_panel(path, "20")


def test_unsorted_positions_across_skipped_records(tmp_path):
    recs = [_ok(100), _ok(300, ref="AT", alt="A"), _ok(200)]
    path = write_vcf(tmp_path / "p.vcf", vcf_text(recs, SAMPLES), None)
    with pytest.raises(InputError, match=r"position 200 comes after 300"):
        read_panel(path, "20")


@pytest.mark.parametrize("form", FORMS)
def test_duplicate_snv_positions(tmp_path, form):
    recs = [_ok(100), _ok(200, alt="C"), _ok(200, alt="G"), _ok(300)]
    path = _write(tmp_path, vcf_text(recs, SAMPLES), form)
    with pytest.raises(
        InputError, match=r"two biallelic SNV records at position 200.*at 20:200.*bcftools norm"
    ):
        read_panel(path, "20")


def test_snv_and_indel_at_one_position_are_fine(tmp_path):
    recs = [_ok(100), _ok(200, ref="AT", alt="A"), _ok(200), _ok(300)]
    panel = read_panel(write_vcf(tmp_path / "p.vcf.gz", vcf_text(recs, SAMPLES)), "20")
    assert panel.sites["pos"].tolist() == [100, 200, 300]
    assert panel.skipped["non_snv"] == 1


def test_truncated_bgzip(demo, tmp_path):
    data = demo.vcf.read_bytes()
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(data[: len(data) // 2])
    for fn in (
        lambda: read_panel(cut, "20"),
        lambda: vcf_samples(cut),
        lambda: check_readable(cut),
    ):
        with pytest.raises(InputError, match=r"cut\.vcf\.gz: file is truncated.*fetch it again"):
            fn()


def test_truncated_plain_vcf_names_the_cut_record(demo, tmp_path):
    text = gzip.decompress(demo.vcf.read_bytes()).decode()
    cut = tmp_path / "cut.vcf"
    cut.write_text(text[: len(text) // 2])
    last = cut.read_text().splitlines()[-1].split("\t")
    with pytest.raises(InputError) as e:
        read_panel(cut, "20")
    assert e.value.record == f"{last[0]}:{last[1]}"
    assert str(e.value).startswith(
        f"{cut}: a record has {len(last)} columns, the header names 30 samples"
    )
    assert "cut short" in str(e.value)


@pytest.mark.parametrize("form", FORMS)
def test_record_with_missing_columns(tmp_path, form):
    text = vcf_text([_ok(100), _ok(200), _ok(300)], SAMPLES)
    text = text.replace("\t1|1\t0|0\n20\t300", "\n20\t300", 1)  # record 20:200 loses 2 samples
    path = _write(tmp_path, text, form)
    with pytest.raises(InputError) as e:
        read_panel(path, "20")
    assert e.value.record == "20:200"
    assert "a record has 10 columns, the header names 3 samples (so 12 are needed)" in str(e.value)


@pytest.mark.parametrize("form", ["plain", "bgzip"])
def test_position_that_is_not_a_number(tmp_path, form):
    text = vcf_text([_ok(100), _ok(200), _ok(300)], SAMPLES).replace("\t200\t", "\t2x0\t", 1)
    path = _write(tmp_path, text, form)
    with pytest.raises(InputError, match=r"position '2x0' is not a whole number \(at 20:2x0\)"):
        read_panel(path, "20")
    with pytest.raises(InputError, match=r"position '2x0' is not a whole number"):
        read_panel(path, "20", region=(150, 250))


def test_plain_gzip_is_refused_with_the_fix(tmp_path):
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text([_ok(100)], SAMPLES), "gzip")
    with pytest.raises(
        InputError, match=r"p\.vcf\.gz: file is gzip- but not bgzip-compressed.*bgzip"
    ) as e:
        read_panel(path, "20")
    fixed = tmp_path / "p.bgzf.vcf.gz"  # the hint's file, beside the input
    assert f"bgzip > {fixed}`" in str(e.value) and f"tabix -p vcf {fixed}`" in str(e.value)
    with gzip.open(path, "rb") as src, pysam.BGZFile(str(fixed), "wb") as dst:
        dst.write(src.read())
    pysam.tabix_index(str(fixed), preset="vcf")
    assert len(read_panel(fixed, "20").sites) == 1


def test_empty_file(tmp_path):
    path = tmp_path / "empty.vcf.gz"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.vcf\.gz: file is empty"):
        read_panel(path, "20")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.vcf\.gz: file not found"):
        read_panel(tmp_path / "nope.vcf.gz", "20")


def test_not_a_vcf(tmp_path):
    path = tmp_path / "notes.vcf"
    path.write_text("this is not a VCF\n")
    with pytest.raises(InputError, match=r"notes\.vcf: cannot read the VCF header"):
        read_panel(path, "20")


@pytest.mark.parametrize("indexed", [True, False])
def test_chromosome_not_in_file(tmp_path, indexed):
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text([_ok(100)], SAMPLES), index=indexed)
    with pytest.raises(
        InputError, match=r"p\.vcf\.gz: chromosome '7' is not in this file \(contigs: 20\)"
    ):
        read_panel(path, "7")


def test_chromosome_not_in_file_without_contig_lines(tmp_path):
    path = write_vcf(tmp_path / "p.vcf", vcf_text([_ok(100)], SAMPLES, contigs=None), None)
    with pytest.raises(InputError, match=r"chromosome '7' is not in this file \(contigs: 20\)"):
        read_panel(path, "7")


def test_no_snvs_on_the_chromosome(tmp_path):
    recs = [_ok(100, ref="AT", alt="A"), ("20", 200, "A", "C,G", "PASS", _gts("0|1", "2|1", "0|0"))]
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text(recs, SAMPLES), index=True)
    with pytest.raises(
        InputError,
        match=r"no biallelic SNV records on chromosome 20 \(skipped: multiallelic=1, non_snv=1\).*panel\.pass_only",
    ):
        read_panel(path, "20")


def test_declared_but_empty_chromosome(tmp_path):
    path = write_vcf(
        tmp_path / "p.vcf.gz", vcf_text([_ok(100)], SAMPLES, contigs=("20", "21")), index=True
    )
    with pytest.raises(InputError, match=r"no biallelic SNV records on chromosome 21"):
        read_panel(path, "21")


def test_duplicate_sample_names(tmp_path):
    path = write_vcf(tmp_path / "p.vcf.gz", vcf_text([_ok(100)], ["S1", "S2", "S1"]))
    with pytest.raises(InputError, match=r"p\.vcf\.gz: duplicate sample names in the header: S1"):
        read_panel(path, "20")


def test_sites_only_vcf(tmp_path):
    text = vcf_text([], [])
    text = text.replace("\tFORMAT", "") + "20\t100\t.\tA\tC\t.\tPASS\t.\n"
    path = write_vcf(tmp_path / "sites.vcf.gz", text)
    with pytest.raises(InputError, match="no samples"):
        vcf_samples(path)
    sites = vcf_records_sites(path)
    assert sites.to_dict("records") == [{"chrom": "20", "pos": 100, "ref": "A", "alt": "C"}]


@pytest.mark.parametrize("chunk", [2048, 64, 1])
def test_chunked_decoding_gives_the_same_panel(demo, tmp_path, monkeypatch, chunk):
    whole = read_panel(demo.vcf, "20")
    unindexed = tmp_path / "copy.vcf.gz"
    unindexed.write_bytes(demo.vcf.read_bytes())
    monkeypatch.setattr(vcf_io, "_CHUNK_RECORDS", chunk)
    _assert_same_panel(read_panel(demo.vcf, "20"), whole)
    subset = whole.samples[::-3]
    part = read_panel(unindexed, "20", samples=subset)
    cols = [2 * whole.samples.index(s) + p for s in subset for p in (0, 1)]
    np.testing.assert_array_equal(part.haplotypes, whole.haplotypes[:, cols])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("chunk", [2048, 64])
def test_bad_record_deep_in_a_big_file_is_found(tmp_path, form, chunk, monkeypatch):
    monkeypatch.setattr(vcf_io, "_CHUNK_RECORDS", chunk)
    """The vectorised check must name the first bad record, not just fail somewhere."""
    rng = np.random.default_rng(0)
    samples = [f"S{i}" for i in range(50)]
    recs = random_records(rng, 400, len(samples))
    chrom, pos, ref, alt, flt, gts = recs[333]
    gts = list(gts)
    gts[41] = "1/0"
    recs[333] = (chrom, pos, ref, alt, flt, gts)
    path = _write(tmp_path, vcf_text(recs, samples), form)
    with pytest.raises(
        InputError, match=rf"unphased genotype '1/0' for sample S41 \(at 20:{pos}\)"
    ):
        read_panel(path, "20")


# -- the one GT decoder ----------------------------------------------------------------------------

ODD_CALLS = [".", "./.", ".|.", "./1", "1/.", ".|1", "0|.", "0/1", "1/0", "0/0", "1/1", "1", "0",
             "0|2", "2/1", "0|1|1", "", "01|1", "é|0", "0x1"]  # fmt: skip


def naive_call(gt: str) -> tuple[int, int, bool, bool]:
    """(allele, allele, unphased, invalid) of one GT field, as the decoder's contract says."""
    if gt == ".":
        return -1, -1, False, False
    sep = "|" if "|" in gt else "/"
    parts = gt.split(sep)
    if len(parts) != 2 or any(p not in ("0", "1", ".") for p in parts):
        return -1, -1, False, True
    a = [-1 if p == "." else int(p) for p in parts]
    if sep == "/" and (a[0] < 0) != (a[1] < 0):
        a = [-1, -1]
    return a[0], a[1], sep == "/", False


@pytest.mark.parametrize("trailing_tab", [False, True])
def test_decode_genotypes_equals_field_by_field(trailing_tab):
    """The vectorised paths (phased 0/1 four bytes at a time; any call of the right width) agree with
    decoding every field on its own, on clean blocks and blocks with odd calls and odd field counts."""
    rng = np.random.default_rng(3)
    phased = ["0|0", "0|1", "1|0", "1|1"]
    for trial in range(60):
        n, k = int(rng.integers(1, 6)), int(rng.integers(0, 30))
        odd = trial % 3
        rows = []
        for _ in range(k):
            fields = list(rng.choice(phased, n))
            if odd and rng.random() < 0.3:
                fields[int(rng.integers(n))] = str(rng.choice(ODD_CALLS))
            if odd == 2 and n > 1 and rng.random() < 0.1:
                fields = fields[:-1] if rng.random() < 0.5 else fields + ["0|1"]
            rows.append(fields)
        gts = [("".join(f + "\t" for f in r) if trailing_tab else "\t".join(r)) for r in rows]
        g = decode_genotypes(gts, n, trailing_tab=trailing_tab)
        assert g.alleles.shape == (k, 2 * n) and g.alleles.dtype == np.int8
        for i, fields in enumerate(rows):
            assert g.miscounted[i] == (len(fields) != n)
            for j in range(n):
                want = naive_call(fields[j]) if j < len(fields) else (-1, -1, False, False)
                got = (*g.alleles[i, 2 * j : 2 * j + 2].tolist(), g.unphased[i, j], g.invalid[i, j])
                assert tuple(got) == want, (fields, j)
        assert g.clean == all(len(r) == n and set(r) <= set(phased) for r in rows)


# -- writing ---------------------------------------------------------------------------------------


def test_write_bgzip_vcf_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    text = vcf_text(random_records(rng, 30, 4), ["A", "B", "C", "D"])
    out = tmp_path / "sub" / "x.vcf.gz"
    write_bgzip_vcf(text, out)
    assert (tmp_path / "sub" / "x.vcf.gz.tbi").stat().st_mtime >= out.stat().st_mtime
    with gzip.open(out, "rt") as f:
        assert f.read() == text
    check_readable(out)  # BGZF with its EOF block
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.vcf.gz", "x.vcf.gz.tbi"]
    assert len(read_panel(out, "20").sites) == 30


def test_an_unindexed_bgzipped_vcf_is_opened_without_htslib_calling_it_an_error(tmp_path, capfd):
    """Opening a bgzipped VCF looks for its index; htslib reports the one it lacks as an error on
    stderr ("[E::idx_find_and_load]"), which reads as a failure in a log where nothing failed."""
    path = _write(tmp_path, vcf_text([_ok(100), _ok(200)], SAMPLES), "bgzip")
    capfd.readouterr()
    pysam.VariantFile(str(path)).close()
    if "idx_find_and_load" not in capfd.readouterr().err:
        pytest.skip("this htslib does not report a missing index")
    assert vcf_samples(path) == SAMPLES
    assert vcf_io.vcf_contigs(path) == ["20"]
    assert "idx_find_and_load" not in capfd.readouterr().err
    # htslib's verbosity is restored: the same open is reported again
    pysam.VariantFile(str(path)).close()
    assert "idx_find_and_load" in capfd.readouterr().err


# -- indexes that do not describe their file, and corrupted blocks -------------------------------
# htslib reads by region only the records an index lists, and says that an index is older than its
# file only in a warning on stderr: every reader that reads through an index refuses such a file.


def _long_and_short(tmp_path, sub: str = "") -> tuple:
    """An indexed VCF of 300 records, one of its first 100 (indexed), and the records."""
    d = tmp_path / sub if sub else tmp_path
    d.mkdir(exist_ok=True)
    records = random_records(np.random.default_rng(11), 300, len(SAMPLES))
    long = write_vcf(d / "long.vcf.gz", vcf_text(records, SAMPLES), index=True)
    short = write_vcf(d / "short.vcf.gz", vcf_text(records[:100], SAMPLES), index=True)
    return long, short, records


def _sites(records) -> pd.DataFrame:
    return pd.DataFrame([(p, r, a) for _, p, r, a, _, _ in records], columns=["pos", "ref", "alt"])


# Each way a VCF is read through its index: the panel (tabix), a target and the truth by region
# (bcftools query -r), the contigs that hold records and a chromosome's naming (pysam fetch).
INDEX_READERS = {
    "panel": lambda p, rec: read_panel(p, "20"),
    "panel-region": lambda p, rec: read_panel(p, "20", region=(1, 10**6)),
    "target": lambda p, rec: read_target(p, "20", _sites(rec), region=(1, 10**6)),
    "truth": lambda p, rec: read_truth(p, "20", region=(1, 10**6)),
    "query": lambda p, rec: list(query_lines(p, "%POS\n", "20", (1, 10**6))),
    "contigs": lambda p, rec: vcf_records_contigs(p),
    "selection": lambda p, rec: chrom_selection(p, "20"),
    "samples": lambda p, rec: vcf_samples(p),
}


def _age(path, seconds: int) -> None:
    """Set ``path``'s modification time ``seconds`` into the past."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


@pytest.mark.parametrize("reader", INDEX_READERS)
def test_an_index_older_than_its_file_is_refused(tmp_path, reader):
    long, _, records = _long_and_short(tmp_path)
    INDEX_READERS[reader](long, records)  # a fresh index is read
    _age(Path(f"{long}.tbi"), 120)  # as if the file were written after its index
    with pytest.raises(InputError) as e:
        INDEX_READERS[reader](long, records)
    msg = str(e.value)
    assert msg.startswith(f"{long}: its index {long}.tbi is older than the file")
    assert f"tabix -f -p vcf {long}" in msg


@pytest.mark.parametrize("reader", INDEX_READERS)
def test_an_index_of_a_shorter_file_is_refused_even_when_newer(tmp_path, reader):
    """The 1 Mb file's index beside the 2 Mb file: htslib would read only the first 100 records."""
    long, short, records = _long_and_short(tmp_path)
    Path(f"{long}.tbi").write_bytes(Path(f"{short}.tbi").read_bytes())  # newer than the file
    with pytest.raises(InputError) as e:
        INDEX_READERS[reader](long, records)
    msg = str(e.value)
    assert msg.startswith(f"{long}: its index {long}.tbi does not match the file")
    assert f"tabix -f -p vcf {long}" in msg


def _same_layout(tmp_path) -> tuple:
    """Two VCFs of the same length stored uncompressed (level 0: the same BGZF blocks), the second
    with its records shifted by a longer header: the first's index ends where the second's records
    do, and points into the middle of its lines."""
    from ragimpute.bgzf import BgzfWriter

    records = random_records(np.random.default_rng(12), 3000, len(SAMPLES))
    a = vcf_text(records, SAMPLES)
    last = a.rstrip("\n").rpartition("\n")[2]
    head, _, body = vcf_text(records[:-1], SAMPLES).partition("#CHROM")
    b = head + "##pad=" + "x" * (len(last) - 6) + "\n#CHROM" + body
    assert len(a) == len(b)
    paths = []
    for name, text in (("a.vcf.gz", a), ("b.vcf.gz", b)):
        w = BgzfWriter(tmp_path / name, level=0)
        w.write(text.encode())
        w.close()
        paths.append(tmp_path / name)
    pysam.tabix_index(str(paths[0]), preset="vcf", force=True)
    Path(f"{paths[1]}.tbi").write_bytes(Path(f"{paths[0]}.tbi").read_bytes())
    return paths[1], records[:-1]


@pytest.mark.parametrize("reader", ["panel", "panel-region", "truth", "query", "contigs"])
def test_reading_through_an_index_that_does_not_fit_names_the_file(tmp_path, reader):
    """An index whose offsets fall in the middle of the file's lines: htslib's iteration fails
    ("iteration failed (error code -2)") without naming the file."""
    path, records = _same_layout(tmp_path)
    with pytest.raises(InputError) as e:
        INDEX_READERS[reader](path, records)
    msg = str(e.value)
    assert msg.startswith(f"{path}: reading ") and f"through its index {path}.tbi failed" in msg
    assert "the index does not match the file, or the file is corrupted" in msg
    assert f"tabix -f -p vcf {path}" in msg


@needs_bcftools
def test_a_bcf_with_a_stale_csi_index_is_refused(tmp_path):
    long, short, records = _long_and_short(tmp_path)
    for p in (long, short):
        bcf = p.with_suffix(".bcf")
        subprocess.run(["bcftools", "view", "-Ob", "-o", bcf, p], check=True)
        subprocess.run(["bcftools", "index", bcf], check=True)
    long_bcf, short_bcf = long.with_suffix(".bcf"), short.with_suffix(".bcf")
    assert read_panel(long_bcf, "20").n_sites == 300
    Path(f"{long_bcf}.csi").write_bytes(Path(f"{short_bcf}.csi").read_bytes())
    with pytest.raises(InputError, match=r"its index .*\.bcf\.csi does not match the file.*"
                       r"bcftools index -f"):  # fmt: skip
        read_panel(long_bcf, "20")
    _age(Path(f"{long_bcf}.csi"), 120)
    with pytest.raises(InputError, match=r"its index .*\.bcf\.csi is older than the file"):
        read_panel(long_bcf, "20")


def test_a_damaged_index_is_refused(tmp_path):
    long, _, records = _long_and_short(tmp_path)
    Path(f"{long}.tbi").write_bytes(b"not an index")
    with pytest.raises(InputError, match=r"its index .*\.tbi cannot be read .*tabix -f -p vcf"):
        read_panel(long, "20")


def _flip_middle_block(path) -> int:
    """Flip bytes inside the deflate data of a block in the middle of a BGZF file; its offset."""
    data = bytearray(path.read_bytes())
    blocks, at = [], 0
    while at < len(data):
        size = struct.unpack_from("<H", data, at + 16)[0] + 1
        blocks.append((at, size))
        at += size
    assert len(blocks) >= 4  # a middle data block, not the first or the end-of-file block
    at, size = blocks[len(blocks) // 2]
    for i in range(at + size // 2, at + size // 2 + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return at


@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("reader", ["panel", "query", "truth"])
def test_a_corrupted_block_says_the_file_is_corrupted(tmp_path, indexed, reader):
    """A bad CRC in the middle: not a traceback, nor (unindexed) "records are not sorted"."""
    records = random_records(np.random.default_rng(13), 4000, 8)
    samples = [f"S{i}" for i in range(8)]
    path = write_vcf(tmp_path / "c.vcf.gz", vcf_text(records, samples), index=indexed)
    at = _flip_middle_block(path)
    if indexed:
        _age(path, 5)  # the index stays newer than the file
    with pytest.raises(InputError) as e:
        INDEX_READERS[reader](path, records)
    msg = str(e.value)
    assert msg.startswith(f"{path}: the file is corrupted: the compressed block at byte {at}")
    assert "fetch it again" in msg


@pytest.mark.parametrize("reader", ["panel", "target", "truth", "samples"])
def test_a_corrupted_header_block_says_the_file_is_corrupted(tmp_path, reader):
    """A bad CRC in the first block, the one that holds the header (a small file is often that one
    block): htslib then fails on the header, which is not a reason to ask whether the file is a
    VCF at all."""
    records = random_records(np.random.default_rng(17), 300, 8)
    samples = [f"S{i}" for i in range(8)]
    path = write_vcf(tmp_path / "h.vcf.gz", vcf_text(records, samples), index=False)
    data = bytearray(path.read_bytes())
    size = struct.unpack_from("<H", data, 16)[0] + 1
    for i in range(size // 2, size // 2 + 4):  # inside the first block's deflate data
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        INDEX_READERS[reader](path, records)
    msg = str(e.value)
    assert msg.startswith(f"{path}: the file is corrupted: the compressed block at byte 0"), msg
    assert "fetch it again" in msg
