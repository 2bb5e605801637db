"""The tabix index built while writing (``ragimpute.tabix``): the same index as htslib's ``tabix -p
vcf`` builds by reading the file (bins, chunks, linear index, record counts; only the order of the
bins may differ), and region queries through it return exactly the overlapping records."""

import gzip
import shutil
import struct

import numpy as np
import pysam
import pysam.bcftools
import pytest

from ragimpute.bgzf import BLOCK
from ragimpute.tabix import reg2bin
from ragimpute.vcf_write import bgzip_vcf_writer

HEADER = (
    "##fileformat=VCFv4.2\n##contig=<ID=20>\n##contig=<ID=chr21_long_contig_name>\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
)
COLUMNS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\n"


def parse_tbi(path) -> dict:
    """Every field of a .tbi; each contig's bins as a dict (their order in the file is free)."""
    d = gzip.open(path, "rb").read()
    assert d[:4] == b"TBI\x01"
    n_ref, *conf = struct.unpack_from("<7i", d, 4)
    (l_nm,) = struct.unpack_from("<i", d, 32)
    names = d[36 : 36 + l_nm].split(b"\0")[:-1]
    at, contigs = 36 + l_nm, []
    for _ in range(n_ref):
        (n_bin,) = struct.unpack_from("<i", d, at)
        at += 4
        bins = {}
        for _ in range(n_bin):
            b, n = struct.unpack_from("<Ii", d, at)
            bins[b] = struct.unpack_from(f"<{2 * n}Q", d, at + 8)
            at += 8 + 16 * n
        (n_intv,) = struct.unpack_from("<i", d, at)
        contigs.append((bins, struct.unpack_from(f"<{n_intv}Q", d, at + 4)))
        at += 4 + 8 * n_intv
    return {"conf": conf, "names": names, "contigs": contigs, "rest": d[at:]}


