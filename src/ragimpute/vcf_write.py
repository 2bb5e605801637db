"""Writing VCFs that bcftools, plink2 and GWAS tools accept: streamed, bgzipped, tabix-indexed, atomic.

The writing half of the VCF layer (``vcf_io`` reads): headers, phased GT records (harmonised
targets, reference panels for the other tools) and imputed ``GT:DS:GP`` records (optionally with
the per-haplotype ``HDS``) with INFO AF/R2 (``format_records``, from haplotype ALT probabilities).
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
from numba import njit, prange

from . import __version__
from .atomic import atomic_path, scratch_dir
from .bgzf import BgzfWriter
from .tabix import TabixIndexer
from .vcf_io import open_vcf

# Phased genotype strings by 2 * allele0 + allele1; missing alleles are handled by ``gt_strings``.
PHASED_GT = np.array(["0|0", "0|1", "1|0", "1|1"], dtype=object)
# Probabilities and dosages in thousandths, printed without trailing zeros ("0", "0.25", "1").
_THOUSANDTHS = np.array(
    [f"{i / 1000:.3f}".rstrip("0").rstrip(".") for i in range(2001)], dtype=object
)


# The same numbers as bytes (right-padded with NUL) and their lengths, for the record formatter.
_THOUSANDTHS_BYTES = np.zeros((2001, 5), dtype=np.uint8)
_THOUSANDTHS_LEN = np.array([len(t) for t in _THOUSANDTHS], dtype=np.int64)
for _i, _text in enumerate(_THOUSANDTHS):
    _THOUSANDTHS_BYTES[_i, : len(_text)] = np.frombuffer(_text.encode(), np.uint8)
_PHASED_GT_BYTES = np.array([np.frombuffer(g.encode(), np.uint8) for g in PHASED_GT])
# The most common sample column, hom-ref with DS 0, of each FORMAT by (with_hds, with_gp).
_HOM_REF = {
    (hds, gp): np.frombuffer(b"0|0:0" + b":0,0" * hds + b":1,0,0" * gp, np.uint8).copy()
    for hds in (False, True)
    for gp in (False, True)
}


@njit(cache=True)
def _put(buf, at, number, table, lengths):
    for c in range(lengths[number]):
        buf[at + c] = table[number, c]
    return at + lengths[number]


@njit(parallel=True, cache=True)
def _dosage_text(
    gt_code, ds, gp0, gp1, gp2, hds, with_gp, with_hds, hom_ref, table, lengths, gt_bytes
):
    """One byte buffer of every record's sample columns (``GT:DS:HDS:GP``, less HDS without
    ``with_hds`` and GP without ``with_gp``), each record's ending in a newline; and the end offset
    of each record in it. ``hds`` is (sites, 2 * samples), read only ``with_hds``."""
    n_sites, n = gt_code.shape
    size = np.zeros(n_sites, np.int64)
    for i in prange(n_sites):
        t = 0
        for j in range(n):
            t += 5 + lengths[ds[i, j]]
            if with_hds:
                t += 2 + lengths[hds[i, 2 * j]] + lengths[hds[i, 2 * j + 1]]
            if with_gp:
                t += 3 + lengths[gp0[i, j]] + lengths[gp1[i, j]] + lengths[gp2[i, j]]
        size[i] = t
    ends = np.cumsum(size)
    buf = np.empty(ends[-1] if n_sites else 0, np.uint8)
    n_hom = len(hom_ref)
    for i in prange(n_sites):
        at = ends[i] - size[i]
        for j in range(n):
            if (
                ds[i, j] == 0
                and gt_code[i, j] == 0
                and (not with_gp or gp0[i, j] == 1000)
                and (not with_hds or hds[i, 2 * j] + hds[i, 2 * j + 1] == 0)
            ):
                # most genotypes of an imputed panel: "0|0:0:1,0,0" (GP 1,0,0 is implied by DS 0,
                # GP0 1000 and their sum 1000), written in one go
                for c in range(n_hom):
                    buf[at + c] = hom_ref[c]
                buf[at + n_hom] = 9 if j < n - 1 else 10
                at += n_hom + 1
                continue
            for c in range(3):
                buf[at + c] = gt_bytes[gt_code[i, j], c]
            buf[at + 3] = 58  # ":"
            at = _put(buf, at + 4, ds[i, j], table, lengths)
            if with_hds:
                buf[at] = 58
                at = _put(buf, at + 1, hds[i, 2 * j], table, lengths)
                buf[at] = 44  # ","
                at = _put(buf, at + 1, hds[i, 2 * j + 1], table, lengths)
            if with_gp:
                buf[at] = 58
                at = _put(buf, at + 1, gp0[i, j], table, lengths)
                buf[at] = 44
                at = _put(buf, at + 1, gp1[i, j], table, lengths)
                buf[at] = 44
                at = _put(buf, at + 1, gp2[i, j], table, lengths)
            buf[at] = 9 if j < n - 1 else 10  # tab, newline after the last sample
            at += 1
    return buf, ends


def dosage_fields(
    gt_code: np.ndarray,
    ds: np.ndarray,
    gp0: np.ndarray | None = None,
    gp1: np.ndarray | None = None,
    gp2: np.ndarray | None = None,
    hds: np.ndarray | None = None,
) -> list[bytes]:
    """Per-record ``GT:DS:HDS:GP`` sample columns (tab-separated bytes ending in a newline) from
    (sites, samples) arrays: GT code 2 * allele0 + allele1, DS in thousandths (0-2000), GP in
    thousandths (0-1000); HDS (sites, 2 * samples) in thousandths (0-1000), haplotype 1 then 2 of
    each sample. ``GT:DS:GP`` when no HDS is given, ``GT:DS:HDS`` or ``GT:DS`` when no GP is.

    Written by a compiled kernel from lookup tables (numbers without trailing zeros: "0", "0.25",
    "1"): no Python object per genotype.
    """
    n_sites, n = gt_code.shape
    if n == 0:
        return [b"\n"] * n_sites
    with_gp, with_hds = gp0 is not None, hds is not None
    gp = (gp0, gp1, gp2) if with_gp else (ds, ds, ds)  # not read without GP
    arrays = [
        np.ascontiguousarray(a, dtype=np.int64)
        for a in (gt_code, ds, *gp, hds if with_hds else ds)  # nor HDS without it
    ]
    buf, ends = _dosage_text(
        *arrays, with_gp, with_hds, _HOM_REF[with_hds, with_gp], _THOUSANDTHS_BYTES,
        _THOUSANDTHS_LEN, _PHASED_GT_BYTES,
    )  # fmt: skip
    data = buf.tobytes()
    starts = np.r_[0, ends[:-1]]
    return [data[a:e] for a, e in zip(starts, ends, strict=True)]


@contextlib.contextmanager
def bgzip_vcf_writer(
    out: str | os.PathLike, threads: int = 1
) -> Iterator[Callable[[str | bytes], None]]:
    """Yield ``write(text)`` (str or bytes); on success the bgzipped VCF (compressed on ``threads``
    threads) and then its (newer) .tbi appear atomically. The index is built from the text as it
    is written (``tabix``), not by reading the file again.

    The caller writes records sorted by position; the index refuses unsorted input, as tabix does,
    so a bug there fails here instead of producing a file that region queries read wrongly.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out) as d:
        with atomic_path(out, suffix=".vcf.gz") as gz:
            f = BgzfWriter(gz, threads)
            index = TabixIndexer(out)

            def write(text: str | bytes) -> None:
                data = text if isinstance(text, bytes) else text.encode()
                index.add(data)
                f.write(data)

            try:
                yield write
            finally:
                f.close()
            index.save(Path(d) / "x.tbi", f)
        os.replace(Path(d) / "x.tbi", str(out) + ".tbi")


