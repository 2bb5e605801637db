"""Putting a chromosome's imputed VCF back together: target batches side by side, chunks end to end.

- **Batches** (``merge_batches``): the VCFs of batches of target samples, imputed on the same sites,
  become one VCF with every sample; INFO ``AF`` and ``R2`` are recomputed over all targets from each
  batch's exact sums (``<vcf>.stats.npz``: per site the sum and sum of squares of the haplotype ALT
  probabilities in units of 1/65535, and the number of haplotypes), so that the merged file equals one
  imputed in a single batch, INFO included.
- **Chunks** (``ligate``): the VCFs of overlapping chunks become one VCF in which every site comes from
  the one chunk whose core holds it (``ragimpute.chunks``); the chunks overlap so that no site is
  imputed near the edge of the chunk it is taken from. Each chunk's targets are phased on their own
  (the ``phase`` rule, and Beagle, run per chunk), so a sample's two haplotypes can come out the
  other way round in the next chunk: as ``bcftools concat --ligate`` does, a sample whose
  heterozygous calls at the typed sites of the overlap disagree in phase with the chunk before more
  often than they agree has its haplotypes swapped (GT, and HDS, AP1/AP2 where present) over the
  whole chunk.

Both stream the inputs line by line and write with ``bgzip_vcf_writer`` (bgzipped, indexed, atomic).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import bgzf
from .atomic import atomic_path, reading
from .errors import ArtifactError, UnreadableArtifactError, rebuild_hint
from .logs import log
from .vcf_write import bgzip_vcf_writer, info_strings

VCF_COLUMNS = ("#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT")


def write_stats(
    path: str | os.PathLike, pos: np.ndarray, p_sum: np.ndarray, p_sq: np.ndarray, n_hap: int
) -> None:
    """The exact per-site sums a batch contributes to INFO AF/R2 (integers in units of 1/65535)."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, pos=np.asarray(pos, np.int64), sum=np.asarray(p_sum, np.int64),
                     sumsq=np.asarray(p_sq, np.int64), n_hap=np.int64(n_hap))  # fmt: skip


