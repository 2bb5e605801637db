"""The impute stage: a harmonised target + the reference's index + a predictor -> an imputed VCF.

For each window, the target haplotypes are tokenized with the target's mask, the mask-keyed index gives
each the K nearest reference haplotypes, and the predictor returns P(ALT) per haplotype and site. A site
is written from its owner window only (the window where it is most central, ``sites.parquet`` column
``window``), so overlapping windows never disagree, and records come out in position order as windows
are processed: the VCF is streamed, never held whole.

Per target haplotype h, p_h = P(ALT). DS = p0 + p1; GP = ((1-p0)(1-p1), p0(1-p1) + p1(1-p0), p0 p1);
GT = argmax GP, a heterozygote phased with ALT on the haplotype of larger p. At typed sites the observed
genotype is written as it is (DS exactly 0, 1 or 2), except that a missing allele there is imputed.
INFO AF = mean DS / 2; INFO R2 = variance of the haplotype dosages / (AF (1 - AF)), Minimac's Rsq
(0 where AF is 0 or 1); IMP flags imputed sites, TYPED typed ones.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .atomic import file_sha256, read_json, write_json
from .baselines import AFPredictor, RetrievalPredictor
from .devices import on_cuda, pick_device
from .engine import Engine, EngineParams
from .errors import ArtifactError, InputError
from .index import HaplotypeIndex, QueryBlock
from .layout import Layout
from .ligate import write_stats
from .logs import Progress, log
from .masks import Mask, load_mask_for
from .methods import EXTERNAL_METHODS
from .predictors import Predictor, PriorPredictor, WindowBatch
from .prior import SCALE as PRIOR_SCALE
from .prior import PriorStore, log_error_estimate, run_engine
from .states import build_states, load_chunk, load_states, stale_reason
from .targets import AlignedTarget, read_target
from .tokens import MASK, tokenize_block
from .vcf_write import (
    bgzip_vcf_writer,
    contig_lengths,
    format_coded_records,
    format_records,
    header_lines,
    imputed_meta_lines,
)
from .windows import WindowedTable, load_windows, reference_af, sites_with_hash


def _model_predictor(opts: dict) -> Predictor:
    from .predictors import load_predictor  # imports torch: only when the model is asked for

    return load_predictor(opts["checkpoint"], opts.get("device", "auto"))


# The one place where a method name becomes a predictor. Options come from the config
# (``baselines.<method>`` for the baselines; ``checkpoint`` and ``device`` for the model).
PREDICTOR_FACTORIES: dict[str, Callable[[dict], Predictor]] = {
    "af": lambda opts: AFPredictor(),
    "retrieval": lambda opts: RetrievalPredictor(
        **{k: opts[k] for k in ("k", "flank", "decay", "tau", "prior") if k in opts}
    ),
    "copying": lambda opts: PriorPredictor(),
    "model": _model_predictor,
}


def prov_name(predictor: object) -> str:
    return getattr(predictor, "name", type(predictor).__name__)


def _peak_memory(device: object) -> dict:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if on_cuda(device):
        import torch

        out["cuda_max_memory_allocated_mb"] = round(
            torch.cuda.max_memory_allocated(device) / 2**20, 1
        )
    return out


@dataclass
class _Job:
    """One imputation run: its inputs, checked against each other (``_open_inputs``), and how the
    windows are predicted."""

    sites: pd.DataFrame
    windows: pd.DataFrame
    mask: Mask
    reference: WindowedTable  # the train split's haplotypes, which neighbour ids index
    target: AlignedTarget
    typed: np.ndarray  # (n_sites,) bool: typed in the target
    index: HaplotypeIndex | None  # None when the predictor needs no neighbours
    k: int  # neighbours retrieved per haplotype window
    predictor: Predictor
    af: np.ndarray  # (n_sites,) ALT frequency of the imputation reference
    batch_haplotypes: int = 1024  # target haplotypes per predictor call
    method: str = ""  # the method's name in the VCF header and the report
    prior: PriorStore | None = None  # the engine's P(ALT), for predictors that refine it
    gp: bool = True  # write GP (GT:DS:GP), or GT:DS
    hds: bool = False  # write each haplotype's P(ALT) after DS (GT:DS:HDS:GP)
    # per window written: positions and the integer sums INFO AF/R2 come from (ligate.write_stats)
    stats: list = field(default_factory=list)
    whole_target: AlignedTarget | None = None  # the whole target when ``target`` is one batch

    def __post_init__(self) -> None:
        self.chrom = str(self.sites["chrom"].iloc[0])
        self.pos = self.sites["pos"].to_numpy()
        self.owner = self.sites["window"].to_numpy()
        self.n_hap = 2 * len(self.target.samples)
        self.hap_samples = list(np.repeat(np.asarray(self.target.samples, dtype=object), 2))
        # Row of each typed site in the target's allele matrix (-1: untyped).
        self.trow = np.full(len(self.sites), -1, dtype=np.int64)
        self.trow[self.target.site] = np.arange(len(self.target.site))


def impute(
    target_vcf: str | os.PathLike,
    windows_dir: str | os.PathLike,
    mask_store: str | os.PathLike,
    mask_hash: str,
    index_dir: str | os.PathLike,
    predictor: Predictor,
    out_vcf: str | os.PathLike,
    k: int = 32,
    batch_haplotypes: int = 1024,
    contig_length: int | None = None,
    provenance: dict | None = None,
    threads: int = 1,
    states_dir: str | os.PathLike | None = None,
    engine_params: EngineParams | None = None,
    sample_batch: tuple[int, int] | None = None,
    stats_out: str | os.PathLike | None = None,
    gp: bool = True,
    engine_device: str = "cpu",
    reference_splits: tuple[str, ...] | list[str] = ("train",),
    hds: bool = False,
) -> dict:
    """Impute every reference site for the samples of a harmonised target; returns the run report.

    ``target_vcf`` must type exactly the sites the mask ``mask_hash`` leaves observed (the
    ``target_mask`` stage writes both). ``k`` neighbours are retrieved per haplotype window unless the
    predictor says how many it needs (``predictor.k``; 0 = none). A predictor with ``needs_prior``
    gets the copying-model engine's P(ALT) (state index ``states_dir``, settings ``engine_params``,
    run on ``engine_device``).
    ``sample_batch`` (first, count): impute only these target samples (one job of a cohort split
    into batches; the engine's error rate is still estimated on the whole target, so that every batch
    uses the same); ``stats_out``: where to write the sums INFO is recomputed from when the batches
    are merged (``ragimpute.ligate``). ``gp``: records are ``GT:DS:GP``, else ``GT:DS`` (Beagle's
    default; about half the bytes to write); ``hds``: with HDS after DS. ``reference_splits``: the splits of the imputation
    reference, whose allele frequencies the ``af`` method, the model's input and the fill of missing
    calls take.
    """
    import faiss

    t0 = time.perf_counter()
    faiss.omp_set_num_threads(max(1, threads))
    job = _open_inputs(target_vcf, windows_dir, mask_store, mask_hash, index_dir, predictor, k,
                       sample_batch, reference_splits)  # fmt: skip
    job.batch_haplotypes, job.gp, job.hds = batch_haplotypes, gp, hds
    needs_prior = getattr(predictor, "needs_prior", False)
    device = getattr(predictor, "device", "cpu")
    if needs_prior and on_cuda(engine_device) and not on_cuda(device):
        device = engine_device  # the GPU's peak memory is the engine's
    if on_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    engine_report: dict = {}
    if needs_prior:
        job.prior, engine_report = _engine_prior(
            windows_dir,
            states_dir,
            job.mask.hash,
            engine_params or EngineParams(),
            job.target,
            Path(out_vcf).parent,
            batch_haplotypes,
            threads,
            job.whole_target,
            engine_device,
        )
    prov = _provenance(job, provenance, engine_report)
    job.method = prov["method"]
    filled, seconds = _write_vcf(job, out_vcf, contig_length, prov, threads)
    if stats_out:
        pos = np.concatenate([p for p, _ in job.stats]) if job.stats else np.zeros(0, np.int64)
        sums = np.concatenate([x for _, x in job.stats]) if job.stats else np.zeros((0, 2))
        write_stats(stats_out, pos, sums[:, 0], sums[:, 1], job.n_hap)
    report = {
        "ragimpute": __version__,
        **prov,
        "output": str(out_vcf),
        "target": str(target_vcf),
        **_counts(job, filled),
        "allele_frequency_splits": list(reference_splits),
        "batch_haplotypes": batch_haplotypes,
        "device": str(device),
        **({"engine": engine_report} if engine_report else {}),
        "impute_seconds": round(seconds, 3),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        **_peak_memory(device),
    }
    log.info(
        "imputed %d sites (%d typed) for %d samples in %.1f s, peak RSS %.0f MB",
        len(job.sites),
        int(job.typed.sum()),
        len(job.target.samples),
        report["wall_seconds"],
        report["peak_rss_mb"],
    )
    return report


def _open_inputs(
    target_vcf: str | os.PathLike,
    windows_dir: str | os.PathLike,
    mask_store: str | os.PathLike,
    mask_hash: str,
    index_dir: str | os.PathLike,
    predictor: Predictor,
    k: int,
    sample_batch: tuple[int, int] | None = None,
    reference_splits: tuple[str, ...] | list[str] = ("train",),
) -> _Job:
    """The windows, the mask, the target (or one batch of its samples) and the index, each refused
    with the stage to re-run when it does not belong with the others; the allele frequencies of the
    imputation reference (``reference_splits``)."""
    sites, slh = sites_with_hash(windows_dir)
    windows = load_windows(windows_dir)
    if hasattr(predictor, "check_reference"):  # a model: trained on this reference, or refused
        predictor.check_reference(windows_dir)
    mask = load_mask_for(mask_store, mask_hash, slh, "target_mask")
    reference = WindowedTable(Path(windows_dir) / "haplotypes" / "train.parquet", "alleles")
    # already harmonised (and perhaps phased, its missing calls filled): checked once, before
    target = read_target(target_vcf, str(sites["chrom"].iloc[0]), sites, strand_check=False)
    typed = np.zeros(len(sites), dtype=bool)
    typed[target.site] = True
    if not np.array_equal(typed, mask.observed):
        raise InputError(
            target_vcf,
            f"types {int(typed.sum())} sites, but mask {mask_hash} observes {int(mask.observed.sum())} "
            "(other sites)",
            "Give the harmonised target the target_mask stage wrote with this mask",
        )
    k_query = getattr(predictor, "k", k)
    k_query = k if k_query is None else int(k_query)
    index = None
    if k_query > 0:
        index = HaplotypeIndex(index_dir)
        index.check(mask.hash)
        if k_query > index.n_haplotypes:
            raise InputError(
                "config",
                f"{prov_name(predictor)} asks for {k_query} neighbours but the reference holds "
                f"{index.n_haplotypes} haplotypes",
                "Lower retrieval.k (the model) or baselines.retrieval.k (the retrieval baseline)",
            )
        if index.samples != reference.samples:
            raise ArtifactError(
                f"index {index_dir} holds other reference samples than {reference.path}; rebuild it"
            )
        index.check_reference(reference)
    whole = target
    if sample_batch is not None:
        first, count = sample_batch
        cols = slice(2 * first, 2 * (first + count))
        target = replace(target, samples=target.samples[first : first + count],
                         alleles=target.alleles[:, cols])  # fmt: skip
        if not target.samples:
            raise InputError(target_vcf, f"no target sample in batch {sample_batch}", "Check it")
    af = reference_af(sites, reference_splits, windows_dir)
    job = _Job(sites, windows, mask, reference, target, typed, index, k_query, predictor, af)
    job.whole_target = whole
    return job


def _provenance(job: _Job, provenance: dict | None, engine_report: dict) -> dict:
    """What the VCF header and the report record about the method and its inputs."""
    provenance = dict(provenance or {})
    if engine_report:
        provenance.update(
            {k: engine_report[k] for k in ("error", "states", "reference_haplotypes")}
        )
    return {
        "method": prov_name(job.predictor),
        "mask_hash": job.mask.hash,
        "index_kind": job.index.kind if job.index else "none",
        "k": job.k,
        **provenance,
    }


def _meta_lines(prov: dict, job: _Job) -> list[str]:
    return [
        *imputed_meta_lines(job.gp, job.hds),
        "##ragimpute_impute=<" + ",".join(f"{key}={v}" for key, v in prov.items()) + ">",
    ]


def _write_vcf(
    job: _Job, out_vcf: str | os.PathLike, contig_length: int | None, prov: dict, threads: int
) -> tuple[int, float]:
    """The header, then window by window the records of the sites each owns, in position order.
    Returns the number of missing target alleles imputed at typed sites, and the seconds taken."""
    progress = Progress(len(job.windows), f"impute {job.method}", "windows")
    filled = 0
    with contextlib.ExitStack() as cleanup, bgzip_vcf_writer(out_vcf, threads) as write:
        if job.prior is not None:
            cleanup.callback(job.prior.close)
        write(header_lines(job.chrom, contig_length, job.target.samples, _meta_lines(prov, job)))
        for w, (a, b) in enumerate(job.windows[["first_site", "last_site"]].to_numpy()):
            for records, n_filled in _impute_window(job, w, a, b + 1):
                write(records)
                filled += n_filled
            progress.update()
    return filled, progress.close()


# Records formatted and written at a time: at most this many genotypes (sites x targets), so that a
# window's text (~30 bytes a genotype) does not grow with the number of targets (10,000 targets: a
# window's 3,000 sites were ~0.9 GB of text, held twice while joined).
WRITE_GENOTYPES = 1 << 21


def _site_blocks(sites: np.ndarray, n_samples: int) -> Iterator[np.ndarray]:
    step = max(1, WRITE_GENOTYPES // max(n_samples, 1))
    for i in range(0, len(sites), step):
        yield sites[i : i + step]


def _impute_window(job: _Job, w: int, a: int, b: int) -> Iterator[tuple[bytes, int]]:
    """The VCF records of the sites that window ``w`` (sites a..b-1) owns, a block of sites at a time
    (``WRITE_GENOTYPES``), each with the number of missing target alleles imputed at its typed sites."""
    own = np.flatnonzero(job.owner[a:b] == w)
    if not len(own):
        return
    n_samples = len(job.target.samples)
    if getattr(job.predictor, "returns_prior", False):
        for block in _site_blocks(a + own, n_samples):
            yield _prior_records(job, block)
        return
    masked = job.mask.masked[a:b]
    cols = job.trow[a:b]
    alleles = np.zeros((job.n_hap, b - a), dtype=np.int8)
    t_cols = np.flatnonzero(cols >= 0)
    alleles[:, t_cols] = job.target.alleles[cols[t_cols]].T
    missing = alleles < 0
    # Retrieval needs one mask for all rows: a missing call is filled with the reference's more
    # frequent allele for the search, and hidden (MASK) for the predictor, which imputes it.
    alleles = np.where(missing, (job.af[a:b] > 0.5).astype(np.int8)[None, :], alleles)
    search_tokens = tokenize_block(alleles, masked)
    tokens = search_tokens.copy()
    tokens[missing] = MASK
    p = _predict_window(job, w, a, b, search_tokens, tokens)[:, own]
    # Observed calls are written as observed, whatever the predictor returned there.
    obs = ~missing[:, own] & ~masked[own][None, :]
    p[obs] = alleles[:, own][obs]
    for block in _site_blocks(np.arange(len(own)), n_samples):
        sites = a + own[block]
        records, sums = format_records(
            job.chrom, job.sites.iloc[sites], p[:, block].T, job.typed[sites], gp=job.gp,
            hds=job.hds,
        )  # fmt: skip
        job.stats.append((job.pos[sites], sums))
        yield records, int(missing[:, own[block]].sum())


def _prior_records(job: _Job, sites: np.ndarray) -> tuple[bytes, int]:
    """``_impute_window`` for a predictor that returns the engine's P(ALT) as it is (``copying``):
    the records are formatted from the prior store's rounded values directly, with the target's
    observed calls written as observed (the same bytes as the general path, without its passes
    over the window: tokens, retrieval, floats)."""
    s0, s1 = int(sites[0]), int(sites[-1]) + 1
    k = job.prior.read_codes(s0, s1)[sites - s0]  # (sites, haplotypes)
    rows = job.trow[sites]
    t = np.flatnonzero(rows >= 0)
    calls = job.target.alleles[rows[t]]  # (typed sites here, haplotypes), -1 missing
    k[t] = np.where(calls >= 0, calls.astype(np.uint16) * np.uint16(PRIOR_SCALE), k[t])
    records, sums = format_coded_records(
        job.chrom, job.sites.iloc[sites], k, job.typed[sites], gp=job.gp, hds=job.hds
    )
    job.stats.append((job.pos[sites], sums))
    return records, int((calls < 0).sum())


def _predict_window(
    job: _Job, w: int, a: int, b: int, search_tokens: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """(n_hap, b - a) P(ALT) from the predictor, ``batch_haplotypes`` target haplotypes at a time."""
    ref_block = job.reference.read(w) if job.k > 0 else np.zeros((0, b - a), np.uint8)
    prior_block = job.prior.read(a, b) if job.prior is not None else None
    p = np.empty(tokens.shape, dtype=np.float32)
    for r0 in range(0, job.n_hap, job.batch_haplotypes):
        rows = slice(r0, min(r0 + job.batch_haplotypes, job.n_hap))
        if job.index is not None:
            q = QueryBlock(w, search_tokens[rows], job.hap_samples[rows], job.mask.hash)
            ids, dist = job.index.search(q, job.k)
        else:
            ids = np.zeros((len(search_tokens[rows]), 0), dtype=np.int64)
            dist = np.zeros(ids.shape, dtype=np.float32)
        batch = WindowBatch(
            window=w,
            tokens=tokens[rows],
            neighbours=ids,
            distances=dist,
            reference=ref_block,
            af=job.af[a:b],
            pos=job.pos[a:b],
            mask_hash=job.mask.hash,
            prior=None if prior_block is None else prior_block[rows],
        )
        pw = np.asarray(job.predictor.predict(batch), dtype=np.float32)
        if pw.shape != batch.tokens.shape:
            raise RuntimeError(
                f"predictor {job.method} returned shape {pw.shape} for {batch.tokens.shape}"
            )
        p[rows] = pw
    return p


def _counts(job: _Job, filled: int) -> dict:
    return {
        "samples": len(job.target.samples),
        "sites": len(job.sites),
        "typed_sites": int(job.typed.sum()),
        "imputed_sites": int((~job.typed).sum()),
        "missing_alleles_imputed_at_typed_sites": filled,
        "windows": len(job.windows),
    }


def _engine_prior(
    windows_dir,
    states_dir,
    mask_hash,
    params,
    target,
    where,
    batch_haplotypes,
    threads,
    whole,
    device,
):
    """The engine's P(ALT) for every target haplotype at every site (a PriorStore) and its report, on
    ``device``. The error rate, when estimated, is estimated on ``whole`` (the whole target, of which
    ``target`` may be one batch of samples), so that every batch is imputed alike."""
    if states_dir is None:
        raise ValueError("the copying model needs its state index (states_dir)")
    index, meta = load_states(states_dir, mask_hash, params)
    chunk = load_chunk(states_dir, windows_dir, target.site)
    shared = set(meta["samples"]) & set(target.samples)
    if shared:
        raise InputError(
            target.path,
            f"{len(shared)} target sample(s) are also in the imputation reference "
            f"({', '.join(sorted(shared)[:5])})",
            "A sample cannot be imputed from itself: remove it from the target or the panel",
        )
    engine = Engine(chunk, params, index)
    estimated = params.error is None
    if estimated:
        whole_query = np.ascontiguousarray(whole.alleles.T, dtype=np.int8)
        error = engine.estimate_error(whole_query, threads=threads, device=device)
        engine.params = replace(engine.params, error=error)
        log_error_estimate(error, target.path)
    query = np.ascontiguousarray(target.alleles.T, dtype=np.int8)  # (haplotypes, typed sites)
    run = run_engine(engine, query, where, batch_haplotypes, threads, device=device)
    report = {
        "params": engine.params.to_dict(),  # span_steps as chosen for this reference
        "device": device,
        "error": run.error,
        "error_estimated": estimated,
        "states": min(params.states, chunk.n_ref),
        "reference_splits": meta["splits"],
        "reference_samples": meta["samples"],
        "reference_haplotypes": chunk.n_ref,
        "steps": index.n_steps,
        "seconds": run.seconds,
        **run.stats,
    }
    return run.store, report


def engine_params(cfg: dict | None) -> EngineParams:
    """The config's ``engine`` section as EngineParams (``error: auto`` = estimated, ``span_steps:
    auto`` = chosen by ``EngineParams.span_for``); ``device``, where it runs, is not a parameter of
    the model (``engine_device``)."""
    cfg = dict(cfg or {})
    cfg.pop("device", None)
    for key in ("error", "span_steps"):
        if cfg.get(key) == "auto":
            cfg[key] = None
    return EngineParams(**cfg)


def engine_device(cfg: dict | None) -> str:
    """The config's ``engine.device``: ``cpu`` (the numba kernel), ``cuda`` / ``cuda:N`` (the same
    model in torch, ``ragimpute.engine_torch``) or ``auto`` (CUDA when torch sees a GPU)."""
    return pick_device(str((cfg or {}).get("device", "cpu")), "engine.device")


def run_impute_stage(
    method: str,
    alignment_json: str | os.PathLike,
    target_vcf: str | os.PathLike,
    windows_dir: str | os.PathLike,
    mask_store: str | os.PathLike,
    index_dir: str | os.PathLike | None,
    out_vcf: str | os.PathLike,
    report_json: str | os.PathLike,
    options: dict | None = None,
    k: int = 32,
    batch_haplotypes: int = 1024,
    panel_vcf: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int = 1,
    states_dir: str | os.PathLike | None = None,
    engine: dict | None = None,
    sample_batch: tuple[int, int] | None = None,
    stats_out: str | os.PathLike | None = None,
    gp: bool = True,
    hds: bool = False,
) -> dict:
    """Build the predictor for ``method``, impute, and write the VCF and its JSON report (with the
    target alignment counts from ``alignment_json``). ``index_dir`` / ``states_dir``: the window
    index and the state index of the target's mask (the methods that use them)."""
    t0 = time.perf_counter()
    if method not in PREDICTOR_FACTORIES:
        raise InputError(
            "config",
            f"unknown imputation method {method!r}",
            f"Use one of {', '.join(PREDICTOR_FACTORIES)} (or {', '.join(EXTERNAL_METHODS)} in the "
            "workflow)",
        )
    alignment = read_json(alignment_json)
    mask_hash = alignment["hash"]
    opts = dict(options or {})
    provenance: dict = {}
    if checkpoint:
        opts.update(checkpoint=str(checkpoint), device=device)
        provenance["model_sha256"] = file_sha256(checkpoint)[:16]
    predictor = PREDICTOR_FACTORIES[method](opts)
    if hasattr(predictor, "params"):
        provenance.update(predictor.params())
    length = None
    if panel_vcf:
        length = contig_lengths(panel_vcf).get(str(alignment["chrom"]))
    report = impute(
        target_vcf,
        windows_dir,
        mask_store,
        mask_hash,
        index_dir,
        predictor,
        out_vcf,
        k=k,
        batch_haplotypes=batch_haplotypes,
        contig_length=length,
        provenance=provenance,
        threads=threads,
        states_dir=states_dir,
        engine_params=engine_params(engine),
        sample_batch=sample_batch,
        stats_out=stats_out,
        gp=gp,
        hds=hds,
        engine_device=engine_device(engine) if method in ("copying", "model") else "cpu",
        # written by target_mask; an alignment.json of an earlier version: the train split's
        reference_splits=alignment.get("reference_splits", ["train"]),
    )
    if sample_batch is not None:
        report["sample_batch"] = {"first": sample_batch[0], "count": sample_batch[1]}
    report["alignment"] = {
        key: alignment.get(key)
        for key in (
            "target",
            "target_chrom",
            "chrom_renamed",
            "records",
            "skipped",
            "matched",
            "flipped",
            "unmatched",
            "strand_frequency_check",
            "missing",
        )
    }
    report["stage_seconds"] = round(time.perf_counter() - t0, 3)
    write_json(report_json, report)
    return report


