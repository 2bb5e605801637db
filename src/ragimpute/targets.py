"""Imputation targets: reading a target VCF, aligning it to the reference sites, and its mask.

Alignment is by chromosome, position, REF and ALT, as Beagle and Minimac4 match markers:
- ``chr20`` and ``20`` are the same chromosome (the output uses the reference's name, as imputation
  servers do);
- a record whose REF/ALT are the reference's ALT/REF is the same SNV in the other orientation: its
  alleles are flipped (counted as ``flipped``);
- records at positions the reference does not have (``not_in_reference``) or with other alleles
  (``allele_mismatch``) are not used and are counted and listed (``unmatched.tsv``);
- a record whose alleles are the reference's on the other strand (A/G or G/A where the reference has
  T/C) is not used either (``strand_flip``: it is not complemented, since a target on the other
  strand has A/T and C/G records that no allele can expose), with a warning saying how to put the
  target on the forward strand;
- an A/T or C/G record whose REF/ALT are the reference's ALT/REF is either that or the same alleles
  on the other strand, with the opposite genotypes: it is not used either (``ambiguous_strand``);
- an A/T or C/G record with the reference's REF/ALT may still be on the other strand, its genotypes
  inverted: where the reference's ALT frequency r is not near 1/2 (MAF <= 0.4) and the target's ALT
  count k of n called alleles is far likelier under frequency 1 - r than under r (the binomial
  log-likelihood ratio (2k - n) log((1 - r) / r) above ``STRAND_LLR_THRESHOLD``), as Beagle's
  conform-gt and Will Rayner's strand checks do, it is not used (``strand_frequency``). Records near
  MAF 1/2, or with too few called alleles to reach the threshold, cannot be checked and are kept;
- multi-allelic, non-SNV and ALT-less records are skipped and counted, as the reference's are.
Unphased heterozygous genotypes (``0/1``, what an array delivers) are kept unphased in the harmonised
target when the workflow phases it (``impute.phase`` auto or always: the ``phase`` stage, see
``phasing``); otherwise (``never``, and outside the workflow) they are an error that says how to phase.
Unsorted records, two SNV records at one position, a target that shares samples with the reference or
does not overlap it are errors.

Missing genotypes: the mask is per site (every haplotype observes the same sites, so that the index can
answer it), so a typed site missing in more than ``max_missing`` of the target haplotypes is treated as
untyped (imputed for everyone). The remaining missing alleles stay missing in the harmonised target
(Beagle and Minimac4 see them as they are); ours fills them with the reference's more frequent allele
for retrieval only and then imputes them like any hidden allele (see ``impute``).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .atomic import write_json, write_tsv
from .errors import InputError
from .logs import log
from .masks import store_mask
from .split import check_disjoint
from .vcf_io import (
    RecordFilter,
    check_readable,
    decode_genotypes,
    query_lines,
    resolve_contig,
    short_record_error,
    site_table,
    skip_counts,
    snv_sites,
    split_fields,
    vcf_records_contigs,
    vcf_samples,
    where_words,
)
from .vcf_write import contig_lengths, phased_vcf_writer, write_phased_vcf

# The target mask: hide every reference site the target does not type. The same canonical spec as
# ``masks.expand_specs`` gives an array mask without dropout, so that a target typed exactly on the
# training array gets the training mask's hash (and re-uses its index).
TARGET_MASK_SPEC = {"strategy": "array", "array_dropout": 0.0}
TARGET_SKIP_REASONS = ("multiallelic", "non_snv", "no_alt")
UNMATCHED_REASONS = (
    "not_in_reference",
    "allele_mismatch",
    "strand_flip",
    "ambiguous_strand",
    "strand_frequency",
)
PALINDROMIC = {("A", "T"), ("T", "A"), ("C", "G"), ("G", "C")}
COMPLEMENT = {"A": "T", "T": "A", "C": "G", "G": "C"}
# The frequency check of A/T and C/G records. Near MAF 1/2 both strands give the same frequency, so
# the strand tools leave MAF > 0.4 unchecked. The threshold is a likelihood ratio of 1000: on the
# right strand (target frequency r) a ratio that large has a chance below 1/1000 whatever the number
# of alleles (Markov's inequality: the ratio's mean is 1), while a site on the other strand reaches it
# with a few dozen haplotypes (30 targets: 9 in 10 checkable sites). As the cohort grows the rule
# becomes Rayner's (flag where 1 - p is closer to r than p is), so a target population only loses
# sites whose major allele is the reference's minor one, which frequency cannot tell from a flip.
# Measured on every demo site (the non-palindromic ones too, whose strand is known): the largest
# ratio is about 20 on the admixed demo (admixed targets, a reference from the source populations)
# and below 1 with a 1,000-sample admixed cohort.
STRAND_CHECK_MAX_MAF = 0.4
STRAND_LLR_THRESHOLD = math.log(1000.0)
STRAND_AF_CLIP = 1e-3
STRAND_FIX_HINT = (
    "Put the target on the forward strand of the reference genome "
    "(`bcftools +fixref target.vcf.gz -Oz -o fixed.vcf.gz -- -f ref.fa -m flip -d`) or flip it "
    "with the array maker's strand file (Will Rayner's strand files for Illumina arrays), then "
    "give the fixed file"
)
PHASING_HINT = (
    "Phase the targets first, with the reference panel if you have it: Beagle 5.4 "
    "(`beagle gt=target.vcf.gz ref=reference.vcf.gz out=phased impute=false`), SHAPEIT5 "
    "(`phase_common --input target.bcf --reference reference.bcf --region CHR --output phased.bcf`) "
    "or Eagle2 (`eagle --vcfTarget target.vcf.gz --vcfRef reference.bcf --outPrefix phased`)"
)
# impute.phase: phase the harmonised target when any heterozygote is unphased (auto), always, never.
PHASE_MODES = ("auto", "always", "never")
WORKFLOW_PHASING_HINT = (
    "impute.phase is 'never': set it to auto (the default) and the workflow phases the targets "
    "against the reference panel itself (Beagle 5.4, or SHAPEIT5 with impute.phaser: shapeit5); or "
    + PHASING_HINT[0].lower()
    + PHASING_HINT[1:]
)
# Below this fraction of a target's SNV records matching the reference, the overlap is warned about
# (imputation servers refuse a target whose overlap is under 50 %).
LOW_OVERLAP = 0.5


@dataclass
class AlignedTarget:
    """Target genotypes at the reference sites they type, in the reference's orientation.

    ``alleles[i, 2*j + p]`` is the allele (0 = REF, 1 = ALT, -1 = missing) of sample ``j``, phase ``p``,
    at reference site ``site[i]``.
    """

    path: str
    contig: str  # the chromosome's name in the target file
    samples: list[str]
    site: np.ndarray  # (n_matched,) int64 index into the reference sites, increasing
    alleles: np.ndarray  # (n_matched, 2 * n_samples) int8
    report: dict = field(default_factory=dict)
    unmatched: pd.DataFrame = field(default_factory=pd.DataFrame)
    # (n_matched, n_samples) bool: unphased heterozygotes (read with ``allow_unphased`` only)
    unphased: np.ndarray | None = None


def decode_target_calls(
    gts: list[str],
    path: str,
    where: list[str],
    samples: list[str],
    allow_unphased: bool = False,
    hint: str = PHASING_HINT,
) -> tuple[np.ndarray, np.ndarray]:
    """Genotype lines (``[%GT\t]``) -> alleles (n, 2m) int8 (-1 missing) and (n, m) bool: the unphased
    heterozygotes (``0/1``; their two alleles are in no particular order). Unless ``allow_unphased``
    (the workflow phases them), an unphased heterozygote is an error naming the record and ``hint``;
    so is a call that is not diploid 0/1. Homozygous unphased calls are accepted (their phase is not
    in question); an unphased call with one missing allele (``./1``) has no phase to keep: it reads
    as missing."""
    g = decode_genotypes(gts, len(samples), trailing_tab=True)
    a = g.alleles
    het = g.unphased & g.called & (a[:, 0::2] != a[:, 1::2])
    bad = g.problem_rows(missing=False, unphased=False)
    if not allow_unphased:
        bad = np.union1d(bad, np.flatnonzero(het.any(axis=1)))
    if len(bad):
        i = int(bad[0])
        _raise_bad_call(gts[i], path, where[i], samples, g.invalid[i], het[i], hint)
    return a, het


def _raise_bad_call(
    line: str,
    path: str,
    where: str,
    samples: list[str],
    invalid: np.ndarray,
    het: np.ndarray,
    hint: str,
) -> None:
    """The error of a target record: too many or too few fields, or the first sample whose call is
    not a diploid 0/1 call (``invalid``) or an unphased heterozygote (``het``, when refused)."""
    fields = split_fields(line, trailing_tab=True)
    if len(fields) != len(samples):
        raise InputError(path, f"{len(fields)} genotypes for {len(samples)} samples", record=where)
    j = int(np.flatnonzero(invalid | het)[0])
    sample, gt = samples[j], fields[j]
    if het[j]:
        raise InputError(path, f"genotypes are unphased (sample {sample} has {gt!r})", hint, where)
    if "|" not in gt and "/" not in gt:
        raise InputError(
            path,
            f"haploid genotype {gt!r} for sample {sample}",
            "Only diploid chromosomes are supported (leave out chrX/chrY/chrM)",
            record=where,
        )
    raise InputError(
        path,
        f"genotype {gt!r} for sample {sample} is not a diploid 0/1 call",
        "Split multi-allelic records (`bcftools norm -m-any`) or check the file",
        record=where,
    )


def read_target(
    path: str | os.PathLike,
    chrom: str,
    sites: pd.DataFrame,
    allow_unphased: bool = False,
    hint: str = PHASING_HINT,
    region: tuple[int, int] | None = None,
    strand_check: bool = True,
) -> AlignedTarget:
    """Read ``chrom`` (or its ``region``: first, last bp, a chunk) of a phased target VCF/BCF and
    align it to the reference ``sites``
    (columns pos, ref, alt; positions increasing). With ``allow_unphased``, unphased heterozygotes
    are read too (``AlignedTarget.unphased``; the workflow's ``phase`` stage phases them); else they
    are an error with ``hint``.

    With ``strand_check`` and an ``af`` column in ``sites`` (the reference ALT frequency,
    ``sites.parquet``'s), A/T and C/G records with the reference's REF/ALT whose frequency says they
    are on the other strand are left out (``strand_frequency``); without ``af`` they are not checked.
    A target already harmonised by this function needs no second check (it would find nothing)."""
    path = str(path)
    check_readable(path)
    samples = vcf_samples(path)
    contig = _target_contig(path, chrom)
    recs, gts, skipped = _target_records(path, contig, region)
    match = _SiteMatch(recs, sites)
    if not match.matched.any():
        raise _no_match_error(path, contig, region, recs, skipped, match)
    keep = np.flatnonzero(match.matched)
    _refuse_two_matches(path, recs, keep)
    where = [f"{recs[i][0]}:{recs[i][1]}" for i in keep]
    alleles, unphased = decode_target_calls(
        [gts[i] for i in keep], path, where, samples, allow_unphased, hint
    )
    flip = match.swapped[keep]
    alleles[flip] = np.where(alleles[flip] >= 0, 1 - alleles[flip], -1)
    strand = None
    if strand_check and "af" in sites:
        # swapped A/T and C/G records are already out (ambiguous_strand): these have REF/ALT as
        # the reference has them, alleles in its orientation
        check = match.palindromic[keep] & match.same[keep]
        af = sites["af"].to_numpy(dtype=np.float64)[match.idx[keep]]
        flagged, strand = strand_frequency_check(alleles, af, check)
        if flagged.any():
            match.drop_for_frequency(keep[flagged])
            keep = keep[~flagged]
            alleles, unphased = alleles[~flagged], unphased[~flagged]
    ref_chrom = str(sites["chrom"].iloc[0]) if "chrom" in sites else contig
    unmatched = match.unmatched()
    report = {
        "target": path,
        "target_chrom": contig,
        "reference_chrom": ref_chrom,
        "chrom_renamed": contig != ref_chrom,
        "samples": len(samples),
        "records": len(recs) + sum(skipped.values()),
        "skipped": skipped,
        "snv_records": len(recs),
        "matched": int(match.matched.sum()),
        "flipped": int(match.swapped.sum()),
        "unmatched": {r: int((unmatched["reason"] == r).sum()) for r in UNMATCHED_REASONS},
        "reference_sites": len(sites),
        "unphased_heterozygotes": int(unphased.sum()),
        "sites_with_unphased_heterozygotes": int(unphased.any(axis=1).sum()),
    }
    if strand is not None:
        report["strand_frequency_check"] = strand
    log.info(
        "%s: %d records on %s, %d matched (%d flipped), %d unmatched, skipped %s",
        path,
        report["records"],
        contig,
        report["matched"],
        report["flipped"],
        len(unmatched),
        skip_counts(skipped) or "none",
    )
    match.warn(path)
    if report["matched"] < LOW_OVERLAP * len(recs):
        log.warning(
            "%s: only %d of its %d SNV records on %s (%.0f %%) match a reference site; the rest are "
            "not used (unmatched.tsv says why). So low an overlap is usually another genome build "
            "(liftover with `bcftools +liftover` or CrossMap) or another chromosome",
            path, report["matched"], len(recs), contig, 100 * report["matched"] / len(recs),
        )  # fmt: skip
    site = match.idx[keep].astype(np.int64)
    unphased_kept = unphased if allow_unphased else None
    return AlignedTarget(path, contig, samples, site, alleles, report, unmatched, unphased_kept)


def _refuse_two_matches(path: str, recs: list, keep: np.ndarray) -> None:
    """Two records at one position that both match the reference site (a duplicate, or the same
    SNV with REF/ALT swapped): which to use would be the file's order. A second record of other
    alleles there (an array's second probe, a split multi-allelic) is unmatched, as Beagle drops
    it, not an error."""
    pos = np.fromiter((recs[i][1] for i in keep), dtype=np.int64, count=len(keep))
    twice = np.flatnonzero(pos[1:] == pos[:-1])
    if len(twice):
        c, p, ref, alt = recs[keep[twice[0] + 1]]
        raise InputError(
            path,
            f"two biallelic SNV records at position {p} match the reference's site there (this one "
            f"{ref}/{alt})",
            "Drop duplicates (`bcftools norm -d all`), keeping the record you trust; a record of "
            "other alleles at a reference site is left out as unmatched, not an error",
            record=f"{c}:{p}",
        )


def _target_contig(path: str, chrom: str) -> str:
    """``chrom`` as the target names it, among the contigs that hold its records."""
    held = vcf_records_contigs(path)
    try:
        return resolve_contig(path, chrom, available=held)
    except InputError as e:
        raise InputError(
            path,
            f"no records on chromosome {chrom} (the target has records on: "
            f"{', '.join(held[:10]) or 'none'})",
            "The target does not overlap the reference on this chromosome; check `chromosomes:` "
            "and that target and reference use the same genome build",
        ) from e


def _no_match_error(
    path: str,
    contig: str,
    region: tuple[int, int] | None,
    recs: list,
    skipped: dict[str, int],
    match: _SiteMatch,
) -> InputError:
    """The error for a target (or a chunk's region of it) with no record at a reference site: none
    there at all (a chunk the target does not reach, a chromosome it lacks), or none that matches
    (another genome build, another strand)."""
    where = where_words(contig, region)
    if not recs:
        what = skip_counts(skipped)
        none = (
            f"no biallelic SNV records {where} (skipped: {what})" if what else f"no records {where}"
        )
        if region is None:
            return InputError(
                path,
                f"the target has {none}",
                "Give the chromosome's genotypes at the array sites (`bcftools index -s` lists a "
                "file's contigs), or leave it out of `chromosomes:`",
            )
        return InputError(
            path,
            f"the target has {none}, where the panel has sites to impute",
            "Lengthen chunks.length (or chunks.overlap) so that every chunk holds typed sites of "
            "the target, or give a panel restricted to the region the target covers "
            "(`bcftools view -r`)",
        )
    return InputError(
        path,
        f"none of its {len(recs)} SNV records {where} matches a reference site by "
        f"position and alleles ({int(match.at_pos.sum())} share a position, "
        f"{int(match.strand_flip.sum())} of them with the reference's alleles on the other "
        "strand)",
        "The target does not overlap the reference: check that both use the same genome build "
        "(liftover with `bcftools +liftover` or CrossMap) and the same strand",
    )


def _target_records(
    path: str, contig: str, region: tuple[int, int] | None = None
) -> tuple[list[tuple[str, int, str, str]], list[str], dict[str, int]]:
    """(chrom, pos, ref, alt) and the GT fields of the target's biallelic SNVs on ``contig`` (or its
    ``region``), and the records skipped by reason; out-of-order records are an error, a line cut
    short too."""
    skipped = dict.fromkeys(TARGET_SKIP_REASONS, 0)
    recs: list[tuple[str, int, str, str]] = []
    gts: list[str] = []
    records = RecordFilter(path, False, skipped, same_position=True)
    for line in query_lines(path, "%CHROM\t%POS\t%REF\t%ALT\t[%GT\t]\n", contig, region):
        if not line:
            continue
        c, pos_s, ref, alt, gt = line.split("\t", 4)
        pos = int(pos_s)
        ref, alt = ref.upper(), alt.upper()  # bases are case-insensitive, as in the panel
        if not records.keep(c, pos, ref, alt):
            continue
        recs.append((c, pos, ref, alt))
        gts.append(gt)
    if any(not g.strip("./|\t") for g in gts):
        # a record without a single called allele: a line cut short reads like that
        short = short_record_error(path)
        if short is not None:
            raise short
    return recs, gts, skipped


def strand_llr(alt_count: np.ndarray, called: np.ndarray, reference_af: np.ndarray) -> np.ndarray:
    """The log-likelihood ratio of ``alt_count`` ALT alleles among ``called`` ones under a target
    frequency of 1 - r (the other strand) against r (the reference's ALT frequency, clipped to
    ``STRAND_AF_CLIP``, 1 - ``STRAND_AF_CLIP``): ``(2k - n) log((1 - r) / r)``, the binomial
    coefficients cancelling."""
    r = np.clip(np.asarray(reference_af, dtype=np.float64), STRAND_AF_CLIP, 1 - STRAND_AF_CLIP)
    k = np.asarray(alt_count, dtype=np.float64)
    return (2 * k - np.asarray(called, dtype=np.float64)) * np.log((1 - r) / r)


def strand_frequency_check(
    alleles: np.ndarray, reference_af: np.ndarray, check: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Which records (rows of ``alleles``, reference orientation, -1 missing) among ``check`` are on
    the other strand by their frequency: reference MAF <= ``STRAND_CHECK_MAX_MAF`` and ``strand_llr``
    above ``STRAND_LLR_THRESHOLD``. Returns the flags and the counts for the report."""
    called = (alleles >= 0).sum(axis=1)
    alt = (alleles == 1).sum(axis=1)
    r = np.asarray(reference_af, dtype=np.float64)
    near_half = np.minimum(r, 1 - r) > STRAND_CHECK_MAX_MAF
    # the largest ratio the site can give: every called allele the reference's minor one
    reachable = np.abs(strand_llr(called, called, r)) > STRAND_LLR_THRESHOLD
    checked = check & ~near_half & reachable
    flagged = checked & (strand_llr(alt, called, r) > STRAND_LLR_THRESHOLD)
    counts = {
        "palindromic": int(check.sum()),
        "checked": int(checked.sum()),
        "maf_above_max": int((check & near_half).sum()),
        "too_few_alleles": int((check & ~near_half & ~reachable).sum()),
        "flagged": int(flagged.sum()),
        "max_maf": STRAND_CHECK_MAX_MAF,
        "llr_threshold": round(STRAND_LLR_THRESHOLD, 4),
    }
    return flagged, counts


class _SiteMatch:
    """Target SNVs (chrom, pos, ref, alt) against the reference ``sites``, by position and alleles:
    ``idx`` the reference site at each one's position (where ``at_pos``), ``same`` or ``swapped``
    alleles (REF/ALT the other way round), ``matched`` either; ``strand_flip`` the reference's alleles
    complemented (either orientation, not A/T or C/G, whose complement is themselves);
    ``frequency_flagged`` those left out by ``drop_for_frequency``."""

    def __init__(self, recs: list[tuple[str, int, str, str]], sites: pd.DataFrame):
        # Typed sites are SNVs: a reference indel at an SNV's position is another site, never the
        # one a target SNV there is matched to (the panel holds at most one SNV per position).
        snv = np.flatnonzero(snv_sites(sites))
        ref_pos = sites["pos"].to_numpy(dtype=np.int64)[snv]
        # SNV rows first: numpy's str width is the longest allele's, and a panel's indel may be a
        # 100 kb deletion written out (1000 Genomes phase 1), 16 GB over a region's sites
        ref_ref = sites["ref"].to_numpy()[snv].astype(str)
        ref_alt = sites["alt"].to_numpy()[snv].astype(str)
        self.chrom = [r[0] for r in recs]
        self.pos = np.fromiter((r[1] for r in recs), dtype=np.int64, count=len(recs))
        self.ref = np.array([r[2] for r in recs], dtype=str)
        self.alt = np.array([r[3] for r in recs], dtype=str)
        at = np.searchsorted(ref_pos, self.pos)
        idx_c = np.minimum(at, max(len(ref_pos) - 1, 0))
        self.at_pos = (at < len(ref_pos)) & (ref_pos[idx_c] == self.pos)
        self.idx = snv[idx_c] if len(snv) else at
        self.same = self.at_pos & (ref_ref[idx_c] == self.ref) & (ref_alt[idx_c] == self.alt)
        swapped = self.at_pos & (ref_ref[idx_c] == self.alt) & (ref_alt[idx_c] == self.ref)
        # A/T read as T/A may be the other strand (genotypes as they are) or swapped alleles
        # (genotypes 0<->1): no way to tell, so neither is guessed
        palindromic = np.fromiter(
            ((r, a) in PALINDROMIC for r, a in zip(self.ref, self.alt, strict=True)),
            bool,
            len(recs),
        )
        self.palindromic = palindromic
        self.ambiguous = swapped & palindromic
        self.swapped = swapped & ~palindromic
        self.matched = self.same | self.swapped
        comp_ref = np.array([COMPLEMENT.get(b, b) for b in self.ref], dtype=str)
        comp_alt = np.array([COMPLEMENT.get(b, b) for b in self.alt], dtype=str)
        as_is = (ref_ref[idx_c] == comp_ref) & (ref_alt[idx_c] == comp_alt)
        turned = (ref_ref[idx_c] == comp_alt) & (ref_alt[idx_c] == comp_ref)
        # an A/T record's complement is its own swap: ambiguous_strand or same, never this
        self.strand_flip = self.at_pos & (as_is | turned) & ~palindromic
        self.frequency_flagged = np.zeros(len(recs), dtype=bool)

    def drop_for_frequency(self, rows: np.ndarray) -> None:
        """Unmatch the records ``rows``: A/T or C/G whose frequency says the other strand."""
        self.frequency_flagged[rows] = True
        self.matched[rows] = False

    def warn(self, path: str) -> None:
        """The warnings about records left out for their strand, each with its count and fix."""
        if self.ambiguous.any():
            log.warning(
                "%s: %d A/T or C/G records have the reference's REF/ALT the other way round; a "
                "strand flip and a REF/ALT swap look the same there, so they are not used "
                "(ambiguous_strand in unmatched.tsv). Put the target on the forward strand with REF "
                "as in the reference genome (`bcftools +fixref`) to keep them",
                path,
                int(self.ambiguous.sum()),
            )
        if self.strand_flip.any():
            log.warning(
                "%s: %d records have the reference's alleles on the other strand (A/G where the "
                "reference has T/C); the target, or part of it, looks like it is on the other "
                "strand. They are not used (strand_flip in unmatched.tsv), and its A/T and C/G "
                "records cannot be checked by their alleles (they read the same on both strands; "
                "only those whose frequency gives them away are left out, as strand_frequency). %s",
                path,
                int(self.strand_flip.sum()),
                STRAND_FIX_HINT,
            )
        if self.frequency_flagged.any():
            log.warning(
                "%s: %d A/T or C/G records have an ALT frequency that fits the reference's REF "
                "frequency (likelihood ratio above %.0f): genotyped on the other strand, their "
                "genotypes inverted. They are not used (strand_frequency in unmatched.tsv). %s",
                path,
                int(self.frequency_flagged.sum()),
                math.exp(STRAND_LLR_THRESHOLD),
                STRAND_FIX_HINT,
            )

    def unmatched(self) -> pd.DataFrame:
        """The records that match no reference site, with the reason (``unmatched.tsv``)."""
        no = ~self.matched
        reason = np.select(
            [self.ambiguous, self.frequency_flagged, self.strand_flip, self.at_pos],
            ["ambiguous_strand", "strand_frequency", "strand_flip", "allele_mismatch"],
            "not_in_reference",
        )
        return pd.DataFrame(
            {
                "chrom": [self.chrom[i] for i in np.flatnonzero(no)],
                "pos": self.pos[no],
                "ref": self.ref[no],
                "alt": self.alt[no],
                "reason": reason[no],
            }
        )


def apply_missing_rule(target: AlignedTarget, max_missing: float) -> AlignedTarget:
    """Drop typed sites missing in more than ``max_missing`` of the haplotypes (they become untyped)."""
    miss = target.alleles < 0
    frac = miss.mean(axis=1) if target.alleles.shape[1] else np.zeros(len(target.site))
    drop = frac > max_missing
    kept = target.alleles[~drop]
    target.report["missing"] = {
        "max_missing": max_missing,
        "alleles_missing": int(miss.sum()),
        "sites_with_missing": int(miss.any(axis=1).sum()),
        "sites_untyped_for_missingness": int(drop.sum()),
        "alleles_missing_at_typed_sites": int((kept < 0).sum()),
    }
    if drop.any():
        log.warning(
            "%s: %d typed sites miss more than %.0f%% of their genotypes; they are imputed instead",
            target.path,
            int(drop.sum()),
            100 * max_missing,
        )
    if (kept < 0).any():
        log.info(
            "%s: %d missing alleles at typed sites will be imputed",
            target.path,
            int((kept < 0).sum()),
        )
    target.site = target.site[~drop]
    target.alleles = kept
    if target.unphased is not None:
        target.unphased = target.unphased[~drop]
        target.report["unphased_heterozygotes_at_typed_sites"] = int(target.unphased.sum())
    target.report["typed"] = len(target.site)
    if not len(target.site):
        raise InputError(
            target.path,
            "no typed site is left: every matched site misses too many genotypes",
            f"Raise impute.max_missing (now {max_missing}) or check the file",
        )
    return target


def harmonise_target(
    target_vcf: str | os.PathLike,
    windows_dir: str | os.PathLike,
    split_tsv: str | os.PathLike,
    mask_store: str | os.PathLike,
    out_dir: str | os.PathLike,
    chrom: str,
    max_missing: float = 0.05,
    panel_vcf: str | os.PathLike | None = None,
    reference_splits: list[str] | tuple[str, ...] = ("train",),
    phase: str | None = None,
    region: tuple[int, int] | None = None,
) -> dict:
    """The ``target_mask`` stage: align the target, write it harmonised to the reference (reference
    naming and orientation, typed sites only: what Beagle, Minimac4 and our imputation all read),
    store the mask it implies by hash, and write ``alignment.json`` (the hash and the counts).
    The target must share no sample with the imputation reference (``reference_splits``).

    ``phase`` is the workflow's ``impute.phase``: with ``auto`` or ``always`` unphased heterozygotes
    are accepted and written unphased (``0/1``) for the ``phase`` stage, and ``alignment.json`` says
    whether the target is to be phased (``phasing.needs_phasing``: always, or auto with an unphased
    heterozygote). ``never`` and None (outside the workflow, which does not phase) refuse them."""
    from .split import load_split
    from .windows import reference_af, sites_with_hash

    if phase is not None and phase not in PHASE_MODES:
        raise InputError(
            "config", f"impute.phase is {phase!r}", f"Use one of {', '.join(PHASE_MODES)}"
        )
    allow = phase in ("auto", "always")
    hint = WORKFLOW_PHASING_HINT if phase == "never" else PHASING_HINT
    sites, slh = sites_with_hash(windows_dir)
    split = load_split(split_tsv)
    reference_samples = [s for name in reference_splits for s in split[name]]
    # the strand check compares with the frequency of the panel every method imputes from
    sites = sites.assign(af=reference_af(sites, reference_splits, windows_dir))
    target = read_target(target_vcf, chrom, sites, allow_unphased=allow, hint=hint, region=region)
    check_disjoint(reference_samples, target.samples, target_vcf)
    target = apply_missing_rule(target, max_missing)

    masked = np.ones(len(sites), dtype=bool)
    masked[target.site] = False
    h = store_mask(
        mask_store,
        masked,
        dict(TARGET_MASK_SPEC),
        sites,
        slh,
        provenance={"target_vcf": str(target_vcf), "typed_sites": int((~masked).sum())},
    )
    out = Path(out_dir)
    ref_chrom = str(sites["chrom"].iloc[0])
    length = None
    if panel_vcf:
        length = contig_lengths(panel_vcf).get(ref_chrom)
    write_phased_vcf(
        out / "target.vcf.gz",
        ref_chrom,
        sites.iloc[target.site],
        target.samples,
        target.alleles,
        length,
        meta=[
            f"##ragimpute_harmonised=<source={target_vcf},mask_hash={h},"
            f"flipped={target.report['flipped']},max_missing={max_missing}>"
        ],
        unphased=target.unphased,
    )
    write_tsv(out / "unmatched.tsv", target.unmatched)
    info = {
        "chrom": ref_chrom,
        "hash": h,
        "mask_spec": TARGET_MASK_SPEC,
        "reference_splits": list(reference_splits),
        "ragimpute": __version__,
        **target.report,
        "phasing": _phasing_report(target, target_vcf, phase),
    }
    write_json(out / "alignment.json", info)
    log.info(
        "target mask %s: %d of %d reference sites typed, %d to impute",
        h,
        len(target.site),
        len(sites),
        len(sites) - len(target.site),
    )
    return info


def _phasing_report(target: AlignedTarget, target_vcf, phase: str | None) -> dict:
    """``alignment.json``'s ``phasing``: the unphased heterozygotes and whether the target is to be
    phased (``impute.phase`` always, or auto with an unphased heterozygote)."""
    n_unphased = 0 if target.unphased is None else int(target.unphased.sum())
    if n_unphased:
        log.info(
            "%s: %d unphased heterozygotes at %d typed sites; the phase stage phases them",
            target_vcf,
            n_unphased,
            int(target.unphased.any(axis=1).sum()),
        )
    return {
        "phase": phase or "never",
        "unphased_heterozygotes": n_unphased,
        "needs_phasing": phase == "always" or (phase == "auto" and n_unphased > 0),
    }


def _windowed_span(windows_dir) -> tuple[pd.DataFrame, tuple[int, int] | None]:
    """The windowed sites and their span: the whole chromosome, or one chunk of it."""
    from .windows import sites_with_hash

    sites, _ = sites_with_hash(windows_dir)
    span = (int(sites["pos"].iloc[0]), int(sites["pos"].iloc[-1])) if len(sites) else None
    return sites, span


def _same_sites(read: pd.DataFrame, windowed: pd.DataFrame) -> bool:
    """Whether the panel's records read now are the windowed sites, by position and alleles (an SNV
    and an indel can share a position)."""
    return len(read) == len(windowed) and all(
        np.array_equal(read[c].to_numpy(), windowed[c].to_numpy()) for c in ("pos", "ref", "alt")
    )


def _stale_windows(windows_dir) -> InputError:
    return InputError(
        windows_dir,
        "the windowed sites differ from the panel's; the window stage is stale",
        "Re-run the workflow (snakemake re-runs windowing)",
    )


def _panel_at_sites(panel_vcf, windows_dir, chrom, samples, pass_only, indels=False):
    from .vcf_io import read_panel

    sites, span = _windowed_span(windows_dir)
    panel = read_panel(panel_vcf, chrom, samples, pass_only, span, indels)
    if not _same_sites(panel.sites, sites):
        raise _stale_windows(windows_dir)
    return panel, sites, contig_lengths(panel_vcf).get(panel.chrom)


def write_reference_vcf(
    panel_vcf: str | os.PathLike,
    split_tsv: str | os.PathLike,
    windows_dir: str | os.PathLike,
    chrom: str,
    out_vcf: str | os.PathLike,
    pass_only: bool = True,
    splits: list[str] | tuple[str, ...] = ("train",),
    indels: bool = False,
) -> dict:
    """The reference panel as Beagle and Minimac4 get it: the samples of ``splits`` (the imputation
    reference, the same as our engine's) at every windowed site (the biallelic SNVs our own index
    holds, with ``indels`` its indels too, which they then impute as we do), phased, with the
    panel's contig length.

    The panel is read and written a block of records at a time (``PanelStream``): a whole
    chromosome of a large panel (60 Mb x 5,000 haplotypes: 3.2 GB of alleles) never sits in memory.
    """
    from .split import load_split
    from .vcf_io import PanelStream

    split = load_split(split_tsv)
    samples = [s for name in splits for s in split[name]]
    sites, span = _windowed_span(windows_dir)
    stream = PanelStream(panel_vcf, chrom, samples, pass_only, span, indels)
    length = contig_lengths(panel_vcf).get(stream.chrom)
    meta = [f"##ragimpute_source=<panel={panel_vcf},split={split_tsv},samples={'+'.join(splits)}>"]
    done = 0
    with phased_vcf_writer(out_vcf, stream.chrom, samples, length, meta) as write_sites:
        for kept, haplotypes in stream:
            n = len(kept)
            if not _same_sites(site_table(kept), sites.iloc[done : done + n]):
                raise _stale_windows(windows_dir)
            write_sites(sites.iloc[done : done + n], haplotypes)
            done += n
        if done != len(sites):
            raise _stale_windows(windows_dir)
    return {"chrom": stream.chrom, "samples": len(samples), "sites": len(sites)}


def make_demo_targets(
    panel_vcf: str | os.PathLike,
    split_tsv: str | os.PathLike,
    windows_dir: str | os.PathLike,
    array_manifest: str | os.PathLike,
    chrom: str,
    target_vcf: str | os.PathLike,
    truth_vcf: str | os.PathLike,
    pass_only: bool = True,
    noise: dict | None = None,
    report_json: str | os.PathLike | None = None,
    indels: bool = False,
) -> dict:
    """Targets from the held-out test split: ``target_vcf`` at the array sites only (what an array
    would have typed) and ``truth_vcf`` at every site (what evaluation scores against).

    ``noise`` makes the target what a genotyping array delivers (``demo.ArrayNoise`` fields:
    ``unphased`` genotypes, a ``genotype_error`` and a ``missing_rate`` per genotype, ``seed``); the
    truth stays the true phased haplotypes. What was drawn is in the target's header and in
    ``report_json``."""
    from .demo import ArrayNoise, add_array_noise
    from .masks import match_sites, read_site_list
    from .split import load_split

    test = load_split(split_tsv)["test"]
    panel, sites, length = _panel_at_sites(panel_vcf, windows_dir, chrom, test, pass_only, indels)
    on_array = match_sites(sites, read_site_list(array_manifest), array_manifest)
    truth = panel.haplotypes.astype(np.int8)
    meta = [f"##ragimpute_source=<panel={panel_vcf},split={split_tsv},samples=test>"]
    write_phased_vcf(truth_vcf, panel.chrom, sites, test, truth, length, meta)
    spec = ArrayNoise(**(noise or {}))
    typed, drawn = add_array_noise(truth[on_array], spec, panel.chrom)
    unphased = np.ones((len(typed), len(test)), dtype=bool) if spec.unphased else None
    if spec.active():
        meta.append(
            "##ragimpute_demo_targets=<"
            + ",".join(f"{k}={v}" for k, v in {**spec.to_dict(), **drawn}.items())
            + ">"
        )
    write_phased_vcf(
        target_vcf, panel.chrom, sites.loc[on_array], test, typed, length, meta, unphased=unphased
    )
    info = {
        "chrom": panel.chrom,
        "samples": len(test),
        "target_sites": int(on_array.sum()),
        "noise": spec.to_dict(),
        **drawn,
    }
    if report_json:
        write_json(report_json, info)
    return info


def write_minimac4_target(
    aligned_vcf: str | os.PathLike, out_vcf: str | os.PathLike, report_json: str | os.PathLike
) -> dict:
    """The harmonised target as Minimac4 can take it: without the typed sites where any allele is
    missing (``.|.``, ``.|1``). Minimac4 4.1 aborts on some missing calls (an assertion in its dosage
    writer), so those sites are typed for nobody in its input and it imputes them for everyone;
    Beagle and our methods get every typed site. A phased target comes with the phaser's fills
    (``phasing._write_filled``), so that only calls the phaser left missing remove a site. The
    counts go to ``report_json`` and the log."""
    from .phasing import FILLED_KEY
    from .vcf_write import bgzip_vcf_writer

    check_readable(aligned_vcf)  # cut short: named, not an EOFError (or fewer records)
    kept = dropped = 0
    filled = None
    dropped_at: list[str] = []
    with gzip.open(aligned_vcf, "rt") as f, bgzip_vcf_writer(out_vcf) as write:
        header: list[str] = []
        for line in f:
            if line.startswith("##"):
                header.append(line)
                if line.startswith(FILLED_KEY):
                    filled = int(line.rsplit("missing_alleles_filled=", 1)[1].split(">")[0])
                continue
            if line.startswith("#"):
                header.append(
                    "##ragimpute_minimac4_target=<typed sites with a missing call left out, "
                    "for Minimac4 to impute>\n"
                )
                header.append(line)
                write("".join(header))
                continue
            fields = line.rstrip("\n").split("\t")
            if any("." in gt for gt in fields[9:]):
                dropped += 1
                if len(dropped_at) < 10:
                    dropped_at.append(f"{fields[0]}:{fields[1]}")
                continue
            kept += 1
            write(line)
    report = {
        "source": str(aligned_vcf),
        "typed_sites": kept + dropped,
        "sites_kept": kept,
        "sites_with_missing_calls_left_out": dropped,
        "first_left_out": dropped_at,
        "missing_alleles_filled_by_the_phaser": filled,
    }
    write_json(report_json, report)
    if filled:
        log.info("%s: Minimac4's target carries the phaser's fills of %d missing alleles (the other "
                 "methods impute them themselves)", aligned_vcf, filled)  # fmt: skip
    if dropped:
        log.warning(
            "%s: %d of %d typed sites have a missing call; Minimac4 cannot take them, so they are left "
            "out of its target and it imputes them for every sample (%s%s)",
            aligned_vcf,
            dropped,
            kept + dropped,
            ", ".join(dropped_at),
            " ..." if dropped > len(dropped_at) else "",
        )
    return report
