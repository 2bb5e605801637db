"""Reading VCF/BCF files in bulk, with the checks users expect of a serious tool: the reading half of
the VCF layer (``vcf_write`` writes).

Genotypes are read as text and decoded with numpy by one decoder (``decode_genotypes``) for panels,
targets and truth VCFs alike: pysam's per-sample Python objects are about two orders of magnitude
slower on thousands of samples. Panels are read record by record as VCF text lines (from tabix, from
the file, or as htslib formats a BCF's records: ``PanelStream``, so that a chromosome streams);
targets, truth and imputed VCFs through ``bcftools query`` (pysam's bundled bcftools: ``query_lines``,
the one wrapper).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pysam.bcftools

from . import bgzf
from .atomic import atomic_path
from .errors import InputError

# The empty BGZF block every bgzip/htslib writer ends a file with (SAM/BAM spec, section 4.1.2).
SKIP_REASONS = ("multiallelic", "non_snv", "no_alt", "filtered")
_BASES = frozenset("ACGT")
# An indel's alleles may hold N (a base the assembly does not know), as Beagle and Minimac4 accept.
_INDEL_BASES = frozenset("ACGTN")


@dataclass
class Panel:
    """Biallelic SNVs of one chromosome with their phased haplotypes.

    ``haplotypes[i, 2*j + p]`` is the allele (0 = REF, 1 = ALT) of sample ``j``, phase ``p``, at site ``i``.
    """

    path: str
    chrom: str
    sites: pd.DataFrame  # chrom, pos, id, ref, alt
    samples: list[str]
    haplotypes: np.ndarray  # (n_sites, 2 * n_samples) uint8
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_sites(self) -> int:
        return len(self.sites)


def normalize_chrom(name: str) -> str:
    """``chr20``, ``Chr20`` and ``20`` compare equal; used only for matching, never for output."""
    return name[3:] if name.lower().startswith("chr") else name


def check_readable(path: str | os.PathLike) -> None:
    """Fail early, and clearly, on a missing, empty or truncated (b)gzip/BCF file, or one whose
    index does not describe it (``check_index``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(
            p, "file not found", "Check the path (the config key or command-line option naming it)"
        )
    size = p.stat().st_size
    if size == 0:
        raise InputError(p, "file is empty", "Re-create or re-download it")
    with open(p, "rb") as f:
        head = f.read(18)
    if bgzf.is_block_header(head):  # the test htslib and our block reader make
        if not bgzf.ends_with_eof_block(p):
            raise InputError(
                p,
                "file is truncated: the BGZF end-of-file block is missing",
                "The download or copy was cut short; fetch it again, or rewrite it with "
                "`bcftools view -Oz -o fixed.vcf.gz` from an intact source. A file of a "
                "results directory: make it again with `snakemake --cores all --forcerun "
                "<the rule that wrote it>` (impute, beagle, minimac4, phase, ...)",
            )
    elif head[:2] == b"\x1f\x8b":
        fixed = _bgzip_name(p)
        raise InputError(
            p,
            "file is gzip- but not bgzip-compressed, so it cannot be indexed or read by region",
            f"Recompress it with bgzip: `zcat {p} | bgzip > {fixed}`, then `tabix -p vcf "
            f"{fixed}`, and give that file",
        )
    _index_file(p)


def _bgzip_name(p: Path) -> Path:
    """Where the bgzip-compressed copy of the plain-gzip ``p`` can go: beside it, named as a VCF."""
    stem = p.name[: -len(".gz")] if p.name.endswith(".gz") else p.name
    stem = stem[: -len(".vcf")] if stem.endswith(".vcf") else stem
    return p.with_name(f"{stem}.bgzf.vcf.gz")


def _index_beside(path: str | os.PathLike) -> str | None:
    """The tabix (.tbi) or CSI (.csi) index beside ``path``, if any (the one htslib reads first)."""
    return next((str(path) + e for e in (".tbi", ".csi") if os.path.exists(str(path) + e)), None)


def _index_file(path: str | os.PathLike) -> str | None:
    """The tabix (.tbi) or CSI (.csi) index beside ``path``, if any, once checked against the file
    (``check_index``): every read by region goes through here."""
    index = _index_beside(path)
    if index is not None:
        check_index(path, index)
    return index


def check_index(path: str | os.PathLike, index: str | os.PathLike) -> None:
    """Refuse an index that does not describe ``path``: htslib would read by region only the
    records it lists, and say so (an index older than its file) only in a warning on stderr.

    An index older than its file is refused, as is one whose last record ends before the file's
    records do (the file was extended or replaced after it was indexed, or the index is another
    file's) and one that cannot be read. Each file and index is checked once per process.
    """
    p, i = os.stat(path), os.stat(index)
    _check_index(str(path), str(index), (p.st_size, p.st_mtime_ns), (i.st_size, i.st_mtime_ns))


@functools.lru_cache(maxsize=256)
def _check_index(path: str, index: str, path_stat: tuple, index_stat: tuple) -> None:
    # whole seconds, as htslib compares them: a file and its index written within a second are equal
    if index_stat[1] // 10**9 < path_stat[1] // 10**9:
        raise InputError(
            path,
            f"its index {index} is older than the file, so it may not list every record (the file "
            "was changed or replaced after it was indexed; a copy that did not keep the files' "
            "times, `cp` without `-p`, does this too)",
            _reindex_hint(path, index),
        )
    try:
        end = _index_end(gzip.decompress(Path(index).read_bytes()))
    except (OSError, EOFError, zlib.error, ValueError, struct.error) as e:
        raise InputError(
            path,
            f"its index {index} cannot be read ({e}): it is damaged or not an index",
            _reindex_hint(path, index),
        ) from e
    if end is not None and bgzf.is_bgzf(path) and not _nothing_after(path, end):
        raise InputError(
            path,
            f"its index {index} does not match the file: the file holds records after the last "
            "one the index lists (the file was changed or replaced after it was indexed, or the "
            "index is another file's)",
            _reindex_hint(path, index),
        )


def _reindex_hint(path: str | os.PathLike, index: str | os.PathLike) -> str:
    how = (
        f"`tabix -f -p vcf {path}`"
        if str(index).endswith(".tbi")
        else f"`bcftools index -f {path}`"
    )
    return (
        f"Index it again: {how} (or delete {index} to read the file without an index); if that "
        "fails, the file itself is damaged: fetch it again, or rewrite it from an intact source"
    )


def _index_end(raw: bytes) -> int | None:
    """The largest chunk end (BGZF virtual offset: where the last record listed ends) of a tabix or
    CSI index (SAM/BAM specification, section 5; tabix), None for an index of no records."""
    if raw[:4] == b"TBI\x01":
        csi, depth = False, 5
        n_ref = struct.unpack_from("<i", raw, 4)[0]
        at = 36 + struct.unpack_from("<i", raw, 32)[0]  # after the names
    elif raw[:4] == b"CSI\x01":
        csi = True
        _, depth, l_aux = struct.unpack_from("<3i", raw, 4)
        n_ref = struct.unpack_from("<i", raw, 16 + l_aux)[0]
        at = 20 + l_aux
    else:
        raise ValueError("it does not begin as a tabix (.tbi) or CSI index does")
    meta_bin = ((1 << (3 * depth + 3)) - 1) // 7 + 1  # its second "chunk" holds record counts
    end = None
    for _ in range(n_ref):
        n_bin = struct.unpack_from("<i", raw, at)[0]
        at += 4
        for _ in range(n_bin):
            if csi:
                b, _, n_chunk = struct.unpack_from("<IQi", raw, at)
                at += 16
            else:
                b, n_chunk = struct.unpack_from("<Ii", raw, at)
                at += 8
            if n_chunk < 0 or at + 16 * n_chunk > len(raw):
                raise ValueError("it is cut short")
            if n_chunk:  # a bin's chunks are sorted: the last ends last
                last = at + 8 if b == meta_bin else at + 16 * n_chunk - 8
                v = struct.unpack_from("<Q", raw, last)[0]
                end = v if end is None else max(end, v)
            at += 16 * n_chunk
        if not csi:  # the linear index
            at += 4 + 8 * struct.unpack_from("<i", raw, at)[0]
    return end


def _nothing_after(path: str | os.PathLike, end: int) -> bool:
    """Whether a BGZF file holds nothing but blank or ``#`` lines after virtual offset ``end``."""
    start, skip = end >> 16, end & 0xFFFF
    if start > os.path.getsize(path):
        return False
    after = bytearray()
    try:
        for n, (_, data) in enumerate(bgzf.read_blocks(path, start)):
            if n == 0 and skip > len(data):
                return False
            after += data[skip:] if n == 0 else data
            if len(after) > 1 << 16 or n > 1000:
                break
    except bgzf.BgzfDamage:
        return False  # no block begins where the index says the last record ends
    return all(not ln.strip() or ln.startswith(b"#") for ln in bytes(after).split(b"\n"))


def is_indexed(path: str | os.PathLike) -> bool:
    return _index_file(path) is not None


@contextlib.contextmanager
def htslib_verbosity(level: int) -> Iterator[None]:
    """htslib's messages on stderr at ``level`` (0: none, 1: errors, 3: warnings too) within."""
    old = pysam.set_verbosity(level)
    try:
        yield
    finally:
        pysam.set_verbosity(old)


def open_vcf(path: str | os.PathLike) -> pysam.VariantFile:
    """``pysam.VariantFile(path)`` for its header. Opening a bgzipped file looks for its index,
    and htslib reports one it does not find as an error on stderr: a file without an index is
    opened quietly, since reading it through is what we then do. A file whose damaged block holds
    the header (a small file's only block, often) is refused as corrupted: htslib, which fails on
    the header, would only ask whether it is a VCF at all."""
    try:
        if is_indexed(path):
            return pysam.VariantFile(str(path))
        with htslib_verbosity(0):
            return pysam.VariantFile(str(path))
    except (OSError, ValueError):
        damage = bgzf.first_damage(path)
        if damage is not None:
            raise corrupted(path, damage) from None
        raise


def vcf_samples(path: str | os.PathLike) -> list[str]:
    check_readable(path)
    try:
        with open_vcf(path) as vf:
            samples = list(vf.header.samples)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        # htslib refuses a header with duplicate sample names but says so only on stderr; look for
        # them ourselves so that the user is told what is actually wrong.
        names = _header_line_samples(path)
        if names is None or not pd.Index(names).duplicated().any():
            raise InputError(
                path, f"cannot read the VCF header: {e}", "Is this a VCF/BCF file?"
            ) from e
        samples = names
    if not samples:
        raise InputError(
            path, "the VCF has no samples (sites-only)", "A panel needs phased genotypes"
        )
    dup = pd.Index(samples)[pd.Index(samples).duplicated()]
    if len(dup):
        raise InputError(
            path,
            f"duplicate sample names in the header: {', '.join(dup[:5])}",
            "Give every sample its own name: `bcftools reheader -s names.txt` (one new name per "
            "line, in header order)",
        )
    return samples


def _text_lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a text VCF, plain or (b)gzipped; ends early, quietly, where it cannot be read on
    (binary, truncated): the scanners below only add detail to an error already found."""
    with open(path, "rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    try:
        with opener(path, "rt", errors="replace") as f:
            yield from f
    except (OSError, EOFError):
        return


def _header_line_samples(path: str | os.PathLike) -> list[str] | None:
    """Sample names from the ``#CHROM`` line of a text VCF (plain or (b)gzipped); None for others."""
    for line in _text_lines(path):
        if line.startswith("#CHROM"):
            return line.rstrip("\r\n").split("\t")[9:]
        if not line.startswith("##"):
            return None
    return None


def vcf_contigs(path: str | os.PathLike) -> list[str]:
    """Contigs named in the header (``##contig``) or, failing that, in the index."""
    with open_vcf(path) as vf:
        names = list(vf.header.contigs)
        if not names and vf.index is not None:
            names = list(vf.index)
    return names


def vcf_records_contigs(path: str | os.PathLike) -> list[str]:
    """Contigs that actually hold records, in file order (reads the index when there is one)."""
    check_readable(path)
    if is_indexed(path):
        with (
            _reading(path, "each chromosome's first record"),
            pysam.VariantFile(str(path)) as vf,
        ):
            return [c for c in vf.index if next(vf.fetch(c), None) is not None]
    seen: dict[str, None] = {}
    for c in query_lines(path, "%CHROM\n"):
        if c:
            seen.setdefault(c)
    return list(seen)


def chrom_selection(path: str | os.PathLike, chrom: str) -> str | None:
    """``chrom`` as ``path`` names it (``20`` or ``chr20``), for ``query_lines``, found without reading
    the records: the indexed contig that holds records (None: none does); without an index, the
    names of the ``##contig`` lines and both namings (``20,chr20``: a file need not declare its
    contigs), which bcftools then filters the records by."""
    want = normalize_chrom(chrom)
    if not is_indexed(path):
        names = [c for c in vcf_contigs(path) if normalize_chrom(c) == want]
        return ",".join(dict.fromkeys([*names, want, f"chr{want}"]))
    with _reading(path, f"chromosome {chrom}"), pysam.VariantFile(str(path)) as vf:
        names = [c for c in vf.index if normalize_chrom(c) == want]
        return next((c for c in names if next(vf.fetch(c), None) is not None), None)


def vcf_records_sites(path: str | os.PathLike) -> pd.DataFrame:
    """chrom, pos, ref, alt of every record (no genotypes decoded)."""
    check_readable(path)
    rows = [ln.split("\t") for ln in query_lines(path, "%CHROM\t%POS\t%REF\t%ALT\n") if ln]
    df = pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])
    df["pos"] = df["pos"].astype(np.int64)
    return upper_alleles(df)


