"""The threaded BGZF writer: valid BGZF (gzip, htslib and tabix read it), the same bytes on any
number of threads, and blocks within the 64 KiB limit even for incompressible data."""

import gzip
import struct

import numpy as np
import pysam
import pysam.bcftools
import pytest

from ragimpute.bgzf import BLOCK, EOF_BLOCK, BgzfWriter
from ragimpute.vcf_write import bgzip_vcf_writer


def _blocks(raw: bytes) -> list[int]:
    """Sizes of the BGZF blocks of ``raw``, read from their BC fields."""
    sizes, at = [], 0
    while at < len(raw):
        assert raw[at : at + 4] == b"\x1f\x8b\x08\x04"
        assert raw[at + 12 : at + 14] == b"BC"
        size = struct.unpack("<H", raw[at + 16 : at + 18])[0] + 1
        sizes.append(size)
        at += size
    assert at == len(raw)
    return sizes


@pytest.mark.parametrize("kind", ["text", "random", "empty"])
def test_writer_round_trip_any_threads(tmp_path, kind):
    rng = np.random.default_rng(0)
    data = {
        "text": b"".join(b"20\t%d\t.\tA\tG\n" % i for i in range(40000)),
        "random": rng.integers(0, 256, 3 * BLOCK + 17, dtype=np.uint8).tobytes(),
        "empty": b"",
    }[kind]
    outputs = []
    for threads in (1, 3):
        path = tmp_path / f"{kind}{threads}.gz"
        w = BgzfWriter(path, threads)
        for a in range(0, len(data), 10007):  # writes that do not align with blocks
            w.write(data[a : a + 10007])
        w.close()
        raw = path.read_bytes()
        assert raw.endswith(EOF_BLOCK)
        assert all(s <= 0x10000 for s in _blocks(raw))
        assert gzip.decompress(raw) == data
        with pysam.BGZFile(str(path), "rb") as f:
            assert f.read() == data
        outputs.append(raw)
    assert outputs[0] == outputs[1]


def test_vcf_writer_output_is_indexed_and_queryable(tmp_path):
    out = tmp_path / "x.vcf.gz"
    header = "##fileformat=VCFv4.2\n##contig=<ID=20>\n"
    header += '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    header += "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\n"
    with bgzip_vcf_writer(out, threads=2) as write:
        write(header)
        for pos in range(1, 30001):
            write(f"20\t{pos}\t.\tA\tG\t.\tPASS\t.\tGT\t{pos % 2}|0\n")
    assert (tmp_path / "x.vcf.gz.tbi").exists()
    rows = pysam.bcftools.query("-r", "20:15000-15002", "-f", "%POS[\t%GT]\n", str(out))
    assert rows.split("\n")[:3] == ["15000\t0|0", "15001\t1|0", "15002\t0|0"]


def test_reader_gives_every_block_checked_and_names_a_damaged_one(tmp_path):
    from ragimpute.bgzf import first_damage, read_blocks

    data = np.random.default_rng(3).integers(0, 4, 300_000).astype(np.uint8).tobytes()
    path = tmp_path / "x.gz"
    w = BgzfWriter(path)
    w.write(data)
    w.close()
    assert b"".join(d for _, d in read_blocks(path)) == data and first_damage(path) is None
    raw = bytearray(path.read_bytes())
    at = sum(_blocks(bytes(raw))[:2])  # the third block
    raw[at + 40] ^= 0xFF
    path.write_bytes(bytes(raw))
    damage = first_damage(path)
    assert damage is not None and damage.offset == at
    assert "does not decompress" in str(damage) or "CRC32" in str(damage)