def write_bgzip_vcf(text: str, out: str | os.PathLike) -> None:
    """bgzip + tabix-index VCF text; the data file lands first, then its (newer) index."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out) as d:
        plain = Path(d) / "x.vcf"
        plain.write_text(text)
        with atomic_path(out, suffix=".vcf.gz") as gz:
            pysam.tabix_compress(str(plain), str(gz), force=True)
            pysam.tabix_index(str(gz), preset="vcf", force=True)
            tbi_tmp = Path(str(gz) + ".tbi")
            os.replace(tbi_tmp, Path(d) / "x.tbi")
        os.replace(Path(d) / "x.tbi", str(out) + ".tbi")


def contig_lengths(path: str | os.PathLike) -> dict[str, int | None]:
    """``##contig`` lengths from a VCF/BCF header (None where the header gives none)."""
    with open_vcf(path) as vf:
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


# Unphased genotype strings by the ALT count (a heterozygote is written 0/1, as arrays write it).
UNPHASED_GT = np.array(["0/0", "0/1", "1/1"], dtype=object)


def gt_strings(alleles: np.ndarray, unphased: np.ndarray | None = None) -> np.ndarray:
    """(n_sites, 2n) alleles 0/1 (-1 = missing) -> (n_sites, n) phased GT strings ("0|1", ".|1").

    ``unphased`` (n_sites, n) bool: those genotypes are written unphased ("0/1", "1/1", "./.")."""
    a0, a1 = alleles[:, 0::2], alleles[:, 1::2]
    out = PHASED_GT[2 * np.clip(a0, 0, 1) + np.clip(a1, 0, 1)].astype(object)
    missing = (a0 < 0) | (a1 < 0)
    if missing.any():
        sym = np.array(["0", "1", "."], dtype=object)
        i, j = np.nonzero(missing)
        out[i, j] = sym[a0[i, j]] + "|" + sym[a1[i, j]]
    if unphased is not None and unphased.any():
        i, j = np.nonzero(unphased & ~missing)
        out[i, j] = UNPHASED_GT[np.clip(a0[i, j], 0, 1) + np.clip(a1[i, j], 0, 1)]
        i, j = np.nonzero(unphased & missing)
        out[i, j] = "./."
    return out


