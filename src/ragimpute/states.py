"""The state index: the engine's mask-keyed FAISS indexes, one per cM step, as an artifact.

Layout: ``states/<chrom>/<mask hash>/meta.json``, ``steps.parquet`` and ``reference.npy``: the
imputation reference at every site as bits, (sites, ceil(haplotypes / 8)) uint8, little bit order
(``np.unpackbits(np.load(...), axis=1, count=n_haplotypes, bitorder="little")``), which the engine
reads instead of the windowed Parquet tables. One row of ``steps.parquet`` per step: the typed
sites it starts and ends at (``first_typed``, ``end_typed``), the typed sites its index covers
(``span_first``, ``span_end``), their positions and cM, and ``faiss``: the step's
``IndexBinaryFlat``, serialised (``faiss.deserialize_index_binary(np.frombuffer(row.faiss,
np.uint8))``). Its ids are positions in ``meta["order"]``, whose values are reference haplotypes:
haplotype ``2*i + p`` is phase ``p`` of ``meta["samples"][i]``.

The reference is the imputation reference (``meta["splits"]``: the train split for the demo's
held-out targets, the whole panel for your own targets). Loading checks the mask hash (queries typed
under another mask are refused, as by the window index), the engine settings it was built with, and
the checksums of ``steps.parquet`` and ``reference.npy``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa

from . import __version__
from .atomic import (
    atomic_dir,
    file_sha256,
    read_artifact_json,
    read_parquet_df,
    reading,
    write_json,
    write_parquet,
)
from .engine import Chunk, EngineParams, StateIndex
from .errors import ArtifactError, MaskMismatchError, rebuild_hint
from .logs import log
from .masks import load_mask_for
from .methods import ENGINE_VERSION, INDEX_SETTINGS
from .windows import (
    DIGEST_KEY,
    WindowedTable,
    haplotypes_digest,
    load_windows,
    packed_haplotypes,
    sites_hash,
    sites_with_hash,
)

FORMAT_VERSION = 1


def reference_tables(windows_dir: str | os.PathLike, splits: list[str]) -> list[WindowedTable]:
    return [
        WindowedTable(Path(windows_dir) / "haplotypes" / f"{s}.parquet", "alleles") for s in splits
    ]


def reference_digests(tables: list[WindowedTable]) -> dict[str, str]:
    """The digest of each reference table's alleles (``haplotypes_digest``), by file name."""
    return {t.path.stem: haplotypes_digest(t) for t in tables}


def _other_haplotypes(meta: dict, windows_dir: str | os.PathLike) -> str | None:
    """Why the state index of ``meta`` was not built from the haplotypes of ``windows_dir`` (None:
    it was): another panel file of the same samples and sites passes every other check."""
    built = meta.get(DIGEST_KEY)
    if not built:
        return "it records no digest of its reference haplotypes (built by an earlier version)"
    have = reference_digests(reference_tables(windows_dir, meta.get("splits") or []))
    if have != built:
        return f"it was built from other reference haplotypes ({built} != {have} now)"
    return None


