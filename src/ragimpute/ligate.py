"""Putting a chromosome's imputed VCF back together: target batches side by side, chunks end to end.

- **Batches** (``merge_batches``): the VCFs of batches of target samples, imputed on the same sites,
  become one VCF with every sample; INFO ``AF`` and ``R2`` are recomputed over all targets from each
  batch's exact sums (``<vcf>.stats.npz``: per site the sum and sum of squares of the haplotype ALT
  probabilities in units of 1/65535, and the number of haplotypes), so that the merged file equals one
  imputed in a single batch, INFO included.
- **Chunks** (``ligate``): the VCFs of overlapping chunks become one VCF in which every site comes from
  the one chunk whose core holds it (``ragimpute.chunks``); the chunks overlap so that no site is
  imputed near the edge of the chunk it is taken from.

Both stream the inputs line by line and write with ``bgzip_vcf_writer`` (bgzipped, indexed, atomic).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import ArtifactError
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
    with gzip.open(path, "rt") as f:
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


def merge_batches(
    parts: list[tuple[str | os.PathLike, str | os.PathLike]], out_vcf: str | os.PathLike
) -> dict:
    """Merge the sample columns of batch VCFs (with their stats files), recomputing INFO AF and R2."""
    stats = [np.load(s) for _, s in parts]
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
    meta = [m for m in heads[0][0] if not m.startswith(IMPUTE_KEY)]
    meta.append(f"##ragimpute_merged=<batches={len(parts)},samples={len(samples)}>\n")
    meta += [IMPUTE_KEY + f"batch={_batch_name(v)}," + m[len(IMPUTE_KEY) :]
             for (v, _), (m_all, _, _) in zip(parts, heads, strict=True)
             for m in m_all if m.startswith(IMPUTE_KEY)]  # fmt: skip
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
    meta = [m for m in heads[0][0] if not m.startswith(IMPUTE_KEY)]
    meta.append(f"##ragimpute_ligated=<chunks={len(parts)}>\n")
    meta += [IMPUTE_KEY + f"chunk={Path(v).parent.name}," + m[len(IMPUTE_KEY) :]
             for (v, _, _), (m_all, _, _) in zip(parts, heads, strict=True)
             for m in m_all if m.startswith(IMPUTE_KEY)]  # fmt: skip
    kept = []
    last = 0
    with bgzip_vcf_writer(out_vcf) as write:
        write("".join(meta) + "\t".join(columns) + "\n")
        for (v, lo, hi), (_, _, records) in zip(parts, heads, strict=True):
            n = 0
            for line in records:
                pos = int(line.split("\t", 2)[1])
                if lo <= pos <= hi:
                    if pos <= last:
                        raise ArtifactError(f"{v}: record at {pos} out of order after {last}")
                    write(line)
                    last = pos
                    n += 1
            kept.append(n)
    return {"chunks": len(parts), "records": kept, "output": str(Path(out_vcf))}


def merge_batch_stage(
    vcfs: list[str], stats: list[str], out_vcf: str | os.PathLike, report_json: str | os.PathLike
) -> dict:
    """The merge_batches rule: the merged VCF, and one report from the batches' reports (counts
    summed over the batches, each batch's time and memory kept)."""
    from .atomic import read_json, write_json

    info = merge_batches(list(zip(vcfs, stats, strict=True)), out_vcf)
    reports = [read_json(str(v)[: -len(".vcf.gz")] + ".json") for v in vcfs]
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