def join_records(fixed: list[str], fields: np.ndarray) -> str:
    """``fixed`` (CHROM..FORMAT, tab-joined) and per-sample ``fields`` (n_sites, n) into record lines."""
    return "".join(f"{f}\t" + "\t".join(row) + "\n" for f, row in zip(fixed, fields, strict=True))


@contextlib.contextmanager
def phased_vcf_writer(
    out: str | os.PathLike,
    chrom: str,
    samples: list[str],
    contig_length: int | None = None,
    meta: list[str] | None = None,
    any_unphased: bool = False,
    chunk: int = 4096,
) -> Iterator[Callable[..., None]]:
    """Yield ``write(sites, alleles, unphased=None)``, which appends the GT-only records of a block
    of sites (in order); on success the bgzipped VCF and its .tbi appear (``bgzip_vcf_writer``).
    ``any_unphased``: the header's GT is "Genotype" (some calls are written ``0/1``)."""
    what = "Genotype" if any_unphased else "Phased genotype"
    meta = [f'##FORMAT=<ID=GT,Number=1,Type=String,Description="{what}">', *(meta or [])]
    with bgzip_vcf_writer(out) as write:
        write(header_lines(chrom, contig_length, samples, meta))

        def write_sites(
            sites: pd.DataFrame, alleles: np.ndarray, unphased: np.ndarray | None = None
        ) -> None:
            pos = sites["pos"].to_numpy()
            ids = sites["id"].to_numpy() if "id" in sites else np.full(len(sites), ".", object)
            ref, alt = sites["ref"].to_numpy(), sites["alt"].to_numpy()
            for a in range(0, len(sites), chunk):
                b = min(a + chunk, len(sites))
                fixed = [
                    f"{chrom}\t{pos[i]}\t{ids[i] or '.'}\t{ref[i]}\t{alt[i]}\t.\tPASS\t.\tGT"
                    for i in range(a, b)
                ]
                un = None if unphased is None else unphased[a:b]
                write(join_records(fixed, gt_strings(alleles[a:b], un)))

        yield write_sites


def write_phased_vcf(
    out: str | os.PathLike,
    chrom: str,
    sites: pd.DataFrame,
    samples: list[str],
    alleles: np.ndarray,
    contig_length: int | None = None,
    meta: list[str] | None = None,
    chunk: int = 4096,
    unphased: np.ndarray | None = None,
) -> None:
    """A phased GT-only VCF (bgzipped + .tbi) of ``alleles`` (n_sites, 2n; -1 = missing).

    ``unphased`` (n_sites, n) bool: genotypes written unphased (``0/1``), e.g. an array's calls that
    are still to be phased."""
    some = unphased is not None and bool(unphased.any())
    with phased_vcf_writer(out, chrom, samples, contig_length, meta, some, chunk) as write_sites:
        write_sites(sites, alleles, unphased)


# -- imputed records: GT:DS(:HDS):GP from haplotype ALT probabilities ------------------------------