def impute_target(
    results: str | os.PathLike,
    chrom: str,
    split_tsv: str | os.PathLike,
    target_vcf: str | os.PathLike,
    method: str,
    out_vcf: str | os.PathLike,
    report_json: str | os.PathLike | None = None,
    aligned_dir: str | os.PathLike | None = None,
    options: dict | None = None,
    k: int = 32,
    max_missing: float = 0.05,
    batch_haplotypes: int = 1024,
    panel_vcf: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int = 1,
    index_kind: str = "binary_flat",
    engine: dict | None = None,
    reference_splits: tuple[str, ...] = ("train", "val", "test"),
    gp: bool = True,
    hds: bool = False,
) -> dict:
    """Everything the workflow does for one target, outside Snakemake: harmonise it (``OUT.aligned/``),
    store its mask in the run's mask store, build the indexes for that mask unless they exist (they
    do when the target is typed on the training array and the reference is the same), impute.
    Returns the report."""
    from .index import build_index
    from .targets import harmonise_target
    from .tokens import run_tokenize_stage

    layout = Layout(str(results))
    windows, store = Path(layout.windows(chrom)), Path(layout.mask_store(chrom))
    aligned = Path(aligned_dir or f"{out_vcf}.aligned")
    info = harmonise_target(
        target_vcf,
        windows,
        split_tsv,
        store,
        aligned,
        chrom,
        max_missing,
        panel_vcf,
        reference_splits=list(reference_splits),
    )
    h = info["hash"]
    index_dir = Path(layout.index(chrom, h))
    if method in ("retrieval", "model") and not (index_dir / "meta.json").exists():
        tokens = Path(layout.tokens(chrom, h, "train"))
        run_tokenize_stage(windows, store, h, "train", tokens)
        build_index(tokens, index_dir, kind=index_kind, threads=threads)
    states_dir = Path(layout.states(chrom, h))
    params = engine_params(engine)
    if method in ("copying", "model"):
        stale = stale_reason(states_dir, windows, list(reference_splits), params)
        if stale:
            log.info("building the state index %s (%s)", states_dir, stale)
            build_states(windows, store, h, list(reference_splits), states_dir, params, threads)
    return run_impute_stage(
        method,
        aligned / "alignment.json",
        aligned / "target.vcf.gz",
        windows,
        store,
        index_dir,
        out_vcf,
        report_json or f"{out_vcf}.json",
        options=options,
        k=k,
        batch_haplotypes=batch_haplotypes,
        panel_vcf=panel_vcf,
        checkpoint=checkpoint,
        device=device,
        threads=threads,
        states_dir=states_dir,
        engine=engine,
        gp=gp,
        hds=hds,
    )
