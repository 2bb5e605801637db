"""Writing VCFs that bcftools, plink2 and GWAS tools accept: streamed, bgzipped, tabix-indexed, atomic.

Records are formatted from numpy arrays through lookup tables of pre-formatted numbers, so that a
chromosome is written window by window without holding the whole text (or a Python object per
genotype) in memory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
from pysam.libcbgzf import BGZFile

from . import __version__
from .atomic import atomic_path, scratch_dir

# Phased genotype strings by 2 * allele0 + allele1; missing alleles are handled by ``gt_strings``.
PHASED_GT = np.array(["0|0", "0|1", "1|0", "1|1"], dtype=object)
# Probabilities and dosages in thousandths, printed without trailing zeros ("0", "0.25", "1").
_THOUSANDTHS = np.array(
    [f"{i / 1000:.3f}".rstrip("0").rstrip(".") for i in range(2001)], dtype=object
)


@contextlib.contextmanager
def bgzip_vcf_writer(out: str | os.PathLike) -> Iterator[Callable[[str], None]]:
    """Yield ``write(text)``; on success the bgzipped VCF and then its (newer) .tbi appear atomically.

    The caller writes records sorted by position; tabix refuses unsorted input, so a bug there fails
    here instead of producing a file that region queries read wrongly.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out) as d:
        with atomic_path(out, suffix=".vcf.gz") as gz:
            f = BGZFile(str(gz), "wb")
            try:
                yield lambda text: f.write(text.encode())
            finally:
                f.close()
            pysam.tabix_index(str(gz), preset="vcf", force=True)
            os.replace(str(gz) + ".tbi", Path(d) / "x.tbi")
        os.replace(Path(d) / "x.tbi", str(out) + ".tbi")


def contig_lengths(path: str | os.PathLike) -> dict[str, int | None]:
    """``##contig`` lengths from a VCF/BCF header (None where the header gives none)."""
    with pysam.VariantFile(str(path)) as vf:
        return {name: c.length for name, c in vf.header.contigs.items()}


def header_lines(
    chrom: str,
    length: int | None,
    samples: list[str],
    meta: list[str],
) -> str:
    """Header text: fileformat, filedate, source, ``meta`` lines (INFO/FORMAT/provenance), one contig."""
    contig = f"##contig=<ID={chrom}" + (f",length={length}" if length else "") + ">"
    lines = [
        "##fileformat=VCFv4.2",
        f"##filedate={datetime.date.today():%Y%m%d}",
        f"##source=ragimpute {__version__}",
        contig,
        *meta,
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]
        ),
    ]
    return "\n".join(lines) + "\n"


def thousandths(x: np.ndarray, top: int = 1000) -> np.ndarray:
    """Round to integer thousandths, clipped to [0, top]."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 1000), 0, top).astype(np.int64)


def number_strings(x_thousandths: np.ndarray) -> np.ndarray:
    """Object array of printed numbers for integer thousandths in [0, 2000]."""
    return _THOUSANDTHS[x_thousandths]


def gt_strings(alleles: np.ndarray) -> np.ndarray:
    """(n_sites, 2n) alleles 0/1 (-1 = missing) -> (n_sites, n) phased GT strings ("0|1", ".|1")."""
    a0, a1 = alleles[:, 0::2], alleles[:, 1::2]
    out = PHASED_GT[2 * np.clip(a0, 0, 1) + np.clip(a1, 0, 1)].astype(object)
    missing = (a0 < 0) | (a1 < 0)
    if missing.any():
        sym = np.array(["0", "1", "."], dtype=object)
        i, j = np.nonzero(missing)
        out[i, j] = sym[a0[i, j]] + "|" + sym[a1[i, j]]
    return out


def join_records(fixed: list[str], fields: np.ndarray) -> str:
    """``fixed`` (CHROM..FORMAT, tab-joined) and per-sample ``fields`` (n_sites, n) into record lines."""
    return "".join(f"{f}\t" + "\t".join(row) + "\n" for f, row in zip(fixed, fields, strict=True))


def write_phased_vcf(
    out: str | os.PathLike,
    chrom: str,
    sites: pd.DataFrame,
    samples: list[str],
    alleles: np.ndarray,
    contig_length: int | None = None,
    meta: list[str] | None = None,
    chunk: int = 4096,
) -> None:
    """A phased GT-only VCF (bgzipped + .tbi) of ``alleles`` (n_sites, 2n; -1 = missing)."""
    meta = [
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Phased genotype">',
        *(meta or []),
    ]
    pos = sites["pos"].to_numpy()
    ids = sites["id"].to_numpy() if "id" in sites else np.full(len(sites), ".", dtype=object)
    ref, alt = sites["ref"].to_numpy(), sites["alt"].to_numpy()
    with bgzip_vcf_writer(out) as write:
        write(header_lines(chrom, contig_length, samples, meta))
        for a in range(0, len(sites), chunk):
            b = min(a + chunk, len(sites))
            fixed = [
                f"{chrom}\t{pos[i]}\t{ids[i] or '.'}\t{ref[i]}\t{alt[i]}\t.\tPASS\t.\tGT"
                for i in range(a, b)
            ]
            write(join_records(fixed, gt_strings(alleles[a:b])))
