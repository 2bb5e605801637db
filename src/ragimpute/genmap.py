"""Genetic maps: base-pair positions to centimorgans, as Beagle's ``map=`` reads them.

Two formats are read, told apart by their columns:

- PLINK ``.map`` (Beagle's ``map=``): whitespace-separated ``chrom id cM bp``, no header;
- HapMap (``genetic_map_*.txt``): a header, then ``Chromosome Position(bp) Rate(cM/Mb) Map(cM)``.
  Files with only ``Position Rate Map`` columns (one chromosome per file) are read too.

Positions between map points are interpolated linearly; positions before the first or after the last
point are extrapolated linearly from the first two or the last two points, as Beagle does. Without a
map, 1 cM = 1 Mb (Beagle's default). ``chr20`` and ``20`` name the same chromosome.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .logs import log
from .vcf_io import normalize_chrom

CM_PER_BP_DEFAULT = 1e-6


@dataclass
class GeneticMap:
    """Map points of one chromosome: strictly increasing bp, non-decreasing cM."""

    path: str
    chrom: str
    bp: np.ndarray  # (n,) int64
    cm: np.ndarray  # (n,) float64

    def cm_at(self, pos: np.ndarray) -> np.ndarray:
        """cM at the positions ``pos`` (bp): linear between map points, extrapolated outside."""
        pos = np.asarray(pos, dtype=np.float64)
        bp, cm = self.bp.astype(np.float64), self.cm
        if len(bp) == 1:
            return cm[0] + (pos - bp[0]) * CM_PER_BP_DEFAULT
        out = np.interp(pos, bp, cm)
        lo, hi = pos < bp[0], pos > bp[-1]
        out[lo] = cm[0] + (pos[lo] - bp[0]) * (cm[1] - cm[0]) / (bp[1] - bp[0])
        out[hi] = cm[-1] + (pos[hi] - bp[-1]) * (cm[-1] - cm[-2]) / (bp[-1] - bp[-2])
        return out


# A chromosome-wide average outside this range (cM/Mb) is warned about: human chromosomes average
# about 0.5-3; a map in Morgans gives ~0.01
MAP_RATES_CM_PER_MB = (0.1, 20.0)


def _open_text(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path)


def _number(text: str, path: str, line_no: int, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(
            path,
            f"line {line_no}: {what} {text!r} is not a number",
            "Give a PLINK .map (chrom id cM bp) or a HapMap map (Chromosome Position Rate Map)",
        ) from None
    if not np.isfinite(v):
        raise InputError(path, f"line {line_no}: {what} {text!r} is not finite", "Fix the map")
    return v


def _first_row_format(fields: list[str]) -> tuple[str, bool]:
    """The map's format from its first row, and whether that row is a header ("Chromosome
    Position(bp) Rate(cM/Mb) Map(cM)" or "Position Rate Map")."""
    try:
        float(fields[-1])
    except ValueError:
        return ("hapmap4" if len(fields) >= 4 else "hapmap3"), True
    if len(fields) == 3:
        return "hapmap3", False
    return ("hapmap4" if _is_hapmap_row(fields) else "plink"), False


def map_names_chromosomes(path: str | os.PathLike) -> bool:
    """Whether the map says which chromosome each point is on: False for one chromosome's HapMap
    map (``Position Rate Map``), whose points ``read_genetic_map`` gives to whatever chromosome it
    is asked for. Reads the first row only."""
    with _open_text(str(path)) as f:
        for line in f:
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                return _first_row_format(fields)[0] != "hapmap3"
    return True