def upper_alleles(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its ``ref`` and ``alt`` columns in upper case: VCF bases are case-insensitive
    (VCF 4.3, section 1.6.1), so ``a``/``g`` is the site ``A``/``G``."""
    for col in ("ref", "alt"):
        if col in df:
            df[col] = df[col].astype(str).str.upper()
    return df


def query_lines(
    path: str | os.PathLike,
    fmt: str,
    contig: str | None = None,
    region: tuple[int, int] | None = None,
    samples: list[str] | None = None,
) -> Iterator[str]:
    """The lines of ``bcftools query -f fmt`` (``fmt`` ends with a newline; the lines come without
    it): of every record, of ``contig`` (a name, or several joined by commas) or of its ``region``
    (first and last bp, inclusive). An indexed file is looked up (``-r``), any other one is read
    through (``-t``). ``samples``: only these samples' ``[...]`` columns (they must be in the file;
    they come in the file's order).

    pysam's bcftools returns its whole output as one string (it cannot write it to a file for us to
    stream): for target-, truth- and region-sized reads. A file bcftools cannot read is an InputError
    quoting what htslib said (naming the record when a line of a text VCF has too few columns).
    """
    path = str(path)
    args = ["-f", fmt]
    where = None
    if contig is not None:
        where = contig
        if region is not None:
            where = ",".join(f"{c}:{region[0]}-{region[1]}" for c in contig.split(","))
        args += ["-r" if is_indexed(path) else "-t", where]
        if region is not None and "-r" in args:
            # a record is a region's by its POS, as ``-t`` takes it: by default ``-r`` also gives a
            # deletion that starts before the region and reaches into it, which the region before
            # has already given (the same site read twice)
            args += ["--regions-overlap", "pos"]
    if samples is not None:
        args += ["-s", ",".join(samples)]
    try:
        text = pysam.bcftools.query(*args, path)
    except pysam.utils.SamtoolsError as e:
        what = f"{'chromosome' if region is None else 'region'} {where}" if "-r" in args else None
        raise _query_error(path, e, what) from e
    start = 0  # line by line, without a second copy of the text in a list of lines
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    if start < len(text):
        yield text[start:]


def _query_error(path: str, e: Exception, region: str | None) -> InputError:
    """What to tell the user when ``bcftools query`` fails on ``path`` (reading ``region`` through
    the index, if not None)."""
    damage = bgzf.first_damage(path)
    if damage is not None:
        return corrupted(path, damage)
    short = short_record_error(path)
    if short is not None:
        return short
    # pysam's message holds all of stdout before stderr: keep only bcftools' own complaint
    said = str(getattr(e, "value", e)).rpartition("stderr=")[2].strip()
    return read_error(path, f"bcftools: {said[:500]}", region)


def corrupted(path: str | os.PathLike, damage: bgzf.BgzfDamage) -> InputError:
    """The error for a BGZF file with a damaged block."""
    return InputError(
        path,
        f"the file is corrupted: {damage}",
        "It was damaged on disk or in a copy or download: fetch it again, or rewrite it from an "
        "intact source. A file of a results directory: make it again with `snakemake --cores all "
        "--forcerun <the rule that wrote it>`",
    )


def read_error(path: str | os.PathLike, said: str, region: str | None = None) -> InputError:
    """The error for a VCF/BCF that htslib failed to read (it said ``said``) and that has no damaged
    block (callers look for one first: ``corrupted``): an index that does not match the file when
    ``region`` was read through it (not None), else a file htslib cannot read."""
    index = _index_beside(path)
    if region is not None and index is not None:
        return InputError(
            path,
            f"reading {region} through its index {index} failed ({said}): the index does not "
            "match the file, or the file is corrupted",
            _reindex_hint(path, index),
        )
    return InputError(
        path, f"htslib could not read the file: {said}", "Check that it is a valid, intact VCF/BCF"
    )


@contextlib.contextmanager
def _reading(path: str | os.PathLike, what: str | None) -> Iterator[None]:
    """Read ``path`` (``what`` of it through its index; None: through the file) inside this block:
    htslib's errors become an InputError naming the file, and what is wrong with it if it can be
    found (a damaged block, an index that does not match)."""
    try:
        yield
    except InputError:
        raise
    except (OSError, ValueError) as e:
        damage = bgzf.first_damage(path)
        raise (corrupted(path, damage) if damage else read_error(path, f"htslib: {e}", what)) from e


def _first_short_record(path: str | os.PathLike, n_samples: int) -> tuple[str, int] | None:
    """(``chrom:pos``, columns) of the first data line with too few columns, in a text VCF.

    htslib names such a record only on stderr, which pysam does not capture; this slow scan runs
    only after a failed read, to tell the user where the file is broken.
    """
    for line in _text_lines(path):
        if line.startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 9 + n_samples:
            return f"{fields[0]}:{fields[1] if len(fields) > 1 else '?'}", len(fields)
    return None


def short_record_error(path: str | os.PathLike) -> InputError | None:
    """The error naming the first record of a text VCF with too few (or too many) columns, if any.

    bcftools either fails on such a record without naming it, or (a record cut after INFO or
    FORMAT) reads it as missing genotypes: callers look here when a read fails, or when a record
    has no called genotype at all.
    """
    samples = _header_line_samples(path)
    if samples is None:
        return None
    short = _first_short_record(path, len(samples))
    return None if short is None else _short_record(str(path), short[0], short[1], len(samples))


def resolve_contig(path: str | os.PathLike, chrom: str, available: list[str] | None = None) -> str:
    """Map the requested chromosome onto the file's own naming (``chr20`` vs ``20``)."""
    names = vcf_contigs(path) if available is None else available
    if not names and available is None:
        # No ##contig lines and no index (common in hand-made or older files): the records tell.
        names = vcf_records_contigs(path)
    if not names or chrom in names:
        return chrom
    matches = [n for n in names if normalize_chrom(n) == normalize_chrom(chrom)]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    raise InputError(
        path,
        f"chromosome {chrom!r} is not in this file (contigs: {shown})",
        "Set `chromosomes:` in the config to names the file uses",
    )