def records(rng, n: int = 6000) -> list[tuple[str, int, str, str]]:
    """Sorted records on two contigs: SNVs, clusters, gaps of several 16 kb windows, positions
    beyond 64 Mb (the top bin levels), long REFs over several windows, IDs longer than the part
    of a line read at once."""
    out = []
    for chrom, scale in (("20", 2_000), ("chr21_long_contig_name", 40_000)):
        pos = np.cumsum(rng.geometric(1 / scale, n // 2))
        pos[n // 4 :] += 70_000_000
        for p in pos:
            ref = "A" * int(rng.choice([1, 1, 1, 2, 40_000 if rng.random() < 0.01 else 3]))
            rid = "rs" + "9" * int(rng.integers(1, 80)) if rng.random() < 0.05 else "."
            out.append((chrom, int(p), rid, ref))
    return out


def vcf_lines(recs, rng, width: int) -> list[str]:
    return [
        f"{c}\t{p}\t{i}\t{r}\tG\t.\tPASS\t.\tGT\t{'0|1' * rng.integers(1, width)}\t0|0\n"
        for c, p, i, r in recs
    ]


def write_both(tmp_path, text: bytes, step: int):
    """Our writer (``step`` bytes per write) and htslib's index of the same file."""
    ours = tmp_path / "ours.vcf.gz"
    with bgzip_vcf_writer(ours, threads=2) as write:
        for a in range(0, len(text), step):
            write(text[a : a + step])
    theirs = tmp_path / "theirs.vcf.gz"
    shutil.copy(ours, theirs)
    pysam.tabix_index(str(theirs), preset="vcf", force=True)
    return ours, theirs


@pytest.mark.parametrize("step", [1 << 30, 9_973, 1_000_003])
def test_index_equals_htslibs(tmp_path, step):
    rng = np.random.default_rng(step)
    text = (HEADER + COLUMNS + "".join(vcf_lines(records(rng), rng, 60))).encode()
    ours, theirs = write_both(tmp_path, text, step)
    a, b = parse_tbi(str(ours) + ".tbi"), parse_tbi(str(theirs) + ".tbi")
    assert a == b
    assert len(a["contigs"]) == 2
    assert any(k < 4681 for k in a["contigs"][1][0])  # records in upper-level bins were indexed


def test_records_on_block_boundaries(tmp_path):
    """The first record starts, and another ends, exactly where a BGZF block ends."""
    head = HEADER + COLUMNS
    pad = "##padding=" + "x" * (BLOCK - len(head) - len("##padding=\n")) + "\n"
    header = HEADER + pad + COLUMNS
    assert len(header) == BLOCK
    lines = [f"20\t{10_000 + i}\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t0|0\n" for i in range(20_000)]
    size = len(lines[0])
    cut = BLOCK // size - 1  # this record is made to end where the second block ends: a long ID
    lines[cut] = lines[cut].replace("\t.\t", "\t" + "x" * (BLOCK - size * cut - size + 1) + "\t", 1)
    assert len("".join(lines[: cut + 1])) == BLOCK
    ours, theirs = write_both(tmp_path, ("".join([header, *lines])).encode(), 1 << 30)
    assert parse_tbi(str(ours) + ".tbi") == parse_tbi(str(theirs) + ".tbi")


def test_header_only_file(tmp_path):
    ours, theirs = write_both(tmp_path, (HEADER + COLUMNS).encode(), 1 << 30)
    assert parse_tbi(str(ours) + ".tbi") == parse_tbi(str(theirs) + ".tbi")


def test_region_queries_return_the_overlapping_records(tmp_path):
    rng = np.random.default_rng(7)
    recs = records(rng, 3000)
    text = (HEADER + COLUMNS + "".join(vcf_lines(recs, rng, 200))).encode()
    ours, _ = write_both(tmp_path, text, 65_536)
    n = pysam.bcftools.index("-n", str(ours))  # read from the index's per-contig counts
    assert int(n) == len(recs)
    with pysam.TabixFile(str(ours)) as tbx:
        for _ in range(60):
            chrom, p, _, _ = recs[rng.integers(len(recs))]
            lo = max(0, p - int(rng.integers(0, 200_000)))
            hi = p + int(rng.integers(1, 300_000))
            got = [tuple(x.split("\t")[:2]) for x in tbx.fetch(chrom, lo, hi)]
            want = [
                (c, str(q))
                for c, q, _, r in recs
                if c == chrom and q - 1 < hi and q - 1 + len(r) > lo  # 0-based half-open
            ]
            assert got == want


def test_reg2bin_matches_the_specification():
    """The SAM specification's reg2bin, written out for one interval at a time."""

    def spec(beg, end):
        end -= 1
        for shift, first in ((14, 4681), (17, 585), (20, 73), (23, 9), (26, 1)):
            if beg >> shift == end >> shift:
                return first + (beg >> shift)
        return 0

    rng = np.random.default_rng(3)
    beg = rng.integers(0, 1 << 29, 5000)
    end = beg + rng.choice([1, 2, 100, 20_000, 3_000_000, 1 << 27], 5000)
    assert reg2bin(beg, end).tolist() == [
        spec(int(b), int(e)) for b, e in zip(beg, end, strict=True)
    ]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["20\t200\t.\tA\tG\n", "20\t100\t.\tA\tG\n"], "out of order: 20:100 follows position 200"),
        (
            ["20\t1\t.\tA\tG\n", "21\t1\t.\tA\tG\n", "20\t5\t.\tA\tG\n"],
            "records of 20 are not together",
        ),
        (["20\tx1\t.\tA\tG\n"], "without a readable POS"),
    ],
)
def test_unsorted_or_unreadable_records_fail_and_leave_nothing(tmp_path, lines, message):
    out = tmp_path / "bad.vcf.gz"
    with pytest.raises(ValueError, match=message), bgzip_vcf_writer(out) as write:
        write(HEADER + COLUMNS)
        for line in lines:
            write(line)
    assert not out.exists() and not (tmp_path / "bad.vcf.gz.tbi").exists()