GP_LINE = (
    '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Genotype probabilities of 0/0, 0/1, 1/1">'
)
INFO_LINES = [
    '##INFO=<ID=AF,Number=A,Type=Float,Description="Estimated ALT allele frequency: mean DS / 2 over '
    'the targets">',
    '##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated imputation r-squared: variance of the '
    'haplotype ALT dosages / (AF * (1 - AF)), as Minimac Rsq; 0 where AF is 0 or 1">',
    '##INFO=<ID=IMP,Number=0,Type=Flag,Description="Imputed: not typed in the target">',
    '##INFO=<ID=TYPED,Number=0,Type=Flag,Description="Typed in the target (missing calls imputed)">',
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Phased best-guess genotype: the most probable of 0/0, 0/1, 1/1 (argmax GP, written or not)">',
    '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage: P(ALT) of haplotype 1 + haplotype 2">',
    GP_LINE,
]
# Minimac4's field (Number=2: one value per haplotype of a diploid sample, in GT order)
HDS_LINE = (
    '##FORMAT=<ID=HDS,Number=2,Type=Float,Description="Estimated Haploid Alternate Allele Dosage: '
    'P(ALT) of haplotype 1, of haplotype 2">'
)


def imputed_meta_lines(gp: bool = True, hds: bool = False) -> list[str]:
    """The INFO and FORMAT header lines of imputed records (``format_records``): HDS declared after
    DS, as its values follow DS's, only with ``hds``; GP only with ``gp``."""
    lines = [line for line in INFO_LINES if gp or line != GP_LINE]
    if hds:
        at = next(i for i, line in enumerate(lines) if line.startswith("##FORMAT=<ID=DS,"))
        lines.insert(at + 1, HDS_LINE)
    return lines


def genotype_codes(k: np.ndarray) -> tuple[np.ndarray, ...]:
    """(n_sites, 2n) P(ALT) x STATS_SCALE (integers) -> (n_sites, n) GT codes (2 * allele0 +
    allele1), DS in thousandths and GP in thousandths that sum to exactly 1000 (the heterozygote
    takes the remainder), from p = k / STATS_SCALE: GP = ((1-p0)(1-p1), p0(1-p1) + p1(1-p0), p0 p1),
    GT = argmax GP, a heterozygote phased with ALT on the haplotype of larger p (haplotype 1 on
    ties); DS = p0 + p1; each rounded half to even and clipped."""
    k = np.ascontiguousarray(k)
    if k.dtype.kind not in "iu":
        k = k.astype(np.int64)
    n_sites, n = k.shape[0], k.shape[1] // 2
    codes = [np.empty((n_sites, n), np.int64) for _ in range(5)]
    _genotype_codes(k, float(STATS_SCALE), *codes)
    return tuple(codes)


@njit(parallel=True, cache=True)
def _genotype_codes(k, scale, gt, ds, g0, g1, g2):
    for i in prange(k.shape[0]):
        for j in range(gt.shape[1]):
            p0 = k[i, 2 * j] / scale
            p1 = k[i, 2 * j + 1] / scale
            a = (1 - p0) * (1 - p1)
            h = p0 * (1 - p1) + p1 * (1 - p0)
            c = p0 * p1
            best = 0 if a >= h and a >= c else (1 if h >= c else 2)  # first maximum, as argmax
            if best == 1:
                gt[i, j] = 2 if p0 > p1 else 1
            else:
                gt[i, j] = 3 * (best == 2)
            ds[i, j] = min(max(np.rint((p0 + p1) * 1000), 0), 2000)
            t0 = min(max(np.rint(a * 1000), 0), 1000)
            t2 = min(max(np.rint(c * 1000), 0), 1000)
            over = max(t0 + t2 - 1000, 0)
            if t0 >= t2:
                t0 -= over
            else:
                t2 -= over
            g0[i, j] = t0
            g1[i, j] = 1000 - t0 - t2
            g2[i, j] = t2


def haplotype_dosages(k: np.ndarray) -> np.ndarray:
    """(n_sites, 2n) P(ALT) x STATS_SCALE (integers) -> the same shape in thousandths (HDS): each
    haplotype's p = k / STATS_SCALE rounded as DS rounds p0 + p1, so that HDS1 + HDS2 is DS to
    within one thousandth (each rounding is off by less than half of one)."""
    return np.clip(np.rint(k / float(STATS_SCALE) * 1000), 0, 1000).astype(np.int64)


# P(ALT) is rounded to 1/STATS_SCALE before any field is computed from it (ragimpute.ligate: the
# exact integer sums merged batches recompute INFO from)
STATS_SCALE = 65535