def build_states(
    windows_dir: str | os.PathLike,
    mask_store: str | os.PathLike,
    mask_hash: str,
    splits: list[str],
    out_dir: str | os.PathLike,
    params: EngineParams,
    threads: int = 1,
) -> dict:
    """Build the state index of the reference ``splits`` under mask ``mask_hash`` (the reference read
    on ``threads`` threads)."""
    t0 = time.perf_counter()
    sites, slh = sites_with_hash(windows_dir)
    mask = load_mask_for(mask_store, mask_hash, slh)
    typed = np.flatnonzero(mask.observed)
    if len(typed) == 0:
        raise ArtifactError(f"mask {mask_hash} observes no site: there is nothing to copy from")
    tables = reference_tables(windows_dir, splits)
    packed = packed_haplotypes(tables, load_windows(windows_dir), threads)
    n_ref = sum(t.n_haplotypes for t in tables)
    params = params.resolved(n_ref)
    ref_typed = np.unpackbits(packed[typed], axis=1, count=n_ref, bitorder="little")
    cm = sites["cm"].to_numpy()
    index = StateIndex.build(
        ref_typed,
        cm[typed],
        params.step_cm,
        params.span_steps,
        params.seed,
        params.centred_ends(n_ref),
    )
    pos = sites["pos"].to_numpy()
    b = index.bounds
    steps = pd.DataFrame(
        {
            "step": np.arange(index.n_steps, dtype=np.int32),
            "first_typed": b[:-1],
            "end_typed": b[1:],
            "span_first": index.span[:, 0],
            "span_end": index.span[:, 1],
            "first_pos": pos[typed[b[:-1]]],
            "last_pos": pos[typed[b[1:] - 1]],
            "cm_first": cm[typed[b[:-1]]],
            "cm_last": cm[typed[b[1:] - 1]],
        }
    )
    blobs = [faiss.serialize_index_binary(ix).tobytes() for ix in index.indexes]
    table = pa.Table.from_pandas(steps, preserve_index=False).append_column(
        "faiss", pa.array(blobs, pa.binary())
    )
    samples = [s for t in tables for s in t.samples]
    with atomic_dir(out_dir) as tmp:
        write_parquet(tmp / "steps.parquet", table, {"mask_hash": mask.hash})
        np.save(tmp / "reference.npy", packed)
        meta = {
            "format_version": FORMAT_VERSION,
            "engine_version": ENGINE_VERSION,
            "mask_hash": mask.hash,
            "site_list_hash": slh,
            "splits": list(splits),
            "samples": samples,
            # the haplotypes of each split, so that the index is never used with other ones
            DIGEST_KEY: reference_digests(tables),
            "n_haplotypes": n_ref,
            "n_typed": int(len(typed)),
            "n_steps": index.n_steps,
            **index_settings(params, n_ref),
            "order": index.order,
            "n_sites": int(len(packed)),
            "sha256": {f: file_sha256(tmp / f) for f in ("steps.parquet", "reference.npy")},
            "build_seconds": round(time.perf_counter() - t0, 3),
            "faiss_version": faiss.__version__,
            "ragimpute": __version__,
        }
        write_json(tmp / "meta.json", meta)
    log.info(
        "state index %s: %d steps over %d typed sites, %d reference haplotypes (%s), %.1f s",
        mask.hash,
        index.n_steps,
        len(typed),
        n_ref,
        "+".join(splits),
        meta["build_seconds"],
    )
    return meta


def index_settings(params: EngineParams, n_ref: int) -> dict:
    """What a state index of a reference of ``n_ref`` haplotypes is built with, as meta.json records
    it: ``INDEX_SETTINGS`` resolved for that reference, and ``ends``, how the step windows end near
    the chunk's ends (``EngineParams.centred_ends``, which follows ``states``)."""
    resolved = params.resolved(n_ref)
    ends = "centred" if params.centred_ends(n_ref) else "inner"
    return {**{k: getattr(resolved, k) for k in INDEX_SETTINGS}, "ends": ends}


def _settings_mismatch(meta: dict, params: EngineParams) -> str | None:
    """What of ``index_settings`` the index in ``meta`` was built with that ``params`` do not ask
    for (None: all match)."""
    for k, want in index_settings(params, int(meta.get("n_haplotypes") or 0)).items():
        if meta.get(k) == want:
            continue
        if k == "ends":
            return (
                f"{meta.get(k)} step windows at the ends; engine.states = {params.states} asks for "
                f"{want} ones"
            )
        return f"engine.{k} = {meta.get(k)}, the config asks for {want}"
    return None


def stale_reason(
    states_dir: str | os.PathLike,
    windows_dir: str | os.PathLike,
    splits: list[str],
    params: EngineParams,
) -> str | None:
    """Why the state index in ``states_dir`` cannot serve ``splits`` of these windows with these
    settings (None: it can). Outside Snakemake, which tracks the inputs itself, this decides a
    rebuild."""
    d = Path(states_dir)
    if not (d / "meta.json").exists():
        return "none built yet"
    try:
        meta = read_artifact_json(d / "meta.json", "states")
    except ArtifactError as e:
        return str(e)
    missing = [f for f in ("steps.parquet", "reference.npy") if not (d / f).exists()]
    if missing:
        return f"{' and '.join(missing)} missing"
    if (meta.get("format_version"), meta.get("engine_version")) != (FORMAT_VERSION, ENGINE_VERSION):
        return "built by another version"
    if meta.get("splits") != list(splits):
        return f"built on the {'+'.join(meta.get('splits') or [])} reference"
    mismatch = _settings_mismatch(meta, params)
    if mismatch:
        return f"built with {mismatch}"
    if meta.get("site_list_hash") != sites_hash(windows_dir):
        return "built on another site list"
    if meta.get("samples") != [s for t in reference_tables(windows_dir, splits) for s in t.samples]:
        return "built on other reference samples"
    return _other_haplotypes(meta, windows_dir)