def read_panel(
    path: str | os.PathLike,
    chrom: str,
    samples: list[str] | None = None,
    pass_only: bool = True,
    region: tuple[int, int] | None = None,
    indels: bool = False,
) -> Panel:
    """Read the biallelic SNVs (and with ``indels`` the biallelic indels) of ``chrom`` (or of its
    ``region``, first and last bp inclusive: a chunk) with phased genotypes of ``samples`` (all by
    default), as one matrix (``PanelStream`` reads the same block by block).

    Multi-allelic, non-SNV, ALT-less and (with ``pass_only``) filtered records are skipped and counted.
    Unphased or missing genotypes, unsorted or duplicate sites are errors naming the record.
    """
    stream = PanelStream(path, chrom, samples, pass_only, region, indels)
    kept: list[Site] = []
    blocks: list[np.ndarray] = []
    for sites, haplotypes in stream:
        kept += sites
        blocks.append(haplotypes)
    return Panel(
        stream.path,
        stream.chrom,
        site_table(kept),
        list(stream.samples),
        np.concatenate(blocks) if len(blocks) > 1 else blocks[0],
        stream.skipped,
    )


Site = tuple[str, int, str, str, str]  # chrom, pos, id, ref, alt


def site_table(kept: list[Site]) -> pd.DataFrame:
    """chrom, pos, id, ref, alt of kept records, as ``Panel.sites``."""
    sites = pd.DataFrame(kept, columns=["chrom", "pos", "id", "ref", "alt"])
    sites["pos"] = sites["pos"].astype(np.int64)
    return sites