def read_genetic_map(path: str | os.PathLike, chrom: str) -> GeneticMap:
    """The points of ``chrom`` in a PLINK or HapMap genetic map (plain or gzipped)."""
    path = str(path)
    if not os.path.exists(path):
        raise InputError(path, "the genetic map does not exist", "Check panel.genetic_map")
    want = normalize_chrom(chrom)
    bp: list[float] = []
    cm: list[float] = []
    fmt = None
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fmt is None:
                fmt, header = _first_row_format(fields)
                if header:
                    continue
            if fmt == "plink":
                if len(fields) != 4:
                    raise InputError(
                        path, f"line {line_no}: {len(fields)} columns, a PLINK map has 4", "Fix it"
                    )
                c, pos, gen = fields[0], fields[3], fields[2]
            elif fmt == "hapmap4":
                if len(fields) < 4:
                    raise InputError(
                        path,
                        f"line {line_no}: {len(fields)} columns, a HapMap map has 4",
                        "Fix it",
                    )
                c, pos, gen = fields[0], fields[1], fields[3]
            else:
                c, pos, gen = chrom, fields[0], fields[2]
            if normalize_chrom(c) != want:
                continue
            bp.append(_number(pos, path, line_no, "position"))
            cm.append(_number(gen, path, line_no, "genetic position"))
    if not bp:
        raise InputError(
            path,
            f"no map points for chromosome {chrom}",
            "Give a map of this chromosome (or leave panel.genetic_map empty for 1 cM/Mb): the "
            "map is one file for every chromosome of the run, and Beagle's per-chromosome PLINK "
            "maps join into one with `cat plink.chr*.GRCh38.map > plink.GRCh38.map`",
        )
    b = np.asarray(bp, dtype=np.int64)
    g = np.asarray(cm, dtype=np.float64)
    if (np.diff(b) <= 0).any():
        i = int(np.flatnonzero(np.diff(b) <= 0)[0]) + 1
        raise InputError(
            path,
            f"chromosome {chrom}: positions not increasing at {b[i]} (after {b[i - 1]})",
            "Sort the map by position and remove duplicate positions (the columns are chrom, id, "
            "cM, bp in a PLINK .map; Chromosome, Position, Rate, Map in a HapMap map)",
        )
    if (np.diff(g) < 0).any():
        i = int(np.flatnonzero(np.diff(g) < 0)[0]) + 1
        raise InputError(
            path,
            f"chromosome {chrom}: genetic position decreases at {b[i]} bp ({g[i]} < {g[i - 1]} cM)",
            "A genetic map's cM must not decrease along the chromosome",
        )
    span_mb = (b[-1] - b[0]) / 1e6
    rate = (g[-1] - g[0]) / span_mb if span_mb > 0 else float("nan")
    if span_mb >= 1 and not MAP_RATES_CM_PER_MB[0] <= rate <= MAP_RATES_CM_PER_MB[1]:
        log.warning(
            "%s: chromosome %s averages %.3g cM/Mb over %.1f Mb, far from the ~0.5-3 cM/Mb of human "
            "maps: check that the map is in cM (a map in Morgans reads 100 times too short) and "
            "that its columns are in the order its format expects",
            path, chrom, rate, span_mb,
        )  # fmt: skip
    return GeneticMap(path, chrom, b, g)


def _is_hapmap_row(fields: list[str]) -> bool:
    """A 4-column data row is HapMap when its 2nd column is an integer position and its 3rd a rate
    with the 4th not an integer; PLINK's 2nd column is a variant id, usually not a number."""
    try:
        float(fields[1])
    except ValueError:
        return False
    # PLINK: id cM bp -> the 4th column is an integer bp; HapMap: the 4th is cM (usually fractional)
    try:
        int(fields[3])
        return False
    except ValueError:
        return True


def site_cm(pos: np.ndarray, genetic_map: GeneticMap | None) -> np.ndarray:
    """cM of every site: from the map, or 1 cM/Mb without one."""
    pos = np.asarray(pos)
    if genetic_map is None:
        return pos.astype(np.float64) * CM_PER_BP_DEFAULT
    return genetic_map.cm_at(pos)


def write_plink_map(path: str | os.PathLike, chrom: str, bp: np.ndarray, cm: np.ndarray) -> None:
    """A PLINK ``.map`` (chrom id cM bp), Beagle's ``map=`` format."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for b, g in zip(np.asarray(bp), np.asarray(cm), strict=True):
            f.write(f"{chrom}\t.\t{g:.8f}\t{int(b)}\n")


def write_site_map(windows_dir: str | os.PathLike, out: str | os.PathLike) -> dict:
    """The cM of every reference site (the windows' ``cm`` column: the map interpolated and
    extrapolated as above) as a PLINK ``.map`` with the reference's chromosome name: what Beagle's
    ``map=``, Minimac4's ``--map`` and the phaser read, so that every method gets the same cM at
    every site (no tool interpolates or extrapolates on its own; Minimac4 would extrapolate before
    the first map point otherwise than Beagle)."""
    from .windows import load_sites

    sites = load_sites(windows_dir)
    chrom = str(sites["chrom"].iloc[0])
    # one line per position: an SNV and an indel there (``panel.indels``) have the same cM, and a
    # map's repeated position is one the tools need not accept
    _, first = np.unique(sites["pos"].to_numpy(), return_index=True)
    write_plink_map(out, chrom, sites["pos"].to_numpy()[first], sites["cm"].to_numpy()[first])
    cm = sites["cm"].to_numpy()
    return {"chrom": chrom, "sites": len(sites), "cm_first": float(cm[0]), "cm_last": float(cm[-1])}