def _verify(path: Path, meta: dict) -> None:
    """``path`` (a file of the state index) exists and matches its checksum in ``meta``."""
    if not path.exists():
        raise ArtifactError(f"{path} missing. {rebuild_hint('states')}")
    if file_sha256(path) != meta["sha256"][path.name]:
        raise ArtifactError(
            f"{path} does not match its checksum in meta.json (corrupted). {rebuild_hint('states')}"
        )


def load_states(
    states_dir: str | os.PathLike, mask_hash: str, params: EngineParams
) -> tuple[StateIndex, dict]:
    """The state index for queries typed under ``mask_hash``, built with ``params``' settings."""
    d = Path(states_dir)
    meta_path, steps_path = d / "meta.json", d / "steps.parquet"
    rebuild = rebuild_hint("states")
    if not meta_path.exists() or not steps_path.exists():
        raise ArtifactError(f"{d} is incomplete (meta.json or steps.parquet missing). {rebuild}")
    meta = read_artifact_json(meta_path, "states")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{d}: state index format {meta.get('format_version')}. {rebuild}")
    if meta["mask_hash"] != mask_hash:
        raise MaskMismatchError(
            f"state index {d} was built with mask {meta['mask_hash']}; the target is typed under "
            f"mask {mask_hash}. Candidates chosen on other sites are refused: build the state index "
            "for the target's mask (Snakemake does this when the mask changes; where the directory "
            f"is the target mask's own, its meta.json was changed by hand. {rebuild})"
        )
    mismatch = _settings_mismatch(meta, params)
    if mismatch:
        raise ArtifactError(f"{d} was built with {mismatch}. {rebuild}")
    _verify(steps_path, meta)
    steps = read_parquet_df(steps_path, "states")
    with reading(steps_path, "states"):
        indexes = [
            faiss.deserialize_index_binary(np.frombuffer(b, np.uint8)) for b in steps["faiss"]
        ]
    bounds = np.r_[steps["first_typed"].to_numpy(), steps["end_typed"].to_numpy()[-1:]]
    span = steps[["span_first", "span_end"]].to_numpy()
    return StateIndex(bounds, span, np.asarray(meta["order"]), indexes), meta


def load_chunk(
    states_dir: str | os.PathLike, windows_dir: str | os.PathLike, typed_site: np.ndarray
) -> Chunk:
    """The imputation reference stored with a state index, with the typed sites of a target."""
    sites, slh = sites_with_hash(windows_dir)
    meta = read_artifact_json(Path(states_dir) / "meta.json", "states")
    if meta["site_list_hash"] != slh:
        raise ArtifactError(
            f"state index {states_dir} was built on site list {meta['site_list_hash']}, the windows "
            f"are {slh}. {rebuild_hint('states')}"
        )
    other = _other_haplotypes(meta, windows_dir)
    if other:
        raise ArtifactError(
            f"state index {states_dir}: {other}, not from {Path(windows_dir) / 'haplotypes'}: "
            f"it would impute from haplotypes that are not the reference. {rebuild_hint('states')}"
        )
    path = Path(states_dir) / "reference.npy"
    _verify(path, meta)
    with reading(path, "states"):
        packed = np.load(path)
    typed_site = np.asarray(typed_site, dtype=np.int64)
    return reference_chunk(packed, meta["n_haplotypes"], typed_site, sites)


def reference_chunk(
    packed: np.ndarray, n_ref: int, typed_site: np.ndarray, sites: pd.DataFrame
) -> Chunk:
    """The engine's reference: ``packed`` alleles of ``n_ref`` haplotypes (a row of bits per site),
    unpacked at the typed sites, with the positions and maps of ``sites``."""
    return Chunk(
        ref_packed=packed,
        ref_typed=np.ascontiguousarray(
            np.unpackbits(packed[typed_site], axis=1, count=n_ref, bitorder="little")
        ),
        typed_site=typed_site,
        cm=sites["cm"].to_numpy(),
        pos=sites["pos"].to_numpy(),
        af=reference_af(packed, n_ref),
    )


def reference_af(packed: np.ndarray, n_ref: int) -> np.ndarray:
    """ALT frequency of every site among the reference haplotypes, from the packed bits."""
    counts = np.zeros(len(packed), dtype=np.int64)
    step = 4096
    for a in range(0, len(packed), step):
        counts[a : a + step] = np.unpackbits(
            packed[a : a + step], axis=1, count=n_ref, bitorder="little"
        ).sum(1)
    return (counts / max(n_ref, 1)).astype(np.float32)