# Records whose genotype text is decoded at a time: at most _CHUNK_RECORDS, and about _CHUNK_BYTES of
# genotype text (~4 bytes per sample and record; the haplotypes take 2), so that a block takes about
# the same memory whatever the number of samples, and decoding as we go keeps memory to a few blocks
# (the window stage) or near the size of the haplotype matrix (read_panel).
_CHUNK_RECORDS = 2048
_CHUNK_BYTES = 4 << 20


def _block_records(n_samples: int) -> int:
    return max(1, min(_CHUNK_RECORDS, _CHUNK_BYTES // max(4 * n_samples, 1)))


def where_words(chrom: str, region: tuple[int, int] | None) -> str:
    """Where a read looked, for a message: ``on chromosome 20``, or a chunk's region."""
    if region is None:
        return f"on chromosome {chrom}"
    return f"in {chrom}:{region[0]}-{region[1]}, this chunk's region"


def skip_counts(skipped: dict[str, int]) -> str:
    """The records skipped by reason, for a message: ``multiallelic=3, non_snv=1`` ("" for none)."""
    return ", ".join(f"{k}={v}" for k, v in skipped.items() if v)


class PanelStream:
    """The biallelic SNVs (with ``indels``, and indels) of ``chrom`` (or of its ``region``) of a panel with the phased haplotypes of
    ``samples`` (all by default), read block by block: memory is one block, whatever the length of
    the chromosome. ``read_panel`` gathers the blocks; the window stage writes them out window by
    window.

    Iterating yields ``(sites, haplotypes)``: a block of kept records ``(chrom, pos, id, ref,
    alt)`` (up to ``_CHUNK_RECORDS``, and ~``_CHUNK_BYTES`` of genotype text) and their
    (records, 2 * len(samples)) uint8 haplotypes (``Panel.haplotypes``). ``skipped`` counts the records left out so far by reason; it is complete once the iteration
    ends, which is an error when no biallelic SNV was found. The same checks as ``read_panel``
    (missing, unphased or haploid calls, unsorted or duplicate records) stop the iteration at the
    record that fails them.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        chrom: str,
        samples: list[str] | None = None,
        pass_only: bool = True,
        region: tuple[int, int] | None = None,
        indels: bool = False,
    ):
        self.path = str(path)
        check_readable(self.path)
        self.indels = indels
        self.all_samples = vcf_samples(self.path)
        self.chrom = resolve_contig(self.path, chrom)
        if samples is None:
            self.columns = np.arange(len(self.all_samples))
            samples = list(self.all_samples)
        else:
            pos_of = {s: i for i, s in enumerate(self.all_samples)}
            missing = [s for s in samples if s not in pos_of]
            if missing:
                raise InputError(self.path, f"samples not in the VCF: {', '.join(missing[:5])}")
            self.columns = np.array([pos_of[s] for s in samples], dtype=np.int64)
        self.samples = list(samples)
        self.pass_only = pass_only
        self.region = region
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.n_sites = 0

    def __iter__(self) -> Iterator[tuple[list[Site], np.ndarray]]:
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.n_sites = 0
        records = RecordFilter(self.path, self.pass_only, self.skipped, indels=self.indels)
        kept: list[Site] = []
        gts: list[str] = []
        block = _block_records(len(self.all_samples))
        for chrom, pos_s, vid, ref, alt, filt, gt in _panel_rows(
            self.path, self.chrom, len(self.all_samples), self.region
        ):
            pos = int(pos_s)
            if not records.keep(chrom, pos, ref, alt, filt):
                continue
            kept.append((chrom, pos, vid, ref, alt))
            gts.append(gt)
            if len(gts) == block:
                yield kept, self._haplotypes(kept, gts)
                kept, gts = [], []
        if gts:
            yield kept, self._haplotypes(kept, gts)
        if not self.n_sites:
            raise self._none_kept()

    def _none_kept(self) -> InputError:
        """The error for a chromosome, or a chunk's region, without a biallelic SNV kept."""
        skipped = skip_counts(self.skipped)
        where = where_words(self.chrom, self.region)
        if self.region is None:
            hint = "Check `chromosomes:` and the FILTER column (`panel.pass_only`)"
        else:
            hint = (
                "Chunks are planned over the panel's records when the workflow starts, without "
                "chunks that hold none: if the panel changed since, run snakemake again; else check "
                "the FILTER column (`panel.pass_only`)"
            )
        why = f"skipped: {skipped}" if skipped else "it holds no records at all"
        return InputError(self.path, f"no biallelic SNV records {where} ({why})", hint)

    def _haplotypes(self, kept: list[Site], gts: list[str]) -> np.ndarray:
        self.n_sites += len(kept)
        return _decode_gt(gts, self.path, kept, self.all_samples, self.columns)


class SitePositions:
    """Where the biallelic SNV records of one chromosome lie (those ``PanelStream`` keeps, PASS only
    with ``pass_only``), found through the index without reading the file through: for planning
    chunks when the DAG is built (``ragimpute.chunks.plan_panel_chunks``).

    ``next_at(start, end)`` is the first such position in start..end, read by a region query (one
    BGZF block where records are dense; nothing where the index has no record). ``first()`` is the
    first, ``last()`` the last (a binary search of about 30 such queries). An unindexed file is
    read through once for every chromosome's positions (``bcftools query``, no genotypes), kept in
    ``cache_dir`` keyed on the file's path, size and modification time."""

    def __init__(
        self,
        path: str | os.PathLike,
        chrom: str,
        pass_only: bool = True,
        cache_dir: str | os.PathLike | None = None,
        indels: bool = False,
    ):
        self.path = str(path)
        check_readable(self.path)
        self.pass_only = pass_only
        self.indels = indels
        self._handle = None
        self._positions: np.ndarray | None = None
        if not is_indexed(self.path):
            every = _all_site_positions(self.path, pass_only, cache_dir, indels)
            self.contig = resolve_contig(self.path, chrom, vcf_contigs(self.path) or list(every))
            self._positions = every.get(self.contig, np.zeros(0, np.int64))
            return
        self.contig = resolve_contig(self.path, chrom)
        if _is_bcf(self.path):
            self._handle = pysam.VariantFile(self.path)
        else:
            self._handle = pysam.TabixFile(self.path, parser=None, index=_index_file(self.path))

    def __enter__(self) -> SitePositions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def next_at(self, start: int, end: int | None = None) -> int | None:
        """The first kept position in ``start``..``end`` (1-based, inclusive; None: to the end)."""
        if self._positions is not None:
            i = int(np.searchsorted(self._positions, start, side="left"))
            if i < len(self._positions) and (end is None or self._positions[i] <= end):
                return int(self._positions[i])
            return None
        for pos, ref, alt, filt in self._records(start, end):
            # a region query also returns records that start before it and reach into it
            if pos >= start and skip_reason(ref, alt, filt, self.pass_only, self.indels) is None:
                return pos
        return None

    def _records(self, start: int, end: int | None) -> Iterator[tuple[int, str, str, str]]:
        handle = self._handle
        if isinstance(handle, pysam.TabixFile):
            if self.contig not in handle.contigs:
                return
            for line in handle.fetch(self.contig, start - 1, end):
                f = line.split("\t", 7)
                if len(f) < 7 or not f[1].isdigit():
                    continue  # the reader itself names a broken record
                yield int(f[1]), f[3], f[4], f[6]
            return
        if self.contig not in set(handle.index):
            return
        for r in handle.fetch(self.contig, start - 1, end):
            alt = ",".join(r.alts) if r.alts else "."
            yield r.pos, r.ref, alt, ";".join(r.filter.keys()) or "."

    def first(self) -> int | None:
        return self.next_at(1)

    def last(self) -> int | None:
        """The last kept position: the largest ``p`` with ``next_at(p)``, by bisection."""
        lo = self.first()
        if lo is None:
            return None
        if self._positions is not None:
            return int(self._positions[-1])
        hi = 1 << 31  # past any position htslib indexes: nothing at or after it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            p = self.next_at(mid)
            if p is None:
                hi = mid
            else:
                lo = p
        return lo

    def any_in(self, start: int, end: int) -> bool:
        return self.next_at(start, end) is not None


def _all_site_positions(
    path: str, pass_only: bool, cache_dir: str | os.PathLike | None, indels: bool = False
) -> dict[str, np.ndarray]:
    """Every contig's kept positions (``SitePositions``) of an unindexed file, read through once
    (only CHROM, POS, REF, ALT and FILTER) and cached in ``cache_dir``."""
    import hashlib
    import json

    st = os.stat(path)
    key = [os.path.realpath(path), st.st_size, st.st_mtime_ns, bool(pass_only)]
    # appended only when set, so that the positions cached before ``indels`` existed still serve
    key = json.dumps(key + ["indels"] * bool(indels))
    cached = None
    if cache_dir is not None:
        name = f"positions-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        cached = Path(cache_dir) / name
        if cached.exists():
            try:
                with np.load(cached) as z:
                    if str(z["key"]) == key:
                        names, bounds, pos = list(z["contigs"]), z["bounds"], z["positions"]
                        return {str(c): pos[bounds[i] : bounds[i + 1]] for i, c in enumerate(names)}
            except (OSError, ValueError, KeyError, EOFError):
                pass  # unreadable: read the panel again
    found: dict[str, list[int]] = {}
    for line in query_lines(path, "%CHROM\t%POS\t%REF\t%ALT\t%FILTER\n"):
        if not line:
            continue
        c, p, ref, alt, filt = line.split("\t")
        if skip_reason(ref, alt, filt, pass_only, indels) is None:
            found.setdefault(c, []).append(int(p))
    out = {c: np.sort(np.array(v, dtype=np.int64)) for c, v in found.items()}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        names = list(out)
        bounds = np.cumsum([0] + [len(out[c]) for c in names])
        # written when Snakemake builds the DAG: an interrupted or killed run leaves no temporary
        with atomic_path(cached, suffix=".npz") as tmp:
            np.savez(
                tmp,
                key=np.array(key),
                contigs=np.array(names, dtype=str),
                bounds=bounds,
                positions=np.concatenate([out[c] for c in names] or [np.zeros(0, np.int64)]),
            )
    return out


def _is_bcf(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(3)
    if head[:2] == b"\x1f\x8b":
        with pysam.BGZFile(path, "rb") as f:
            head = f.read(3)
    return head == b"BCF"


def _panel_rows(
    path: str, contig: str, n_samples: int, region: tuple[int, int] | None = None
) -> Iterator[list[str]]:
    """``[chrom, pos, id, ref, alt, filter, genotypes]`` per record of ``contig`` (or of its
    ``region``), from the records as VCF text lines: straight from tabix (an indexed VCF), from
    htslib (a BCF, each record formatted as text) or from the file itself (an unindexed VCF).

    An indexed file gives the records that overlap the region (as tabix and ``bcftools -r`` do), an
    unindexed one those whose POS is in it (as ``bcftools -t``).
    """
    if _is_bcf(path):
        lines = _bcf_lines(path, contig, region)
    elif is_indexed(path):
        lines = _tabix_lines(path, contig, region)
    else:
        lines = _vcf_lines(path, contig, region)
    for line in lines:
        f = line.split("\t", 9)
        if len(f) < 10:
            raise _short_record(path, f"{f[0]}:{f[1] if len(f) > 1 else '?'}", len(f), n_samples)
        if not f[1].isdigit():
            raise InputError(
                path,
                f"position {f[1]!r} is not a whole number",
                "Fix or remove that line",
                record=f"{f[0]}:{f[1]}",
            )
        # VCF bases are case-insensitive: a lowercase site is the uppercase one (kept uppercase)
        yield [f[0], f[1], f[2], f[3].upper(), f[4].upper(), f[6], _gt_only(f[8], f[9])]


def _tabix_lines(path: str, contig: str, region: tuple[int, int] | None) -> Iterator[str]:
    where = _where(contig, region)
    # index= explicitly: TabixFile looks only for .tbi by itself, and CSI indexes are common
    index = _index_file(path)
    with _reading(path, where), pysam.TabixFile(path, parser=None, index=index) as tbx:
        if contig not in tbx.contigs:
            return
        yield from (
            tbx.fetch(contig) if region is None else tbx.fetch(contig, region[0] - 1, region[1])
        )


def _bcf_lines(path: str, contig: str, region: tuple[int, int] | None) -> Iterator[str]:
    where = None
    if is_indexed(path):
        where = _where(contig, region)
    with _reading(path, where), pysam.VariantFile(path) as vf:
        if vf.index is None:
            records = (r for r in vf if r.chrom == contig and _in(r.pos, region))
        elif contig not in set(vf.index):
            return
        elif region is None:
            records = vf.fetch(contig)
        else:
            records = vf.fetch(contig, region[0] - 1, region[1])
        for record in records:
            yield str(record).rstrip("\n")


def _vcf_lines(path: str, contig: str, region: tuple[int, int] | None) -> Iterator[str]:
    start = contig + "\t"
    try:
        for line in _checked_lines(path):
            if line.startswith(start) and (region is None or _pos_in(line, region)):
                yield line
    except bgzf.BgzfDamage as e:
        raise corrupted(path, e) from e
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(
            path,
            f"the file cannot be read to the end: {e}",
            "It is damaged: fetch it again, or rewrite it from an intact source",
        ) from e


def _where(contig: str, region: tuple[int, int] | None) -> str:
    return f"chromosome {contig}" if region is None else f"region {contig}:{region[0]}-{region[1]}"


def _checked_lines(path: str) -> Iterator[str]:
    """The lines of a VCF, without their newline: a BGZF file's block by block, each checked before
    its lines are given (``bgzf.read_blocks``: a corrupted block is not read as records); others
    through Python (plain text; plain gzip, which ``check_readable`` refuses for panels)."""
    if not bgzf.is_bgzf(path):
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rt", errors="replace", newline="\n") as f:
            for line in f:
                yield line.rstrip("\n")
        return
    pending = bytearray()
    for _, data in bgzf.read_blocks(path):
        pending += data
        if len(pending) < 1 << 20:
            continue
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield from pending[: cut - 1].decode(errors="replace").split("\n")
            del pending[:cut]
    if pending:
        yield from pending.decode(errors="replace").removesuffix("\n").split("\n")


def _in(pos: int, region: tuple[int, int] | None) -> bool:
    return region is None or region[0] <= pos <= region[1]


def _pos_in(line: str, region: tuple[int, int]) -> bool:
    """Whether a text record's POS is in ``region`` (a bad POS: yes, for the reader to refuse)."""
    pos = line.split("\t", 2)[1:2]
    return not (pos and pos[0].isdigit()) or _in(int(pos[0]), region)


_AFTER_GT = re.compile(r":[^\t]*")


def _gt_only(fmt: str, text: str) -> str:
    """The GT of each sample column of a record with FORMAT ``fmt``, tab-separated, as bcftools'
    ``%GT`` prints it (``.`` where a record or a sample has none)."""
    if fmt == "GT":
        return text
    keys = fmt.split(":")
    if keys[0] == "GT":
        return _AFTER_GT.sub("", text)
    if "GT" not in keys:
        return "\t".join(["."] * (text.count("\t") + 1))
    k = keys.index("GT")
    parts = (f.split(":") for f in text.split("\t"))
    return "\t".join(p[k] if len(p) > k else "." for p in parts)


def _short_record(path: str, where: str, n_columns: int, n_samples: int) -> InputError:
    return InputError(
        path,
        f"a record has {n_columns} columns, the header names {n_samples} samples "
        f"(so {9 + n_samples} are needed)",
        "The file was probably cut short (a truncated download or copy) or edited by hand: "
        "fetch it again or fix that line",
        record=where,
    )


def is_snv(ref: str, alt: str) -> bool:
    """Whether REF/ALT (uppercase) are one base each, A, C, G or T."""
    return len(ref) == 1 and len(alt) == 1 and ref in _BASES and alt in _BASES


def snv_sites(sites: pd.DataFrame) -> np.ndarray:
    """Which rows of a site table (``ref``, ``alt`` uppercase) are SNVs (``is_snv``): with
    ``panel.indels`` the others are the panel's indels, imputed but never typed. Read in every
    imputation job, so by a hashed lookup of whole columns (a quarter of a row-by-row test's time)."""
    bases = list(_BASES)  # one base each: membership is also the length test
    return (sites["ref"].astype(str).isin(bases) & sites["alt"].astype(str).isin(bases)).to_numpy()


def is_indel(ref: str, alt: str) -> bool:
    """Whether REF/ALT (uppercase) are an indel: lengths differ, every base A, C, G, T or N (not a
    symbolic ``<DEL>``, a breakend or an MNP, which no imputation tool imputes as a site)."""
    return (
        len(ref) != len(alt)
        and bool(ref)
        and bool(alt)
        and set(ref) <= _INDEL_BASES
        and set(alt) <= _INDEL_BASES
    )


def skip_reason(ref: str, alt: str, filt: str, pass_only: bool, indels: bool = False) -> str | None:
    """Why a record is not a biallelic SNV (with ``indels``, or indel) the panel reader keeps (a
    ``SKIP_REASONS`` entry), or None when it is one. Bases are case-insensitive (VCF 4.3, section
    1.6.1): ``a``/``g`` is an SNV."""
    ref, alt = ref.upper(), alt.upper()
    if "," in alt:
        return "multiallelic"
    if alt in (".", "*", ""):
        return "no_alt"
    if not is_snv(ref, alt) and not (indels and is_indel(ref, alt)):
        return "non_snv"
    if pass_only and filt not in ("PASS", "."):
        return "filtered"
    return None


class RecordFilter:
    """Which records are biallelic SNVs (with ``indels``, or indels), in order: the rest is counted by
    reason, disorder is an error.

    Multi-allelic, ALT-less, non-SNV and (with ``pass_only``) filtered records are skipped and counted in
    ``skipped``, as Beagle and Minimac4 skip them; unsorted records and two SNVs at one position are errors
    naming the record, since the order of the file would otherwise decide the answer.
    """

    def __init__(
        self,
        path: str,
        pass_only: bool,
        skipped: dict[str, int],
        same_position: bool = False,
        indels: bool = False,
    ):
        self.path = path
        self.pass_only = pass_only
        self.skipped = skipped
        # a target's second SNV at one position is an error only where both match the reference
        # (``targets.read_target``): arrays have probes of other alleles at a reference site
        self.same_position = same_position
        self.indels = indels
        self.last_pos = 0
        self.last_kept = -1
        self.kept_here: set[tuple[str, str]] = set()  # the alleles kept at ``last_kept``

    def keep(self, chrom: str, pos: int, ref: str, alt: str, filt: str = ".") -> bool:
        if pos < self.last_pos:
            raise InputError(
                self.path,
                f"records are not sorted: position {pos} comes after {self.last_pos}",
                f"Sort it: `bcftools sort -Oz -o sorted.vcf.gz {self.path}` (then `tabix -p vcf "
                "sorted.vcf.gz`) and give sorted.vcf.gz",
                record=f"{chrom}:{pos}",
            )
        self.last_pos = pos
        reason = skip_reason(ref, alt, filt, self.pass_only, self.indels)
        if reason:
            self.skipped[reason] += 1
            return False
        alleles = (ref.upper(), alt.upper())
        if pos != self.last_kept:
            self.kept_here = set()
        elif not self.same_position and self._clashes(alleles):
            what = "two biallelic SNV" if is_snv(*alleles) else f"two {'/'.join(alleles)}"
            raise InputError(
                self.path,
                f"{what} records at position {pos}",
                "Join split multi-allelics (`bcftools norm -m+any`) or drop duplicates "
                "(`bcftools norm -d all`)",
                record=f"{chrom}:{pos}",
            )
        self.last_kept = pos
        self.kept_here.add(alleles)
        return True

    def _clashes(self, alleles: tuple[str, str]) -> bool:
        """Whether a record at the position of the last one kept is one too many. Real panels have an
        SNV and indels at one position (a split multi-allelic site), which Beagle and Minimac4 impute
        as sites of their own; two SNVs there are still refused, since a target's SNV is matched to
        the reference's one SNV at its position, and a repeated record always is."""
        if not self.indels:
            return True
        snv = is_snv(*alleles)
        return alleles in self.kept_here or (snv and any(is_snv(*k) for k in self.kept_here))


# -- the one GT decoder -----------------------------------------------------------------------------


@dataclass
class Genotypes:
    """The GT fields of a block of records, decoded (``decode_genotypes``)."""

    alleles: np.ndarray  # (records, 2 * samples) int8: 0 REF, 1 ALT, -1 missing or not a call
    unphased: np.ndarray  # (records, samples) bool: written with '/'
    invalid: np.ndarray  # (records, samples) bool: not a diploid call of '0', '1' and '.' alleles
    miscounted: np.ndarray  # (records,) bool: the record has more or fewer fields than samples
    clean: bool  # every call is phased, 0 or 1: nothing missing, unphased or invalid

    @property
    def called(self) -> np.ndarray:
        """(records, samples) bool: both alleles known."""
        return (self.alleles[:, 0::2] >= 0) & (self.alleles[:, 1::2] >= 0)

    def problem_rows(self, missing: bool = True, unphased: bool = True) -> np.ndarray:
        """Records with a call that is not a diploid 0/1 call or a field too many or too few, and
        (as asked) one with a missing allele or an unphased call, in order."""
        bad = self.miscounted | self.invalid.any(axis=1)
        if missing:
            bad |= (self.alleles < 0).any(axis=1)
        if unphased:
            bad |= self.unphased.any(axis=1)
        return np.flatnonzero(bad)


# Four bytes per genotype, "0|1\t", read as one little-endian uint32: masking the lowest bit of both
# allele characters ('0' = 0x30, '1' = 0x31) leaves this constant exactly for the four phased calls.
_GT_MASK = np.uint32(0xFFFEFFFE)
_GT_OK = np.uint32(0x09307C30)  # '0', '|', '0', '\t'
_ALLELE = {"0": 0, "1": 1, ".": -1}
_ALLELE_BYTES = np.frombuffer(b"01.", dtype=np.uint8)


def decode_genotypes(gts: list[str], n_samples: int, trailing_tab: bool = False) -> Genotypes:
    """Each record's GT fields, tab-separated (``0|1\t1/1\t.|.``; with ``trailing_tab`` each field
    ends with a tab, as bcftools' ``[%GT\t]`` prints them) -> alleles and what is wrong with them.

    The one decoder of the package: panels (which must be phased and complete), targets (which may
    miss calls or be unphased) and truth VCFs (scored by ALT count) read their calls through it and
    decide for themselves what is an error. Phased 0/1 calls are checked and decoded four bytes at a
    time as one uint32; other records one field at a time. An unphased call with one allele missing
    (``./1``) has no phase to keep: both of its alleles read as missing.
    """
    k, n = len(gts), n_samples
    if k == 0 or n == 0:
        return _checked(_decode_slowly(gts, n, trailing_tab, np.arange(k)))
    width = 4 * n - (0 if trailing_tab else 1)
    lengths = np.fromiter(map(len, gts), dtype=np.int64, count=k)
    if (lengths == width).all():
        text = "".join(gts) if trailing_tab else "\t".join(gts) + "\t"
        if text.isascii():
            words = np.frombuffer(text.encode("ascii"), dtype="<u4").reshape(k, n)
            if ((words & _GT_MASK) == _GT_OK).all():
                # bytes 0 and 2 of each word are the two alleles; their lowest bit is the allele
                alleles = words.view(np.uint8).reshape(k, n, 4)[:, :, 0:3:2] & 1
                alleles = np.ascontiguousarray(alleles).reshape(k, 2 * n).view(np.int8)
                none = np.zeros((k, n), dtype=bool)
                return Genotypes(alleles, none, none.copy(), np.zeros(k, dtype=bool), clean=True)
    return _checked(_decode_bytes(gts, n, trailing_tab, lengths == width))


def _checked(g: Genotypes) -> Genotypes:
    g.clean = not len(g.problem_rows())
    return g


def _decode_bytes(
    gts: list[str], n: int, trailing_tab: bool, right_length: np.ndarray
) -> Genotypes:
    """Records of the right length, field by field as bytes (``a``, separator, ``b``, tab); the rest,
    and records with a field that is not a diploid call, go the slow way."""
    fast = np.flatnonzero(right_length & np.fromiter(map(str.isascii, gts), bool, len(gts)))
    if not len(fast):
        return _decode_slowly(gts, n, trailing_tab, np.arange(len(gts)))
    sep = "" if trailing_tab else "\t"
    text = sep.join(gts[i] for i in fast) + sep
    b = np.frombuffer(text.encode("ascii"), dtype=np.uint8).reshape(len(fast), n, 4)
    a0, slash, a1, tab = b[:, :, 0], b[:, :, 1] == ord("/"), b[:, :, 2], b[:, :, 3]
    ok = np.isin(a0, _ALLELE_BYTES) & np.isin(a1, _ALLELE_BYTES) & (tab == ord("\t"))
    ok &= slash | (b[:, :, 1] == ord("|"))
    good = ok.all(axis=1)
    slow = np.setdiff1d(np.arange(len(gts)), fast[good])
    out = _decode_slowly(gts, n, trailing_tab, slow)
    x0 = np.where(a0 == ord("."), -1, a0.astype(np.int8) - ord("0")).astype(np.int8)[good]
    x1 = np.where(a1 == ord("."), -1, a1.astype(np.int8) - ord("0")).astype(np.int8)[good]
    un = slash[good]
    half = un & ((x0 < 0) != (x1 < 0))
    x0[half] = -1
    x1[half] = -1
    rows = fast[good]
    out.alleles[rows, 0::2] = x0
    out.alleles[rows, 1::2] = x1
    out.unphased[rows] = un
    return out


def split_fields(line: str, trailing_tab: bool = False) -> list[str]:
    """The GT fields of one record's line (``trailing_tab``: each field ends with a tab)."""
    return (line[:-1] if trailing_tab and line.endswith("\t") else line).split("\t")


def _decode_slowly(gts: list[str], n: int, trailing_tab: bool, rows: np.ndarray) -> Genotypes:
    """A Genotypes for every record, with the records ``rows`` decoded field by field (the others
    are left missing, for the caller to fill)."""
    k = len(gts)
    out = Genotypes(
        np.full((k, 2 * n), -1, dtype=np.int8),
        np.zeros((k, n), dtype=bool),
        np.zeros((k, n), dtype=bool),
        np.zeros(k, dtype=bool),
        clean=False,
    )
    for i in rows:
        fields = split_fields(gts[i], trailing_tab)
        out.miscounted[i] = len(fields) != n
        for j, gt in enumerate(fields[:n]):
            if gt == ".":
                continue
            sep = "|" if "|" in gt else "/"
            parts = gt.split(sep)
            if len(parts) != 2 or parts[0] not in _ALLELE or parts[1] not in _ALLELE:
                out.invalid[i, j] = True
                continue
            x0, x1 = _ALLELE[parts[0]], _ALLELE[parts[1]]
            if sep == "/":
                out.unphased[i, j] = True
                if (x0 < 0) != (x1 < 0):
                    x0 = x1 = -1
            out.alleles[i, 2 * j], out.alleles[i, 2 * j + 1] = x0, x1
    return out


def _decode_gt(
    gts: list[str], path: str, kept: list[tuple], all_samples: list[str], columns: np.ndarray
) -> np.ndarray:
    """Genotype strings ``0|1\t1|0...`` of every sample -> (n_sites, 2 * len(columns)) uint8 haplotypes
    of the samples in ``columns``, or an InputError naming the first bad genotype."""
    g = decode_genotypes(gts, len(all_samples))
    if not g.clean:
        bad = g.problem_rows()
        if len(bad):
            i = int(bad[0])
            _raise_bad_genotype(path, kept[i], gts[i], all_samples)
    haplotypes = g.alleles.view(np.uint8)
    if np.array_equal(columns, np.arange(len(all_samples))):
        return haplotypes
    # a sample's two alleles as one uint16: np.take is far faster than haplotypes[:, cols] here
    return np.take(haplotypes.view(np.uint16), columns, axis=1).view(np.uint8)


def _raise_bad_genotype(path: str, rec: tuple, gt_line: str, all_samples: list[str]) -> None:
    """Look at one record's genotypes one by one (slow path) to name the sample and the problem."""
    where = f"{rec[0]}:{rec[1]}"
    fields = gt_line.split("\t")
    if len(fields) != len(all_samples):
        raise _short_record(path, where, 9 + len(fields), len(all_samples))
    for sample, gt in zip(all_samples, fields, strict=True):
        if "." in gt:
            raise InputError(
                path,
                f"missing genotype {gt!r} for sample {sample}",
                "A reference panel must be complete: impute it first (Beagle fills missing genotypes "
                "while phasing), or drop the sample or site (`bcftools view -s ^SAMPLE` / `-t ^CHR:POS`)",
                record=where,
            )
        if "/" in gt:
            raise InputError(
                path,
                f"unphased genotype {gt!r} for sample {sample}",
                "Phase the panel first (Beagle 5.4, SHAPEIT5 or Eagle2)",
                record=where,
            )
        if "|" not in gt:
            raise InputError(
                path,
                f"haploid genotype {gt!r} for sample {sample}",
                "Only diploid chromosomes are supported (leave out chrX/chrY/chrM)",
                record=where,
            )
        if any(x not in ("0", "1") for x in gt.split("|")):
            raise InputError(path, f"genotype {gt!r} for sample {sample} is not 0/1", record=where)
    raise InputError(path, "malformed genotype field", record=where)
