"""Evaluation against true genotypes, as the field measures imputation, the same code for every method.

Scored sites: in the reference (the windowed panel sites), in the truth VCF, and NOT typed in the target;
scored pairs: (site, sample) with a true genotype. Per MAF bin (MAF of the imputation reference: the
train split, or the whole panel for one's own targets; bins [0, 0.5%], (0.5%, 1%], (1%, 5%], (5%, 50%]):
- aggregate dosage r²: squared Pearson correlation of all pairs' dosage (DS) and true ALT count, pooled
  over the bin's sites (not a mean of per-site r²);
- genotype concordance: best-guess genotype (GT, as an ALT count) equals the true one;
- non-reference concordance: the same among pairs where the truth or the call is not 0/0
  (GATK's NRC: 1 - discordant / all but the concordant 0/0);
- ALT-allele F1 over (site, sample) pairs on ALT counts: TP = min(called, true), FP = excess called,
  FN = excess true (phase-free, so tools that re-phase are scored alike);
- INFO R2 (ours, Minimac4's R2, Beagle's DR2) against the true per-site r² (Pearson across sites with
  a defined true r², and a calibration table by INFO R2 bin).
Per-site sums are written so that chromosomes and methods pool exactly (``compare``).
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from numba import njit

from . import __version__
from .atomic import (
    atomic_path,
    read_artifact_json,
    read_parquet_df,
    reading,
    write_json,
    write_tsv,
)
from .errors import InputError, UnreadableArtifactError, rebuild_hint
from .logs import log
from .metrics import BIN_LABELS, MAF_BINS, maf_bin, r2_from_sums  # noqa: F401 (re-exported)
from .plots import pyplot, save_png
from .vcf_io import (
    check_readable,
    chrom_selection,
    decode_genotypes,
    is_indel,
    is_indexed,
    open_vcf,
    query_lines,
    short_record_error,
    snv_sites,
    upper_alleles,
    vcf_records_sites,
)
from .windows import reference_counts

ALL = "all"
INFO_R2_EDGES = np.round(np.linspace(0, 1, 11), 2)
SUMS = ("n", "sx", "sy", "sxx", "syy", "sxy")
COUNTS = ("n_gt", "n_conc", "n_nonref", "n_nonref_conc", "tp", "fp", "fn")


# -- reading imputed and true genotypes ------------------------------------------------------------


def _chrom_lines(
    path: str,
    fmt: str,
    chrom: str,
    have: list[str],
    region: tuple[int, int] | None = None,
    samples: list[str] | None = None,
    allow_empty: bool = False,
) -> tuple[list[str], int, list[int]]:
    """``bcftools query -f fmt`` lines of the records of ``chrom`` (either naming) in ``path``, or of
    its ``region`` (first, last bp); none is an error unless ``allow_empty``. ``have``: the file's
    samples; with ``samples`` only theirs are decoded (``-s``, in the file's order; all when a name
    holds a comma, which ``-s`` cannot list). Also: the samples per line, and the columns of
    ``samples`` (of every sample without) among them."""
    listed = None
    if samples is not None and not any("," in x for x in samples):
        want = set(samples)
        listed = [x for x in have if x in want]  # the file's order, whichever order bcftools keeps
    read = have if listed is None else listed
    at = {x: i for i, x in enumerate(read)}
    cols = list(range(len(read))) if samples is None else [at[x] for x in samples]
    contig = chrom_selection(path, chrom)
    lines = (
        []
        if contig is None
        else [ln for ln in query_lines(path, fmt, contig, region, listed) if ln]
    )
    if not lines and not allow_empty:
        raise _no_records(path, chrom)
    return lines, len(read), cols


def _no_records(path: str, chrom: str) -> InputError:
    return InputError(
        path,
        f"no records on chromosome {chrom}",
        "Evaluate the imputed file against a truth VCF for the same chromosome",
    )


def _header_samples(path: str | os.PathLike) -> list[str]:
    check_readable(path)
    with open_vcf(path) as vf:
        return list(vf.header.samples)


def alt_counts(gts: list[str], n: int) -> np.ndarray:
    """GT strings (``0|1``, ``1/1``, ``.|.``) per line, tab-terminated -> (n_lines, n) float ALT counts,
    NaN where missing or not a diploid 0/1 call. Phase is ignored: scores compare genotypes."""
    g = decode_genotypes(gts, n, trailing_tab=True)
    counts = g.alleles[:, 0::2] + g.alleles[:, 1::2].astype(np.float64)
    return np.where(g.called, counts, np.nan)


@njit(cache=True)
def _parse_decimals(buf: np.ndarray, out: np.ndarray) -> int:
    """Plain decimals (``0.25``, ``-1``, ``2``) separated by tabs or commas in ``buf`` (bytes) into
    ``out``; ``.`` reads as NaN. The number of values, or -1 at anything else (an exponent, ``nan``,
    an empty field, more values than ``out`` holds): the caller then parses the slow way. A value is
    its digits as an integer divided by a power of ten: what strtod gives, to the bit."""
    n, i, size = 0, 0, len(buf)
    while i <= size:
        if n == len(out):
            return -1
        neg = i < size and buf[i] == 45  # '-'
        if neg:
            i += 1
        mant, n_int, n_frac = 0, 0, 0
        while i < size and 48 <= buf[i] <= 57:
            mant = mant * 10 + (buf[i] - 48)
            n_int += 1
            i += 1
        if i < size and buf[i] == 46:  # '.'
            i += 1
            while i < size and 48 <= buf[i] <= 57:
                mant = mant * 10 + (buf[i] - 48)
                n_frac += 1
                i += 1
        if i < size and buf[i] != 9 and buf[i] != 44:  # not a tab or comma
            return -1
        if n_int + n_frac == 0:
            if neg or i == 0 or buf[i - 1] != 46:
                return -1
            out[n] = np.nan
        elif n_int + n_frac > 15:  # beyond what an int64 mantissa holds exactly as a float
            return -1
        else:
            value = mant / 10.0**n_frac
            out[n] = -value if neg else value
        n += 1
        i += 1
    return n


def _numbers(text: str, count: int) -> np.ndarray:
    """The tab- or comma-separated numbers of ``text``; NaN where one is not a number."""
    if text and text.isascii():
        out = np.empty(count + 1, dtype=np.float64)
        n = _parse_decimals(np.frombuffer(text.encode("ascii"), dtype=np.uint8), out)
        if n >= 0:
            return out[:n]
    vals = text.replace(",", "\t").split("\t") if text else []
    return pd.to_numeric(pd.Series(vals, dtype=object), errors="coerce").to_numpy(dtype=np.float64)


def _floats(lines: list[str], n: int, how: str = "plain") -> np.ndarray:
    """Tab-separated numbers per line -> (n_lines, n); ``hds``/``gp`` fold HDS pairs and GP triples."""
    text = "\t".join(ln.rstrip("\t") for ln in lines)
    per = {"plain": 1, "hds": 2, "gp": 3}[how]
    arr = _numbers(text, len(lines) * n * per)
    if arr.size != len(lines) * n * per:
        raise ValueError("a record has a missing or partial dosage field")
    arr = arr.reshape(len(lines), n, per)
    if how == "hds":
        return arr.sum(axis=2)
    if how == "gp":
        return arr[:, :, 1] + 2 * arr[:, :, 2]
    return arr[:, :, 0]


def _refuse_a_line_cut_short(path: str, genotypes: Iterable[str]) -> None:
    """A record without a single genotype (its ``[%GT\t]`` all missing) is what bcftools makes of a
    line cut short: if the file holds one, the error naming it."""
    if any(not g.strip("./|\t") for g in genotypes):
        short = short_record_error(path)
        if short is not None:
            raise short


def read_dosages(
    path: str | os.PathLike,
    chrom: str,
    region: tuple[int, int] | None = None,
    samples: list[str] | None = None,
    allow_empty: bool = False,
) -> dict:
    """Sites, samples, dosages (DS, else HDS, else GP, else GT), best-guess ALT counts and INFO R2
    (R2, else Beagle's DR2) of an imputed VCF from any tool; no ##contig lines or index needed.
    ``samples``: only these (they must be in the file), their columns in this order. A chromosome
    (or ``region``) without records is an error unless ``allow_empty``."""
    path = str(path)
    check_readable(path)
    with open_vcf(path) as vf:
        have = list(vf.header.samples)
        formats = set(vf.header.formats)
        infos = set(vf.header.info)
    if not have:
        raise InputError(path, "no samples in the imputed VCF")
    dose = next((f for f in ("DS", "HDS", "GP") if f in formats), None)
    if dose is None and "GT" not in formats:
        raise InputError(path, "no DS, HDS, GP or GT field to score", "Impute with dosages")
    info = next((f for f in ("R2", "DR2") if f in infos), None)
    fmt = "%CHROM\t%POS\t%REF\t%ALT\t" + (f"%INFO/{info}" if info else ".") + "\t"
    # "@" separates the GT and dose lists (GT strings hold "|", numbers hold ",").
    fmt += "[%GT\t]" + (f"@[%{dose}\t]" if dose else "") + "\n"
    fixed, gts, doses = [], [], []
    lines, n, cols = _chrom_lines(path, fmt, chrom, have, region, samples, allow_empty)
    for ln in lines:
        parts = ln.split("\t", 5)
        fixed.append(parts[:5])
        g, _, d = parts[5].partition("@")
        gts.append(g)
        doses.append(d)
    del lines
    _refuse_a_line_cut_short(path, gts)
    sites = upper_alleles(pd.DataFrame(fixed, columns=["chrom", "pos", "ref", "alt", "info_r2"]))
    sites["pos"] = sites["pos"].astype(np.int64)
    sites["info_r2"] = pd.to_numeric(sites["info_r2"], errors="coerce")
    gt = alt_counts(gts, n)
    if dose:
        ds = _floats(doses, n, {"DS": "plain", "HDS": "hds", "GP": "gp"}[dose])
    else:
        ds = gt.copy()
    return {
        "path": path,
        "sites": sites,
        "samples": have if samples is None else list(samples),
        "ds": ds[:, cols],
        "gt": gt[:, cols],
        "dose_field": dose or "GT",
        "info_field": info,
    }


def read_truth(
    path: str | os.PathLike,
    chrom: str,
    region: tuple[int, int] | None = None,
    samples: list[str] | None = None,
    allow_empty: bool = False,
    indels: bool = False,
) -> dict:
    """True genotypes (ALT counts, NaN where missing) of the biallelic SNVs (with ``indels``, and
    indels) of a VCF/BCF (of ``region`` only, if given; of ``samples`` only, in this order, if
    given)."""
    path = str(path)
    have = _header_samples(path)
    fmt = "%CHROM\t%POS\t%REF\t%ALT\t[%GT\t]\n"
    lines, n, cols = _chrom_lines(path, fmt, chrom, have, region, samples, allow_empty)
    rows = [ln.split("\t", 4) for ln in lines]
    del lines
    _refuse_a_line_cut_short(path, (r[4] for r in rows))
    sites = upper_alleles(
        pd.DataFrame([r[:4] for r in rows], columns=["chrom", "pos", "ref", "alt"])
    )
    sites["pos"] = sites["pos"].astype(np.int64)
    # the records the panel reader keeps: not an ALT of `*` or `.`, which no reference imputes
    keep = snv_sites(sites)
    if indels:
        keep = keep | np.fromiter(map(is_indel, sites["ref"], sites["alt"]), bool, len(sites))
    gt = alt_counts([r[4] for r in rows], n)
    return {
        "path": path,
        "sites": sites[keep].reset_index(drop=True),
        "samples": have if samples is None else list(samples),
        "gt": gt[keep][:, cols],
    }


# The header line of the placeholder VCF the workflow writes for a tool that could not run on its
# input (workflow/scripts/external_tool.sh): `##ragimpute_not_run=<method=...,reason="...">`.
NOT_RUN_KEY = "##ragimpute_not_run="


def parse_not_run(line: str) -> tuple[str, str]:
    """(method, reason) of a placeholder's ``##ragimpute_not_run=<method=...,reason="...">`` line."""
    text = line[len(NOT_RUN_KEY) :].strip().strip("<>")
    method = text.partition("method=")[2].split(",")[0]
    return method, text.partition('reason="')[2].rstrip('"') or text


def not_run_reason(path: str | os.PathLike) -> str | None:
    """Why the tool behind ``path`` did not run (a placeholder VCF), or None for a real output."""
    check_readable(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gz else open)(path, "rt", errors="replace") as f:
        for line in f:
            if line.startswith(NOT_RUN_KEY):
                return parse_not_run(line)[1]
            if not line.startswith("##"):
                return None
    return None


def match_to(sites: pd.DataFrame, other: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``sites`` (pos, ref, alt): the row of ``other`` with the same SNV (-1: none), and
    whether ``other`` has it with REF/ALT swapped."""
    key = {}
    rows = list(zip(*(other[c].tolist() for c in ("pos", "ref", "alt")), strict=True))
    # every record as written first: an indel swapped (``A``/``AT``) may be another record as
    # written (``AT``/``A``) at the same position, which must win
    for i, (p, r, a) in enumerate(rows):
        key.setdefault((int(p), r, a), (i, False))
    for i, (p, r, a) in enumerate(rows):
        key.setdefault((int(p), a, r), (i, True))
    cols = (sites[c].tolist() for c in ("pos", "ref", "alt"))
    hits = [key.get((int(p), r, a), (-1, False)) for p, r, a in zip(*cols, strict=True)]
    idx = np.fromiter((h[0] for h in hits), dtype=np.int64, count=len(hits))
    flip = np.fromiter((h[1] for h in hits), dtype=bool, count=len(hits))
    return idx, flip


# -- scoring ---------------------------------------------------------------------------------------


def site_scores(ds: np.ndarray, gt: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Per-site sums and counts over samples: ds, gt (called ALT count), truth (n_sites, n_samples),
    NaN = missing. Pairs without a true genotype or a dosage are left out."""
    valid = ~np.isnan(truth) & ~np.isnan(ds)
    x = np.where(valid, ds, 0.0)
    y = np.where(valid, truth, 0.0)
    out = {
        "n": valid.sum(axis=1).astype(np.float64),
        "sx": x.sum(axis=1),
        "sy": y.sum(axis=1),
        "sxx": (x * x).sum(axis=1),
        "syy": (y * y).sum(axis=1),
        "sxy": (x * y).sum(axis=1),
    }
    called = valid & ~np.isnan(gt)
    c = np.where(called, gt, 0.0)
    t = np.where(called, truth, 0.0)
    nonref = called & ((c > 0) | (t > 0))
    out.update(
        n_gt=called.sum(axis=1),
        n_conc=(called & (c == t)).sum(axis=1),
        n_nonref=nonref.sum(axis=1),
        n_nonref_conc=(nonref & (c == t)).sum(axis=1),
        tp=np.minimum(c, t).sum(axis=1),
        fp=np.maximum(c - t, 0).sum(axis=1),
        fn=np.maximum(t - c, 0).sum(axis=1),
    )
    df = pd.DataFrame(out)
    df["true_r2"] = r2_from_sums(*(df[k] for k in SUMS))
    return df


# Additive terms of a per-site row: every metric of a set of rows is a function of their sums, so
# that tables too large for memory (a genome's sites x methods) are pooled a block of rows at a time.
_TERMS = (*SUMS, *COUNTS, "sites", "info_n", "info_s", "true_n", "true_s")
# sums for the correlation of INFO R2 with the true r², over the sites where both are defined
_CORR = ("both_n", "bx", "by", "bxx", "byy", "bxy")
NO_TERMS = pd.DataFrame(columns=[*_TERMS, *_CORR], dtype=float)  # the terms of no rows
CALIBRATION_COLUMNS = [
    "info_r2_bin",
    "n_sites",
    "n_sites_true_r2",
    "mean_info_r2",
    "mean_true_r2",
    "pooled_true_r2",
]


def row_terms(df: pd.DataFrame) -> pd.DataFrame:
    """The additive terms of each per-site row (``_TERMS`` and ``_CORR``)."""
    info = df["info_r2"] if "info_r2" in df else pd.Series(np.nan, index=df.index)
    true = df["true_r2"]
    both = info.notna() & true.notna()
    x, y = info.where(both, 0.0).to_numpy(float), true.where(both, 0.0).to_numpy(float)
    out = {k: df[k].to_numpy(float) for k in SUMS + COUNTS}
    out.update(
        sites=np.ones(len(df)),
        info_n=info.notna().to_numpy(float),
        info_s=info.fillna(0.0).to_numpy(float),
        true_n=true.notna().to_numpy(float),
        true_s=true.fillna(0.0).to_numpy(float),
        both_n=both.to_numpy(float),
        bx=x,
        by=y,
        bxx=x * x,
        byy=y * y,
        bxy=x * y,
    )
    return pd.DataFrame(out, index=df.index)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summary_from_terms(s: pd.Series) -> dict:
    """Metrics of a set of per-site rows from the sums of their terms (``row_terms``)."""
    denom_f1 = 2 * s["tp"] + s["fp"] + s["fn"]
    corr = float("nan")
    if s["both_n"] >= 3:
        r2 = r2_from_sums(*(s[k] for k in _CORR))  # NaN where a side is constant
        cov = s["bxy"] - s["bx"] * s["by"] / s["both_n"]
        corr = float(np.sign(cov) * np.sqrt(r2))
    return {
        "n_sites": int(s["sites"]),
        "n_genotypes": int(s["n"]),
        "r2": float(r2_from_sums(*(s[k] for k in SUMS))),
        "concordance": _ratio(s["n_conc"], s["n_gt"]),
        "nonref_concordance": _ratio(s["n_nonref_conc"], s["n_nonref"]),
        "alt_f1": _ratio(2 * s["tp"], denom_f1),
        "mean_info_r2": _ratio(s["info_s"], s["info_n"]),
        "mean_true_r2": _ratio(s["true_s"], s["true_n"]),
        "info_r2_vs_true_r2": corr,
    }


def _info_bins(info_r2: pd.Series) -> np.ndarray:
    return np.clip(np.digitize(info_r2, INFO_R2_EDGES[1:-1]), 0, len(INFO_R2_EDGES) - 2)


def bin_rows(by_bin: pd.DataFrame) -> pd.DataFrame:
    """One row per MAF bin and one for all, from the summed terms of each bin (index: bin)."""
    zero = pd.Series(0.0, index=NO_TERMS.columns)
    rows = [
        {"maf_bin": label, **summary_from_terms(by_bin.loc[b] if b in by_bin.index else zero)}
        for b, label in enumerate(BIN_LABELS)
    ]
    rows.append(
        {"maf_bin": ALL, **summary_from_terms(by_bin.sum().reindex(zero.index, fill_value=0))}
    )
    return pd.DataFrame(rows)


def calibration_rows(by_info: pd.DataFrame) -> pd.DataFrame:
    """Sites binned by INFO R2 (``INFO_R2_EDGES``; index: bin number, sites with an INFO R2 only):
    mean INFO R2 against mean true per-site r² and pooled r²."""
    rows = [
        {
            "info_r2_bin": f"{INFO_R2_EDGES[i]:.1f}-{INFO_R2_EDGES[i + 1]:.1f}",
            "n_sites": int(s["sites"]),
            "n_sites_true_r2": int(s["true_n"]),
            "mean_info_r2": _ratio(s["info_s"], s["info_n"]),
            "mean_true_r2": _ratio(s["true_s"], s["true_n"]),
            "pooled_true_r2": float(r2_from_sums(*(s[k] for k in SUMS))),
        }
        for i, s in by_info.sort_index().iterrows()
        if s["sites"]
    ]
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def bin_table(per_site: pd.DataFrame) -> pd.DataFrame:
    """One row per MAF bin and one for all scored sites."""
    return bin_rows(row_terms(per_site).groupby(per_site["bin"].to_numpy()).sum())


def calibration_table(per_site: pd.DataFrame) -> pd.DataFrame:
    """Sites binned by INFO R2: mean INFO R2 against mean true per-site r² and pooled r²."""
    has = per_site["info_r2"].notna()
    terms = row_terms(per_site[has])
    return calibration_rows(terms.groupby(_info_bins(per_site["info_r2"][has])).sum())


# Genotypes (sites x scored samples) read at once: the truth and the imputed file are read a block of
# sites at a time, so that memory follows this and not the chromosome (~100 bytes per genotype
# while a block is decoded: ~200 MB).
BLOCK_GENOTYPES = 2_000_000


def evaluate(
    imputed_vcf: str | os.PathLike,
    truth_vcf: str | os.PathLike,
    sites_parquet: str | os.PathLike,
    typed_vcf: str | os.PathLike,
    method: str,
    out_dir: str | os.PathLike,
    core: tuple[int, int] | None = None,
    block_genotypes: int = BLOCK_GENOTYPES,
    typed_sites_given: int | None = None,
    reference_splits: Iterable[str] = ("train",),
    indels: bool = False,
) -> dict:
    """Score one method's imputed VCF; writes ``sites.tsv.gz`` (per-site sums), ``bins.tsv`` and
    ``summary.json`` in ``out_dir``. ``typed_vcf``: the (harmonised) target, whose sites are not scored.
    ``indels``: the truth's biallelic indels are scored too (``panel.indels``; SNVs only without).
    ``core`` (first, last bp): score only these sites (a chunk's share of its chromosome).
    ``typed_sites_given``: of them, how many the tool was given (recorded: Minimac4's are fewer).
    ``reference_splits``: the imputation reference, whose MAF bins the sites.
    Only the scored samples are decoded, and when both files are indexed they are read in regions
    of about ``block_genotypes`` sites x scored samples (one region otherwise)."""
    ref = _reference_sites(sites_parquet, core, tuple(reference_splits))
    chrom = str(ref["chrom"].iloc[0])
    reason = not_run_reason(imputed_vcf)
    truth_samples = _header_samples(truth_vcf)
    if reason is not None:
        # A tool that could not take the input: nothing imputed, every scored site counted as not
        # in its output, and the reason carried to summary.json (and from there to compare).
        log.warning("%s did not run on chromosome %s: %s", method, chrom, reason)
    imp_samples = truth_samples if reason is not None else _header_samples(imputed_vcf)
    if not imp_samples:
        raise InputError(imputed_vcf, "no samples in the imputed VCF")
    samples, not_in_truth = _shared_samples(imp_samples, truth_samples, imputed_vcf, truth_vcf)
    typed_found = match_to(ref, vcf_records_sites(typed_vcf))[0] >= 0

    pos = ref["pos"].to_numpy()
    files = [truth_vcf] + ([imputed_vcf] if reason is None else [])
    regions = _read_regions(pos, core, files, max(1, block_genotypes // len(samples)))
    whole = core is None and len(regions) == 1  # the whole chromosome, as before any region
    scored, in_output = np.zeros(len(ref), dtype=bool), np.zeros(len(ref), dtype=bool)
    parts = []
    n_truth = n_truth_in_ref = n_imp = 0
    dose_field = info_field = None  # of the imputed file; none when the tool did not run
    for region in regions:
        rows = np.flatnonzero((pos >= region[0]) & (pos <= region[1]))
        r = ref.iloc[rows].reset_index(drop=True)
        where = None if whole else region
        truth = read_truth(truth_vcf, chrom, where, samples, allow_empty=True, indels=indels)
        if reason is None:
            imp = _read_imputed(imputed_vcf, method, chrom, where, samples)
            dose_field, info_field = imp["dose_field"], imp["info_field"]
        else:
            imp = _nothing_imputed(samples)
        n_truth += len(truth["sites"])
        n_imp += len(imp["sites"])
        part, scored[rows], in_output[rows], matched = _score_region(
            r, ~typed_found[rows], truth, imp
        )
        n_truth_in_ref += matched
        parts.append(part)
    if n_truth == 0 or (reason is None and n_imp == 0):
        raise _no_records(str(truth_vcf if n_truth == 0 else imputed_vcf), chrom)

    per_site = pd.concat(parts, ignore_index=True)
    per_site.insert(per_site.columns.get_loc("maf") + 1, "bin", maf_bin(per_site["maf"].to_numpy()))
    per_site.insert(0, "chrom", chrom)
    per_site.insert(0, "method", method)

    bins = bin_table(per_site)
    bins.insert(0, "method", method)
    missed = scored & ~in_output
    bins["n_sites_not_in_output"] = [
        int((missed & (maf_bin(ref["maf"].to_numpy()) == b)).sum()) for b in range(len(BIN_LABELS))
    ] + [int(missed.sum())]

    summary = {
        "method": method,
        "chrom": chrom,
        "imputed": str(imputed_vcf),
        "truth": str(truth_vcf),
        "samples_scored": len(samples),
        "samples_imputed": len(imp_samples),
        "samples_not_in_truth": len(not_in_truth),
        "reference_sites": len(ref),
        "typed_sites": int(typed_found.sum()),
        "typed_sites_given": typed_sites_given,
        "scored_sites": int(scored.sum()),
        "scored_sites_not_in_output": int(missed.sum()),
        "truth_sites_not_in_reference": int(n_truth - n_truth_in_ref),
        "dose_field": dose_field,
        "info_field": info_field,
        "ragimpute": __version__,
        "all": bins.iloc[-1].drop(["method", "maf_bin"]).to_dict(),
    }
    if reason is not None:
        summary.update(not_run=reason, samples_imputed=0, samples_scored=0)
    _write_scores(Path(out_dir), per_site, bins, summary, len(samples))
    return summary


def _reference_sites(
    sites_parquet: str | os.PathLike,
    core: tuple[int, int] | None,
    splits: tuple[str, ...] = ("train",),
) -> pd.DataFrame:
    """The reference sites (``chrom pos ref alt maf``), of ``core`` only if given. The MAF that
    bins them is min(AC, AN - AC) / AN over the samples of ``splits``, the imputation reference
    (the whole panel for one's own targets: binned by the train split's MAF, a site with 2 ALT of
    the train split's 432 haplotypes and 3 more in the rest of a 540-haplotype reference is in
    0-0.5 % though the panel every tool imputed from has it at 0.9 %). From the counts, not
    ``min(af, 1 - af)``, which is 0.050000000000000044 for AC 456 of 480, putting a site of MAF
    exactly 5 % whose ALT is the major allele in the 5-50 % bin and its mirror image in 1-5 %."""
    # the columns binning needs: the VCF columns and the counts (not ids or cM, on every site)
    with reading(sites_parquet, "window"):
        names = pq.read_schema(sites_parquet).names
    counts = [c for c in names if c.startswith(("ac_", "an_"))]
    columns = ["chrom", "pos", "ref", "alt", "ac", "an", *counts]
    ref = read_parquet_df(sites_parquet, "window", columns=columns)
    ac, an = reference_counts(ref, splits, Path(sites_parquet).parent)
    ref = ref[["chrom", "pos", "ref", "alt"]].copy()
    ref["maf"] = np.minimum(ac, an - ac) / np.maximum(an, 1)
    if core is not None:
        ref = ref[(ref["pos"] >= core[0]) & (ref["pos"] <= core[1])].reset_index(drop=True)
    return ref


def _score_region(
    ref: pd.DataFrame, untyped: np.ndarray, truth: dict, imp: dict
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, int]:
    """Per-site scores of the reference sites ``ref`` (pos, ref, alt, maf) of one region; which of
    them are scored (in the truth and ``untyped`` in the target) and in the imputed output; and how
    many of the truth's sites they match."""
    t_idx, t_flip = match_to(ref, truth["sites"])
    i_idx, i_flip = match_to(ref, imp["sites"])
    scored = (t_idx >= 0) & untyped
    sel = np.flatnonzero(scored & (i_idx >= 0))
    y = truth["gt"][t_idx[sel]]
    y = np.where(t_flip[sel, None], 2 - y, y)
    flip = i_flip[sel, None]
    ds = np.where(flip, 2 - imp["ds"][i_idx[sel]], imp["ds"][i_idx[sel]])
    gt = np.where(flip, 2 - imp["gt"][i_idx[sel]], imp["gt"][i_idx[sel]])
    part = site_scores(ds, gt, y)
    # a site is its position and alleles: an SNV and indels may share a position (panel.indels)
    for at, col in enumerate(("pos", "ref", "alt", "maf")):
        part.insert(at, col, ref[col].to_numpy()[sel])
    part.insert(4, "info_r2", imp["sites"]["info_r2"].to_numpy()[i_idx[sel]])
    return part, scored, i_idx >= 0, len(np.unique(t_idx[t_idx >= 0]))


# The last position a region may name (htslib's limit for a tabix index).
MAX_POS = 2**29 - 1


def _read_regions(
    pos: np.ndarray, core: tuple[int, int] | None, files: list, per: int
) -> list[tuple[int, int]]:
    """The regions the evaluation reads ``files`` in: of about ``per`` reference sites each when
    every file is indexed, else one (each read of an unindexed file goes through all of it)."""
    lo, hi = (1, MAX_POS) if core is None else (int(core[0]), int(core[1]))
    if all(is_indexed(f) for f in files):
        return _regions(pos, lo, hi, per)
    log.info(
        "reading %s whole (index with tabix to read by region, in less memory)",
        " and ".join(map(str, files)),
    )
    return [(lo, hi)]


def _regions(pos: np.ndarray, lo: int, hi: int, per: int) -> list[tuple[int, int]]:
    """[lo, hi] cut into consecutive regions of about ``per`` of the sites at ``pos`` each; sites at
    one position stay in one region."""
    u = np.unique(pos[(pos >= lo) & (pos <= hi)])
    ends = [int(p) for p in u[per - 1 :: per]]
    if not ends or ends[-1] < hi:
        ends.append(hi)
    starts = [lo, *(e + 1 for e in ends[:-1])]
    return [(a, b) for a, b in zip(starts, ends, strict=True) if a <= b]


def _read_imputed(path, method: str, chrom: str, where, samples: list[str]) -> dict:
    """``read_dosages`` of an imputed VCF, which the workflow wrote: what is wrong with it is a
    damaged artifact, rebuilt by its rule (not an input to fetch again or fix by hand)."""
    try:
        return read_dosages(path, chrom, where, samples, allow_empty=True)
    except InputError as e:
        stage = method if method in ("beagle", "minimac4") else "impute"
        at = f" (at {e.record})" if e.record else ""
        raise UnreadableArtifactError(
            f"{e.path}: {e.problem}{at}: the imputed VCF is damaged. {rebuild_hint(stage)}"
        ) from e


def _nothing_imputed(samples: list[str]) -> dict:
    """What ``read_dosages`` returns for a VCF without records: the placeholder of a tool that did
    not run."""
    return {
        "sites": pd.DataFrame({"chrom": [], "pos": [], "ref": [], "alt": [], "info_r2": []}).astype(
            {"pos": np.int64, "info_r2": float}
        ),
        "samples": list(samples),
        "ds": np.zeros((0, len(samples))),
        "gt": np.zeros((0, len(samples))),
        "dose_field": None,
        "info_field": None,
    }


def _shared_samples(
    imputed: list[str],
    truth: list[str],
    imputed_vcf: str | os.PathLike,
    truth_vcf: str | os.PathLike,
) -> tuple[list[str], list[str]]:
    """The truth's samples that were imputed (scored), and the imputed samples the truth lacks
    (a warning); none shared is an error."""
    samples = [s for s in truth if s in set(imputed)]
    if not samples:
        raise InputError(
            imputed_vcf,
            f"none of its {len(imputed)} samples is in the truth VCF {truth_vcf}",
            "Evaluate against the true genotypes of the same samples",
        )
    not_in_truth = [s for s in imputed if s not in set(truth)]
    if not_in_truth:
        log.warning(
            "%s: %d of its %d samples are not in the truth VCF %s (%s%s); only the %d shared "
            "samples are scored",
            imputed_vcf,
            len(not_in_truth),
            len(imputed),
            truth_vcf,
            ", ".join(not_in_truth[:5]),
            " ..." if len(not_in_truth) > 5 else "",
            len(samples),
        )
    return samples, not_in_truth


def _write_scores(
    out: Path, per_site: pd.DataFrame, bins: pd.DataFrame, summary: dict, n_samples: int
) -> None:
    """``sites.tsv.gz``, ``bins.tsv`` and ``summary.json``, and the headline in the log."""
    with atomic_path(out / "sites.tsv.gz", suffix=".tsv.gz") as tmp, open(tmp, "wb") as raw:
        # level 1: a whole chromosome's table in a fraction of the time, for a third more bytes;
        # no name or time in the gzip header, so that equal scores give equal bytes
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            with io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
                per_site.to_csv(text, sep="\t", index=False)
    write_tsv(out / "bins.tsv", bins)
    write_json(out / "summary.json", summary)
    a = summary["all"]
    log.info(
        "%s on %s: %d sites x %d samples scored, r2 %.4f, concordance %.4f, NRC %.4f, F1 %.4f",
        summary["method"],
        summary["chrom"],
        a["n_sites"],
        n_samples,
        a["r2"],
        a["concordance"],
        a["nonref_concordance"],
        a["alt_f1"],
    )


# -- comparison across methods and chromosomes ----------------------------------------------------


# Per-site rows that ``compare`` reads at a time: it pools the sums of each block, so a genome's
# sites x methods (tens of millions of rows) never sit in memory at once.
COMPARE_ROWS = 1 << 18
_SITE_COLUMNS = ["method", "bin", "info_r2", "true_r2", *SUMS, *COUNTS]


def pooled_terms(
    site_tables: list[str | os.PathLike], rows: int = COMPARE_ROWS
) -> tuple[list[str], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """The summed terms (``row_terms``) of every method's per-site rows over ``site_tables``, per MAF
    bin and per INFO R2 bin, reading ``rows`` rows at a time; and the methods in order of appearance."""
    seen: dict[str, None] = {}
    by_bin, by_info = [], []
    for path in site_tables:
        # a table cut short fails part-way (gzip's EOFError): named, with the rerun that makes it
        with (
            reading(path, "evaluate"),
            pd.read_csv(path, sep="\t", usecols=_SITE_COLUMNS, chunksize=rows) as blocks,
        ):
            for block in blocks:
                seen.update(dict.fromkeys(block["method"].unique()))
                terms = row_terms(block)
                by_bin.append(terms.groupby([block["method"], block["bin"]]).sum())
                has = block["info_r2"].notna()
                info_bin = _info_bins(block["info_r2"][has])
                by_info.append(terms[has].groupby([block["method"][has], info_bin]).sum())

    def per_method(parts: list[pd.DataFrame]) -> dict[str, pd.DataFrame]:
        total = pd.concat(parts).groupby(level=[0, 1]).sum() if parts else NO_TERMS
        return {m: total.xs(m, level=0) if m in total.index else NO_TERMS for m in seen}

    return list(seen), per_method(by_bin), per_method(by_info)


def compare(
    site_tables: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    methods: list[str] | None = None,
    baseline: str = "retrieval",
    rows: int = COMPARE_ROWS,
) -> pd.DataFrame:
    """Pool per-site scores over chromosomes; write ``comparison.tsv`` (per method and MAF bin, with
    the r² difference to the ``baseline`` method), ``calibration.tsv`` and two PNG plots. The tables
    are read ``rows`` rows at a time (memory does not grow with them)."""
    seen, by_bin, by_info = pooled_terms(site_tables, rows)
    summaries = _summaries(site_tables)
    not_run = _not_run(summaries)
    caveats = _caveats(summaries)
    order = methods or list(dict.fromkeys([*seen, *not_run]))
    rows_out = []
    cal = []
    for m in order:
        note = ""
        if m in not_run:
            # Pooled over the chromosomes where it ran, it would be scored on other sites than the
            # other methods: a method that did not run everywhere is left out, and says why.
            note = "not run: " + "; ".join(f"chromosome {c}: {r}" for c, r in not_run[m])
        elif m not in by_bin:
            note = "no scored sites"
        left_out = bool(note)
        if left_out:
            log.warning("%s is left out of the comparison (%s)", m, note)
        elif m in caveats:
            note = caveats[m]  # scored, but from less input or on fewer sites: it says so
        t = bin_rows(NO_TERMS if left_out else by_bin[m])
        t.insert(0, "method", m)
        t["note"] = note
        t["_left_out"] = left_out
        rows_out.append(t)
        if not left_out:
            c = calibration_rows(by_info[m])
            c.insert(0, "method", m)
            cal.append(c)
    table = pd.concat(rows_out, ignore_index=True)
    if baseline in set(table["method"]):
        base = table[table["method"] == baseline].set_index("maf_bin")["r2"]
        table[f"r2_minus_{baseline}"] = table["r2"] - table["maf_bin"].map(base)
        table[f"beats_{baseline}"] = np.where(
            table[f"r2_minus_{baseline}"].isna(),
            "",
            np.where(table[f"r2_minus_{baseline}"] > 0, "yes", "no"),
        )
        table.loc[table["method"] == baseline, f"beats_{baseline}"] = ""
    note, left_out = table.pop("note"), table.pop("_left_out").astype(bool)
    table["note"] = note  # last column
    calibration = pd.concat(cal, ignore_index=True) if cal else pd.DataFrame()
    out = Path(out_dir)
    write_tsv(out / "comparison.tsv", table.round(6))
    write_tsv(out / "calibration.tsv", calibration.round(6))
    plot_r2_by_maf(table[~left_out], out / "r2_by_maf.png")
    plot_calibration(calibration, out / "r2_calibration.png")
    return table


def _summaries(site_tables: list[str | os.PathLike]) -> list[dict]:
    """The ``summary.json`` that ``evaluate`` writes beside each ``sites.tsv.gz``: one gone or cut
    short is an error (its not-run reasons and caveats would otherwise be dropped unsaid)."""
    paths = [Path(p).parent / "summary.json" for p in site_tables if Path(p).name == "sites.tsv.gz"]
    return [read_artifact_json(p, "evaluate") for p in paths]


def sites_in_core(vcf: str | os.PathLike, core: tuple[int, int] | None = None) -> int:
    """How many records of ``vcf`` lie in ``core`` (first, last bp; all of them without): the typed
    sites a tool was given, counted over the sites that ``evaluate`` counts as typed."""
    pos = vcf_records_sites(vcf)["pos"].to_numpy()
    return int(len(pos) if core is None else ((pos >= core[0]) & (pos <= core[1])).sum())


def _per_chrom(summaries: list[dict], part: str, whole: str) -> dict[str, dict[str, list[int]]]:
    """Per method and chromosome, the sums of two counts of ``summary.json`` (a chromosome's chunks
    summed, so that a chunked run reads as an unchunked one); summaries without them, or of a tool
    that did not run, left out."""
    out: dict[str, dict[str, list[int]]] = {}
    for info in summaries:
        a, b = info.get(part), info.get(whole)
        if a is not None and b is not None and not info.get("not_run"):
            n = out.setdefault(info["method"], {}).setdefault(str(info["chrom"]), [0, 0])
            n[0], n[1] = n[0] + a, n[1] + b
    return out


def _fewer_typed(summaries: list[dict]) -> dict[str, str]:
    """Methods given fewer typed sites than the target has (Minimac4, which cannot take a typed site
    with a missing call), with what they were given per chromosome."""
    counts = _per_chrom(summaries, "typed_sites_given", "typed_sites")
    out = {m: [f"{g} of {t} on {c}" for c, (g, t) in v.items() if g < t] for m, v in counts.items()}
    return {
        m: "given fewer typed sites (missing calls left out): " + "; ".join(v)
        for m, v in out.items()
        if v
    }


def _missing_sites(summaries: list[dict]) -> dict[str, str]:
    """Methods whose output lacks some scored sites, with how many per chromosome: their rows pool
    fewer sites than the other methods', which would otherwise show only in ``n_sites``."""
    counts = _per_chrom(summaries, "scored_sites_not_in_output", "scored_sites")
    out = {m: [f"{k} of {n} on {c}" for c, (k, n) in v.items() if k] for m, v in counts.items()}
    return {
        m: "scored sites not in its output (scored on the others): " + "; ".join(v)
        for m, v in out.items()
        if v
    }


def _caveats(summaries: list[dict]) -> dict[str, str]:
    """The notes of the methods scored with a caveat (``_fewer_typed``, ``_missing_sites``)."""
    out: dict[str, list[str]] = {}
    for notes in (_fewer_typed(summaries), _missing_sites(summaries)):
        for m, note in notes.items():
            out.setdefault(m, []).append(note)
    return {m: "; ".join(v) for m, v in out.items()}


def _not_run(summaries: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """Methods that did not run, with (chromosome, reason)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for info in summaries:
        if info.get("not_run"):
            out.setdefault(info["method"], []).append((str(info["chrom"]), info["not_run"]))
    return out


def plot_r2_by_maf(table: pd.DataFrame, out_png: str | os.PathLike) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(BIN_LABELS))
    for m, d in table[table["maf_bin"] != ALL].groupby("method", sort=False):
        d = d.set_index("maf_bin").reindex(BIN_LABELS)
        overall = table[(table["method"] == m) & (table["maf_bin"] == ALL)]["r2"].iloc[0]
        ax.plot(x, d["r2"], marker="o", label=f"{m} (all: {overall:.3f})")
    ax.set_xticks(x, BIN_LABELS)
    ax.set_xlabel("MAF in the reference panel")
    ax.set_ylabel("aggregate dosage r²")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Imputation accuracy of untyped sites by MAF bin")
    fig.tight_layout()
    save_png(fig, out_png)


def plot_calibration(calibration: pd.DataFrame, out_png: str | os.PathLike) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    if len(calibration):
        for m, d in calibration.groupby("method", sort=False):
            # Per-site true r² (mean over the bin): pooling pairs across sites would mix in the
            # differences in frequency between sites, which say nothing about calibration.
            ax.plot(d["mean_info_r2"], d["mean_true_r2"], marker="o", label=m)
    ax.set_xlabel("estimated r² (INFO R2 / DR2), bin mean")
    ax.set_ylabel("true per-site r², bin mean")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Does the estimated r² track the true r²?")
    fig.tight_layout()
    save_png(fig, out_png)
