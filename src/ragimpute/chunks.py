"""Genomic chunks: a chromosome cut into overlapping regions, each processed as a unit of its own.

With ``chunks.length`` set, every stage from windowing to evaluation runs per chunk (its own Snakemake
and SLURM jobs), and the per-chromosome VCF is ligated from the chunks' VCFs: each site is taken from
the one chunk whose *core* holds it. Consecutive chunks overlap by ``chunks.overlap`` and their cores
meet in the middle of the overlap, so every site is imputed at least ``overlap / 2`` away from the
edge of the chunk it is taken from (the copying model has context on both sides), as imputation
servers ligate their chunks.

Chunks are planned over the span of the panel's records (its first to its last biallelic SNV of
the chromosome: ``plan_panel_chunks``), not over the ``##contig`` length, and a chunk whose core would
hold no record (a centromere, the empty short arm of an acrocentric chromosome, any gap longer than a
chunk) is not made: the cores of the chunks either side of it meet in the gap instead, so that the
cores still tile every record, each exactly once.

Lengths are in cM (``chunks.unit: cm``, positions converted with the genetic map, 1 cM/Mb without
one) or in bp. A unit is named ``<chrom>`` when the chromosome is not chunked, ``<chrom>.c<NNN>``
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError
from .genmap import GeneticMap

UNIT_SEPARATOR = ".c"


@dataclass(frozen=True)
class Unit:
    """A region of a chromosome processed as one unit. Positions are 1-based and inclusive;
    sites with ``core_start <= pos <= core_end`` are this unit's in the ligated output. A core lies
    within its region, except where a chunk was left out in a gap between two chunks that do not
    overlap: the core of the chunk after the gap then starts where the one before ends, over the
    gap, which holds no record."""

    chrom: str
    name: str
    start: int
    end: int
    core_start: int
    core_end: int

    @property
    def region(self) -> str:
        return f"{self.chrom}:{self.start}-{self.end}"

    def to_dict(self) -> dict:
        return asdict(self)


def unit_name(chrom: str, index: int | None) -> str:
    return chrom if index is None else f"{chrom}{UNIT_SEPARATOR}{index:03d}"


def chrom_of(unit: str) -> str:
    """The chromosome of a unit name (``20.c003`` -> ``20``; ``20`` -> ``20``)."""
    head, sep, tail = unit.rpartition(UNIT_SEPARATOR)
    return head if sep and tail.isdigit() else unit


def plan_chunks(
    chrom: str,
    first: int,
    last: int,
    length: float,
    overlap: float,
    unit: str = "cm",
    genetic_map: GeneticMap | None = None,
    has_record: Callable[[int, int], bool] | None = None,
) -> list[Unit]:
    """Chunks covering ``first``..``last`` (bp): ``length`` long, consecutive ones sharing
    ``overlap`` (in cM or bp, as ``unit`` says). ``length`` 0 (or a chromosome shorter than one
    chunk) gives one unit named as the chromosome.

    ``has_record(a, b)``: whether a record lies in a..b. A chunk whose core holds none is left out
    (``_leave_out_empty``), its neighbours' cores joined over it; the rest are numbered in order."""
    if length <= 0 or last - first < 1:
        return [Unit(chrom, chrom, first, last, first, last)]
    if not 0 <= overlap < length:
        raise InputError(
            "chunks",
            f"need 0 <= overlap < length, got length {length}, overlap {overlap}",
            "Fix chunks.length / chunks.overlap in the config",
        )
    if unit not in ("cm", "bp"):
        raise InputError("chunks.unit", f"must be cm or bp, got {unit!r}", "Fix chunks.unit")
    to_x, to_bp = _scale(unit, genetic_map)
    x0, x1 = float(to_x(first)), float(to_x(last))
    stride = length - overlap
    starts = [x0]
    while starts[-1] + length < x1:
        starts.append(starts[-1] + stride)
    if len(starts) == 1:
        return [Unit(chrom, chrom, first, last, first, last)]
    ends = [min(s + length, x1) for s in starts]
    bp_start = [first] + [int(np.ceil(to_bp(s))) for s in starts[1:]]
    bp_end = [int(np.floor(to_bp(e))) for e in ends[:-1]] + [last]
    # cores meet in the middle of each overlap
    mids = [(bp_start[i + 1] + bp_end[i]) // 2 for i in range(len(starts) - 1)]
    core_start = [first] + [m + 1 for m in mids]
    core_end = mids + [last]
    units = [
        Unit(chrom, unit_name(chrom, i), bp_start[i], bp_end[i], core_start[i], core_end[i])
        for i in range(len(starts))
    ]
    if has_record is not None:
        units = _leave_out_empty(units, has_record)
    return units


def _leave_out_empty(units: list[Unit], has_record: Callable[[int, int], bool]) -> list[Unit]:
    """``units`` without those whose core holds no record, renumbered. The cores tile the span, so
    every record lies in a kept chunk's core, and records between two kept neighbours lie at or
    before the first one's old core end or at or after the second's old core start: joining their
    cores in the middle of their overlap (or, when they no longer overlap, at the end of the first,
    the gap between them holding no record) loses none and takes none twice. Cores only grow, so
    no kept core becomes empty. The first and last chunks hold the span's first and last records."""
    kept = [u for u in units if has_record(u.core_start, u.core_end)]
    if len(kept) == len(units):
        return units
    chrom = units[0].chrom
    if len(kept) <= 1:  # not from a span whose ends are records; whole, as one unit
        first, last = units[0], units[-1]
        return [Unit(chrom, chrom, first.start, last.end, first.core_start, last.core_end)]
    joins = []
    for a, b in zip(kept[:-1], kept[1:], strict=True):
        if a.core_end + 1 == b.core_start:
            joins.append(a.core_end)  # neighbours in the plan: as planned
        elif b.start <= a.end:
            joins.append((b.start + a.end) // 2)
        else:
            joins.append(a.end)
    core_start = [kept[0].core_start] + [j + 1 for j in joins]
    core_end = joins + [kept[-1].core_end]
    return [
        Unit(chrom, unit_name(chrom, i), u.start, u.end, core_start[i], core_end[i])
        for i, u in enumerate(kept)
    ]


def plan_panel_chunks(
    panel_vcf: str,
    chrom: str,
    length: float,
    overlap: float,
    unit: str = "cm",
    genetic_map: GeneticMap | None = None,
    pass_only: bool = True,
    cache_dir: str | None = None,
    indels: bool = False,
) -> list[Unit]:
    """``plan_chunks`` over the span of ``chrom``'s biallelic SNV (with ``indels``, and indel)
    records in ``panel_vcf`` (the records the window stage keeps), leaving out chunks in gaps. Read through the index
    (``SitePositions``: a few milliseconds), so it runs whenever the DAG is built; a chromosome
    without such records is one unit, which the window stage then reports."""
    from .vcf_io import SitePositions

    with SitePositions(panel_vcf, chrom, pass_only, cache_dir, indels) as positions:
        first = positions.first()
        if first is None:
            return [Unit(chrom, chrom, 1, 1, 1, 1)]
        last = positions.last()
        return plan_chunks(
            chrom, first, last, length, overlap, unit, genetic_map, has_record=positions.any_in
        )


def _scale(unit: str, genetic_map: GeneticMap | None):
    if unit == "bp":
        return (lambda bp: float(bp)), (lambda x: float(x))
    if genetic_map is None:
        return (lambda bp: bp * 1e-6), (lambda cm: cm * 1e6)
    g = genetic_map

    def to_bp(cm: float) -> float:
        # the map's inverse; cM is non-decreasing, so flat stretches map to their first bp
        lo = int(np.searchsorted(g.cm, cm, side="left"))
        if lo == 0:
            rate = (g.cm[1] - g.cm[0]) / (g.bp[1] - g.bp[0]) if len(g.bp) > 1 else 1e-6
            return g.bp[0] + (cm - g.cm[0]) / max(rate, 1e-12)
        if lo >= len(g.bp):
            rate = (g.cm[-1] - g.cm[-2]) / (g.bp[-1] - g.bp[-2]) if len(g.bp) > 1 else 1e-6
            return g.bp[-1] + (cm - g.cm[-1]) / max(rate, 1e-12)
        c0, c1 = g.cm[lo - 1], g.cm[lo]
        b0, b1 = g.bp[lo - 1], g.bp[lo]
        return b0 + (cm - c0) / (c1 - c0) * (b1 - b0) if c1 > c0 else b0

    return (lambda bp: float(g.cm_at(np.array([bp]))[0])), to_bp