def _lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of an imputed (chunk or batch) VCF; one cut short is an error naming it, not a
    traceback or, cut at a BGZF block boundary, a VCF with fewer records."""
    if bgzf.is_bgzf(path) and not bgzf.ends_with_eof_block(path):
        raise UnreadableArtifactError(
            f"{path} is truncated (the BGZF end-of-file block is missing). "
            + rebuild_hint("impute")
        )
    with reading(path, "impute"), gzip.open(path, "rt") as f:
        yield from f


def _split_header(path: str | os.PathLike) -> tuple[list[str], list[str], Iterator[str]]:
    """(meta lines, #CHROM columns, record lines) of a VCF."""
    lines = _lines(path)
    meta: list[str] = []
    for line in lines:
        if line.startswith("##"):
            meta.append(line)
        elif line.startswith("#CHROM"):
            return meta, line.rstrip("\n").split("\t"), lines
        else:
            break
    raise ArtifactError(f"{path}: no #CHROM header line; it is not an imputed VCF of ours")


IMPUTE_KEY = "##ragimpute_impute=<"  # the provenance line each imputation job writes


def _batch_name(vcf: str | os.PathLike) -> str:
    """A batch's name from its file, ``<method>.<batch>.vcf.gz``."""
    return Path(vcf).name.removesuffix(".vcf.gz").rsplit(".", 1)[-1]


def _joined_meta(metas: list[list[str]], labels: list[str], marker: str) -> list[str]:
    """The header lines of a VCF joined from parts: the first part's, less its provenance line,
    then ``marker``, then every part's provenance line with its label (``chunk=...``) first."""
    meta = [m for m in metas[0] if not m.startswith(IMPUTE_KEY)]
    meta.append(marker)
    meta += [IMPUTE_KEY + f"{label}," + m[len(IMPUTE_KEY) :]
             for label, part in zip(labels, metas, strict=True)
             for m in part if m.startswith(IMPUTE_KEY)]  # fmt: skip
    return meta


def _report_of(vcf: str | os.PathLike) -> str:
    """The report an imputation job writes beside its VCF (``<method>.json``)."""
    return str(vcf)[: -len(".vcf.gz")] + ".json"


def merge_batches(
    parts: list[tuple[str | os.PathLike, str | os.PathLike]], out_vcf: str | os.PathLike
) -> dict:
    """Merge the sample columns of batch VCFs (with their stats files), recomputing INFO AF and R2."""
    stats = []
    for _, s in parts:
        with reading(s, "impute"), np.load(s) as st:
            stats.append(dict(st))
    heads = [_split_header(v) for v, _ in parts]
    samples = [s for _, cols, _ in heads for s in cols[9:]]
    if len(set(samples)) != len(samples):
        raise ArtifactError("the batches share samples; they cannot be merged side by side")
    pos = stats[0]["pos"]
    for (v, _), st in zip(parts, stats, strict=True):
        if not np.array_equal(st["pos"], pos):
            raise ArtifactError(f"{v}: its sites differ from the first batch's; impute it again")
    total = sum(st["sum"] for st in stats)
    total_sq = sum(st["sumsq"] for st in stats)
    n_hap = int(sum(int(st["n_hap"]) for st in stats))
    # Each batch estimates its own error rate (and records its own settings): every batch's line is
    # kept, named by its batch, as ligate keeps every chunk's.
    meta = _joined_meta(
        [h[0] for h in heads],
        [f"batch={_batch_name(v)}" for v, _ in parts],
        f"##ragimpute_merged=<batches={len(parts)},samples={len(samples)}>\n",
    )
    columns = heads[0][1][:9] + samples
    readers = [h[2] for h in heads]
    with bgzip_vcf_writer(out_vcf) as write:
        write("".join(meta) + "\t".join(columns) + "\n")
        for i, first in enumerate(readers[0]):
            f = first.rstrip("\n").split("\t")
            rest = [next(r).rstrip("\n").split("\t", 9) for r in readers[1:]]
            if int(f[1]) != pos[i] or any(int(r[1]) != pos[i] for r in rest):
                raise ArtifactError(f"record {i + 1} is not at position {pos[i]} in every batch")
            flag = f[7].rsplit(";", 1)[-1]
            f[7] = info_strings(total[i : i + 1], total_sq[i : i + 1], n_hap, [flag == "TYPED"])[0]
            write("\t".join(f) + "".join("\t" + r[9] for r in rest) + "\n")
    return {"batches": len(parts), "samples": len(samples), "sites": len(pos)}


def _not_run(meta: list[str]) -> str | None:
    """The ``##ragimpute_not_run`` line of a placeholder VCF (a tool that could not run), or None."""
    from .evaluate import NOT_RUN_KEY

    return next((m for m in meta if m.startswith(NOT_RUN_KEY)), None)


def _placeholder(parts, heads, out_vcf: str | os.PathLike) -> dict:
    """A chromosome's placeholder from chunks some of which are placeholders: a tool that could not
    run on a chunk is left out of the whole chromosome, with each such chunk and its reason."""
    from .evaluate import NOT_RUN_KEY, parse_not_run

    method, reasons = "", []
    for (v, _, _), (meta, _, _) in zip(parts, heads, strict=True):
        line = _not_run(meta)
        if line is None:
            continue
        chunk_method, why = parse_not_run(line)
        method = chunk_method or method
        reasons.append(f"chunk {Path(v).parent.name}: {why}")
    reason = "; ".join(reasons).replace('"', "'")
    log.warning("%s did not run on every chunk (%s): %s is a placeholder, and %s is left out of "
                "the comparison", method, reason, out_vcf, method)  # fmt: skip
    with bgzip_vcf_writer(out_vcf) as write:
        write(
            f'##fileformat=VCFv4.2\n{NOT_RUN_KEY}<method={method},reason="{reason}">\n'
            + "\t".join(VCF_COLUMNS)
            + "\n"
        )
    return {"chunks": len(parts), "records": [0] * len(parts), "output": str(Path(out_vcf)),
            "not_run": reason}  # fmt: skip


def _gt_starts(arr: np.ndarray) -> np.ndarray:
    """Where each sample's field (its GT, the first FORMAT field) starts in a record's bytes."""
    return np.flatnonzero(arr == 9)[8:] + 1


def _haplotypes(line: str) -> np.ndarray:
    """(samples, 2) alleles of a record's phased GT calls; -1 where a call is missing or unphased."""
    arr = np.frombuffer(line.encode(), np.uint8)
    at = _gt_starts(arr)
    last = len(arr) - 1
    a, sep = arr[at], arr[np.minimum(at + 1, last)]
    b, end = arr[np.minimum(at + 2, last)], arr[np.minimum(at + 3, last)]
    ok = (sep == ord("|")) & np.isin(a, (48, 49)) & np.isin(b, (48, 49))
    ok &= (at + 3 > last) | np.isin(end, (ord(":"), 9, 10))
    out = np.stack([a.astype(np.int8) - 48, b.astype(np.int8) - 48], axis=1)
    out[~ok] = -1
    return out


def _swap_haplotypes(line: str, swap: np.ndarray) -> str:
    """The record with the two haplotypes of the ``swap`` samples exchanged: the alleles of GT (the
    first FORMAT field, ``a|b``), and the per-haplotype fields HDS (``h0,h1``) and AP1/AP2."""
    b = bytearray(line.encode())
    arr = np.frombuffer(b, np.uint8)
    at = _gt_starts(arr)[: len(swap)][swap]
    at = at[at + 2 < len(arr)]  # a last field shorter than a|b (a file's last line, unended)
    at = at[arr[at + 1] == ord("|")]
    first = arr[at].copy()
    arr[at] = arr[at + 2]
    arr[at + 2] = first
    out = b.decode()
    keys = out.split("\t", 9)[8].split(":")
    if "HDS" not in keys and not {"AP1", "AP2"} <= set(keys):
        return out
    fields = out.rstrip("\n").split("\t")
    for j in np.flatnonzero(swap):
        values = fields[9 + j].split(":")
        if "HDS" in keys and keys.index("HDS") < len(values):
            values[keys.index("HDS")] = ",".join(values[keys.index("HDS")].split(",")[::-1])
        if {"AP1", "AP2"} <= set(keys) and max(keys.index("AP1"), keys.index("AP2")) < len(values):
            i1, i2 = keys.index("AP1"), keys.index("AP2")
            values[i1], values[i2] = values[i2], values[i1]
        fields[9 + j] = ":".join(values)
    return "\t".join(fields) + "\n"


# INFO flags of an imputed record: ours and Beagle's (IMP), Minimac4's (IMPUTED).
IMPUTED_FLAGS = {"IMP", "IMPUTED"}


def _is_typed(line: str) -> bool:
    """Whether a record is a typed site (no imputed flag in its INFO)."""
    return not IMPUTED_FLAGS.intersection(line.split("\t", 8)[7].split(";"))


class _PhaseJoin:
    """Carries each sample's haplotype orientation from one chunk to the next. The chunk before
    records its written calls from where the next chunk begins (``watch``); the next chunk's records
    before its core are compared with them at the same sites, where both call a heterozygote; at its
    first written record the samples that disagree more often than they agree are swapped. The typed
    sites decide (the phaser's phase of the target's own calls); imputed heterozygotes only for a
    sample with none there, since an imputed call can be a tie written the same way round in both
    chunks whatever the phase (allele frequency only: GT 1|0 wherever P(ALT) is the same on both)."""

    def __init__(self, n_samples: int):
        self.n = n_samples
        self.watch_from: int | None = None
        # keyed by (pos, ref, alt): an SNV and an indel may share a position (``panel.indels``)
        self.written: dict[tuple[int, str, str], np.ndarray] = {}
        self.swap = np.zeros(n_samples, bool)
        # agree / disagree per sample, at typed (row 0) and imputed (row 1) sites
        self.votes = np.zeros((2, 2, n_samples), np.int64)
        self.report: list[dict] = []
        self.decided = True

    def start_chunk(self, first: bool, next_start: int | None) -> None:
        """A new chunk (``first``: it keeps its orientation) whose successor's first record is at
        ``next_start`` (None: it is the last)."""
        self.votes[:] = 0
        self.decided = first
        self.watch_from = next_start

    def compare(self, pos: int, line: str) -> None:
        """A record of this chunk before its core: compared with the chunk before, if it wrote it."""
        before = self.written.get(_site_key(pos, line))
        if before is None:
            return
        now = _haplotypes(line)
        both = (before[:, 0] != before[:, 1]) & (now[:, 0] != now[:, 1])
        both &= (before >= 0).all(axis=1) & (now >= 0).all(axis=1)
        same = before[:, 0] == now[:, 0]
        row = 0 if _is_typed(line) else 1
        self.votes[row, 0] += both & same
        self.votes[row, 1] += both & ~same

    def decide(self) -> None:
        """At this chunk's first written record: swap where the overlap says so."""
        if self.decided:
            return
        typed = self.votes[0].sum(axis=0) > 0
        agree, disagree = np.where(typed, self.votes[0], self.votes[1])
        self.swap = disagree > agree
        compared = self.votes.sum(axis=(0, 1))
        self.report.append(
            {
                "het_sites_compared": int(compared.sum()),
                "samples_swapped": int(self.swap.sum()),
                "samples_decided_on_imputed_sites": int((~typed & (compared > 0)).sum()),
                "samples_without_a_shared_heterozygote": int((compared == 0).sum()),
            }
        )
        self.written = {}
        self.decided = True

    def written_line(self, pos: int, line: str) -> str:
        """A record as it is written (swapped where decided), remembered for the next chunk."""
        if self.swap.any():
            line = _swap_haplotypes(line, self.swap)
        if self.watch_from is not None and pos >= self.watch_from:
            self.written[_site_key(pos, line)] = _haplotypes(line)
        return line


def _site_key(pos: int, line: str) -> tuple[int, str, str]:
    """A record's site: position and alleles, the identity of a site wherever several share a
    position."""
    f = line.split("\t", 5)
    return pos, f[3], f[4]


def _peek_first_position(records: Iterator[str]) -> tuple[int | None, Iterator[str]]:
    """The position of an iterator's first record, and the iterator with that record put back."""
    import itertools

    first = next(records, None)
    if first is None:
        return None, iter(())
    return int(first.split("\t", 2)[1]), itertools.chain([first], records)


def ligate(parts: list[tuple[str | os.PathLike, int, int]], out_vcf: str | os.PathLike) -> dict:
    """One VCF from chunk VCFs: each record from the part whose core (first, last bp) holds it. The
    provenance line of every chunk is kept, named by its chunk. A placeholder among the parts (a
    baseline that could not run on a chunk) makes the chromosome's VCF a placeholder too."""
    heads = [_split_header(v) for v, _, _ in parts]
    if any(_not_run(meta) for meta, _, _ in heads):
        return _placeholder(parts, heads, out_vcf)
    columns = heads[0][1]
    for (v, _, _), (_, cols, _) in zip(parts, heads, strict=True):
        if cols != columns:
            raise ArtifactError(f"{v}: other samples than {parts[0][0]}; impute it again")
    meta = _joined_meta(
        [h[0] for h in heads],
        [f"chunk={Path(v).parent.name}" for v, _, _ in parts],
        f"##ragimpute_ligated=<chunks={len(parts)}>\n",
    )
    records = [records for _, _, records in heads]
    starts = [None] * len(parts)
    for k in range(1, len(parts)):
        starts[k], records[k] = _peek_first_position(records[k])
    join = _PhaseJoin(len(columns) - 9)
    kept = []
    last = 0
    at_last: set[tuple[int, str, str]] = set()  # the sites written at ``last``
    with bgzip_vcf_writer(out_vcf) as write:
        write("".join(meta) + "\t".join(columns) + "\n")
        for k, ((v, lo, hi), lines) in enumerate(zip(parts, records, strict=True)):
            join.start_chunk(k == 0, starts[k + 1] if k + 1 < len(parts) else None)
            n = 0
            for line in lines:
                pos = int(line.split("\t", 2)[1])
                if pos < lo:
                    join.compare(pos, line)
                elif pos <= hi:
                    key = _site_key(pos, line)
                    if pos < last or key in at_last:
                        raise ArtifactError(f"{v}: record at {pos} out of order after {last}")
                    at_last = (at_last if pos == last else set()) | {key}
                    join.decide()
                    write(join.written_line(pos, line))
                    last = pos
                    n += 1
            join.decide()  # a chunk that wrote no record still has its join reported
            kept.append(n)
    _log_joins(out_vcf, parts, join.report)
    return {"chunks": len(parts), "records": kept, "output": str(Path(out_vcf)),
            "phase_joins": join.report}  # fmt: skip


def _log_joins(out_vcf, parts, report: list[dict]) -> None:
    """How each chunk's haplotypes were put in line with the chunk before (the ligate log)."""
    for (v, _, _), r in zip(parts[1:], report, strict=False):
        log.info("%s: %s: haplotypes of %d samples swapped to match the chunk before (%d "
                 "heterozygous calls compared in the overlap)", out_vcf, v,
                 r["samples_swapped"], r["het_sites_compared"])  # fmt: skip
        if r["samples_without_a_shared_heterozygote"]:
            log.warning(
                "%s: %d samples share no heterozygous call with the chunk before %s in the "
                "overlap: their haplotypes may be the other way round from there on (phase is "
                "not carried across the join). Lengthen chunks.overlap",
                out_vcf, r["samples_without_a_shared_heterozygote"], v,
            )  # fmt: skip


def ligate_stage(
    parts: list[tuple[str | os.PathLike, int, int]],
    out_vcf: str | os.PathLike,
    report_json: str | os.PathLike,
) -> dict:
    """The ligate rule: the chromosome's VCF, and its report beside it (as an unchunked
    chromosome's): the chunks, the records each gave, the phase joins and each chunk's own report."""
    from .atomic import write_json

    report = ligate(parts, out_vcf)
    chunk_reports = [_report_of(v) for v, _, _ in parts]
    report["chunk_reports"] = [p if Path(p).exists() else None for p in chunk_reports]
    write_json(report_json, report)
    return report


def merge_batch_stage(
    vcfs: list[str], stats: list[str], out_vcf: str | os.PathLike, report_json: str | os.PathLike
) -> dict:
    """The merge_batches rule: the merged VCF, and one report from the batches' reports (counts
    summed over the batches, each batch's time and memory kept)."""
    from .atomic import read_json, write_json

    info = merge_batches(list(zip(vcfs, stats, strict=True)), out_vcf)
    reports = [read_json(_report_of(v)) for v in vcfs]
    report = dict(reports[0])
    # each batch estimates its own error rate: it is reported per batch, not batch 0's for all
    for key in ("sample_batch", "error"):
        report.pop(key, None)
    if isinstance(report.get("engine"), dict):
        report["engine"] = {k: v for k, v in report["engine"].items() if k != "error"}
    report.update(
        output=str(out_vcf),
        samples=info["samples"],
        missing_alleles_imputed_at_typed_sites=sum(
            r.get("missing_alleles_imputed_at_typed_sites", 0) for r in reports
        ),
        batches=[
            {
                "output": str(v),
                **{k: r.get(k) for k in ("sample_batch", "error", "wall_seconds", "peak_rss_mb")},
            }
            for v, r in zip(vcfs, reports, strict=True)
        ],
    )
    write_json(report_json, report)
    return report