def format_records(
    chrom: str,
    sites: pd.DataFrame,
    p: np.ndarray,
    typed: np.ndarray,
    block: int = 1 << 21,
    gp: bool = True,
    hds: bool = False,
) -> tuple[bytes, np.ndarray]:
    """VCF record lines of ``sites`` from haplotype probabilities ``p`` (n_sites, 2n), formatted
    ``block`` genotypes at a time (memory: ~30 bytes per genotype of a block); also (n_sites, 2) the
    integer sums of P(ALT) x 65535 and of its square over the haplotypes, from which INFO AF and R2
    are computed (exactly, so that batches of targets merged later give the same INFO).

    P(ALT) is first rounded to 1/65535 (far below the printed thousandths), the one value every
    field is computed from (``format_coded_records``)."""
    k = np.rint(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0) * STATS_SCALE).astype(np.int64)
    return format_coded_records(chrom, sites, k, typed, block, gp, hds)


def format_coded_records(
    chrom: str,
    sites: pd.DataFrame,
    k: np.ndarray,
    typed: np.ndarray,
    block: int = 1 << 21,
    gp: bool = True,
    hds: bool = False,
) -> tuple[bytes, np.ndarray]:
    """``format_records`` from P(ALT) already rounded: ``k`` (n_sites, 2n) integers P(ALT) x 65535
    (as the engine's prior store holds them). The records are ``GT:DS:GP``; without ``gp`` ``GT:DS``;
    with ``hds`` each haplotype's P(ALT) follows DS (``GT:DS:HDS:GP``, ``GT:DS:HDS``)."""
    n = k.shape[1] // 2
    step = max(1, block // max(n, 1))
    pos = sites["pos"].to_numpy()
    ids = sites["id"].to_numpy() if "id" in sites else np.full(len(sites), ".", dtype=object)
    ref, alt = sites["ref"].to_numpy(), sites["alt"].to_numpy()
    form = "GT:DS" + ":HDS" * hds + ":GP" * gp + "\t"
    sums = np.zeros((len(k), 2), dtype=np.int64)
    _code_sums(np.ascontiguousarray(k), sums)
    out = []
    for a in range(0, len(sites), step):
        b = min(a + step, len(sites))
        codes = genotype_codes(k[a:b])
        fields = dosage_fields(
            *(codes if gp else codes[:2]), hds=haplotype_dosages(k[a:b]) if hds else None
        )
        info = info_strings(sums[a:b, 0], sums[a:b, 1], 2 * n, typed[a:b])
        for i in range(b - a):
            j = a + i
            out.append(
                f"{chrom}\t{pos[j]}\t{ids[j] or '.'}\t{ref[j]}\t{alt[j]}\t.\tPASS\t"
                f"{info[i]}\t{form}".encode()
            )
            out.append(fields[i])
    return b"".join(out), sums


@njit(parallel=True, cache=True)
def _code_sums(k, sums):
    for i in prange(k.shape[0]):
        s = 0
        sq = 0
        for j in range(k.shape[1]):
            x = np.int64(k[i, j])
            s += x
            sq += x * x
        sums[i, 0] = s
        sums[i, 1] = sq


def info_strings(
    p_sum: np.ndarray, p_sq: np.ndarray, n_hap: int, typed: np.ndarray, scale: int = STATS_SCALE
) -> list[str]:
    """INFO of imputed records from exact integer sums over the target haplotypes of P(ALT) x scale
    (``p_sum``) and its square (``p_sq``): AF = mean P(ALT); R2 = variance of the haplotype dosages /
    (AF (1 - AF)), Minimac's Rsq (0 where AF is 0 or 1); flag IMP or TYPED. Integers make the result
    independent of how the targets were batched."""
    s = np.asarray(p_sum, dtype=np.float64)
    sq = np.asarray(p_sq, dtype=np.float64)
    n = max(int(n_hap), 1)
    af = s / (n * scale)
    var = sq / (n * float(scale) ** 2) - af * af
    denom = af * (1 - af)
    r2 = np.zeros(len(af))
    ok = denom > 1e-12
    r2[ok] = np.clip(var[ok] / denom[ok], 0.0, 1.0)
    return [
        f"AF={a:.4g};R2={r:.3f};{'TYPED' if t else 'IMP'}"
        for a, r, t in zip(af, r2, typed, strict=True)
    ]
