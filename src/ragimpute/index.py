"""A FAISS index of reference haplotypes per window, keyed on the mask it was built with.

With the same mask on both sides, token-space L2 between haplotypes equals the Hamming distance on the
observed sites, so the default index is bit-packed binary (``binary_flat``: exact; ``binary_hnsw``:
approximate, faster on large panels) and uses 32x less memory than float vectors. ``float_l2`` keeps
the prototype's float token vectors for comparison.

Layout: ``index/<chrom>/<mask hash>/meta.json`` and ``windows/w00000.faiss`` (one FAISS file per window,
readable with ``faiss.read_index_binary`` / ``faiss.read_index``). Index ids are haplotype rows of the
train split in table order: id ``2*i + p`` is phase ``p`` of the i-th train sample in ``meta["samples"]``.
``meta["files_sha256"]`` holds the SHA-256 of every window file; a file is checked against it when it
is loaded, since FAISS itself would search a corrupted index without a word.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from . import __version__
from .atomic import atomic_dir, read_artifact_json, reading, write_json
from .errors import (
    ArtifactError,
    InputError,
    MaskMismatchError,
    UnreadableArtifactError,
    rebuild_hint,
)
from .logs import Progress, log
from .tokens import ALT, MASK, TokenTable
from .windows import DIGEST_KEY, WindowedTable, haplotypes_digest

FORMAT_VERSION = 1
KINDS = ("binary_flat", "binary_hnsw", "float_l2")


@dataclass
class QueryBlock:
    """Query haplotypes of one window, with the mask hash they were tokenized with."""

    window: int
    tokens: np.ndarray  # (n_query, L) uint8
    samples: list[str]  # sample of each query row
    mask_hash: str


def query_block(table: TokenTable, window: int, rows: np.ndarray | None = None) -> QueryBlock:
    tokens = table.read(window)
    samples = np.repeat(np.asarray(table.samples, dtype=object), 2)
    if rows is not None:
        tokens, samples = tokens[rows], samples[rows]
    return QueryBlock(window, tokens, list(samples), table.mask_hash)


def observed_columns(tokens: np.ndarray, where: str) -> np.ndarray:
    """Columns not hidden by the mask; the mask is per site, so every row must agree."""
    obs = tokens != MASK
    if len(tokens) and not (obs == obs[0]).all():
        raise ArtifactError(
            f"{where}: rows disagree on which sites are masked; the token table is corrupt"
        )
    return np.flatnonzero(obs[0]) if len(tokens) else np.zeros(0, dtype=np.int64)


def encode(tokens: np.ndarray, cols: np.ndarray, kind: str) -> np.ndarray:
    """Vectors for FAISS: bits of the observed alleles (packed) or float 0/1 values."""
    alleles = (tokens[:, cols] == ALT).astype(np.uint8)
    if kind == "float_l2":
        if alleles.shape[1] == 0:
            return np.zeros((len(tokens), 1), dtype=np.float32)
        return np.ascontiguousarray(alleles, dtype=np.float32)
    if alleles.shape[1] == 0:
        return np.zeros((len(tokens), 1), dtype=np.uint8)
    return np.ascontiguousarray(np.packbits(alleles, axis=1))


def _new_index(kind: str, dim_bytes_or_floats: int, hnsw_m: int):
    if kind == "binary_flat":
        return faiss.IndexBinaryFlat(8 * dim_bytes_or_floats)
    if kind == "binary_hnsw":
        return faiss.IndexBinaryHNSW(8 * dim_bytes_or_floats, hnsw_m)
    if kind == "float_l2":
        return faiss.IndexFlatL2(dim_bytes_or_floats)
    raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")


def build_index(
    train_tokens: str | os.PathLike,
    out_dir: str | os.PathLike,
    kind: str = "binary_flat",
    hnsw_m: int = 32,
    threads: int = 1,
) -> dict:
    """Index every window of the train split's token table; the directory appears whole or not at all."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    faiss.omp_set_num_threads(max(1, threads))
    table = TokenTable(train_tokens)
    t0 = time.perf_counter()
    n_observed, nbytes, checksums = [], [], {}
    progress = Progress(table.n_windows, "index", "windows")
    with atomic_dir(out_dir) as tmp:
        (tmp / "windows").mkdir()
        for w, tokens in table:
            cols = observed_columns(tokens, f"{train_tokens} window {w}")
            x = encode(tokens, cols, kind)
            index = _new_index(kind, x.shape[1], hnsw_m)
            index.add(x)
            path = tmp / "windows" / f"w{w:05d}.faiss"
            (faiss.write_index if kind == "float_l2" else faiss.write_index_binary)(
                index, str(path)
            )
            n_observed.append(len(cols))
            nbytes.append(path.stat().st_size)
            checksums[f"windows/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
            progress.update()
        seconds = progress.close()
        meta = {
            "format_version": FORMAT_VERSION,
            "mask_hash": table.mask_hash,
            "site_list_hash": table.site_list_hash,
            "kind": kind,
            "metric": "l2" if kind == "float_l2" else "hamming",
            "hnsw_m": hnsw_m if kind == "binary_hnsw" else None,
            "n_haplotypes": table.n_haplotypes,
            "samples": table.samples,
            # the haplotypes the tokens were made from: imputation refuses another reference
            DIGEST_KEY: table.metadata.get(DIGEST_KEY),
            "n_windows": table.n_windows,
            "n_observed": n_observed,
            "bytes": int(sum(nbytes)),
            "files_sha256": checksums,
            "build_seconds": round(time.perf_counter() - t0, 3),
            "faiss_version": faiss.__version__,
            "ragimpute": __version__,
            "source": str(train_tokens),
        }
        write_json(tmp / "meta.json", meta)
    log.info(
        "index %s (%s): %d windows, %d haplotypes, %.1f MB, %.1f s",
        table.mask_hash,
        kind,
        table.n_windows,
        table.n_haplotypes,
        sum(nbytes) / 1e6,
        seconds,
    )
    return meta


class HaplotypeIndex:
    """Loaded lazily, window by window. Every search checks the queries' mask hash."""

    def __init__(self, index_dir: str | os.PathLike):
        self.dir = Path(index_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            raise ArtifactError(f"{meta_path} is missing; build the index (snakemake rule `index`)")
        self.meta = read_artifact_json(meta_path, "index")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{self.dir}: index format {self.meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        self.mask_hash: str = self.meta["mask_hash"]
        self.kind: str = self.meta["kind"]
        self.samples: list[str] = self.meta["samples"]
        self._sample_idx = {s: i for i, s in enumerate(self.samples)}
        self._cache: dict[int, object] = {}
        self._checksums: dict[str, str] | None = self.meta.get("files_sha256")
        if self._checksums is None:
            log.warning(
                "%s records no checksums (built by an earlier version): its files are not verified. "
                "%s",
                meta_path,
                rebuild_hint("index"),
            )

    @property
    def n_haplotypes(self) -> int:
        return self.meta["n_haplotypes"]

    def window_index(self, w: int):
        if w not in self._cache:
            path = self.dir / "windows" / f"w{w:05d}.faiss"
            if not path.exists():
                raise ArtifactError(f"{path} is missing. {rebuild_hint('index')}")
            with reading(path, "index"):
                data = path.read_bytes()
            if self._checksums is not None:
                want = self._checksums.get(f"windows/{path.name}")
                got = hashlib.sha256(data).hexdigest()
                if want != got:
                    raise UnreadableArtifactError(
                        f"{path}: checksum mismatch (SHA-256 {got[:16]}..., {self.dir / 'meta.json'} "
                        f"records {str(want)[:16]}...): the file is corrupt or was changed after the "
                        f"index was built. {rebuild_hint('index')}"
                    )
            read = (
                faiss.deserialize_index
                if self.kind == "float_l2"
                else faiss.deserialize_index_binary
            )
            with reading(path, "index"):
                index = read(np.frombuffer(data, dtype=np.uint8))
            if self.kind == "binary_hnsw":
                index.hnsw.efSearch = 128
            self._cache[w] = index
        return self._cache[w]

    def check(self, mask_hash: str) -> None:
        if mask_hash != self.mask_hash:
            raise MaskMismatchError(
                f"index {self.dir} was built with mask {self.mask_hash}; the queries were tokenized with "
                f"mask {mask_hash}. Retrieval across masks compares different sites and is refused: "
                "build the index for the queries' mask (Snakemake does this when the mask changes; "
                "where the directory is the queries' mask's own, its meta.json was changed by hand. "
                f"{rebuild_hint('index')})"
            )

    def check_reference(self, reference: WindowedTable) -> None:
        """Refuse a ``reference`` (the haplotype table the neighbour ids index) other than the one
        this index was built from: with the same samples, sites and mask, another panel file's
        haplotypes would pass every other check, and the ids would name haplotypes never searched."""
        redo = (
            "Rebuild the tokens and the index from the reference: `snakemake --cores all "
            "--forcerun tokenize`, with the target you ran if it was not the whole workflow "
            "(outside Snakemake: `ragimpute tokenize` then `ragimpute index`)"
        )
        built = self.meta.get(DIGEST_KEY)
        if not built:
            raise ArtifactError(
                f"index {self.dir} records no digest of the haplotypes it was built from (built "
                f"by an earlier version, or from tokens of one), so it cannot be checked against "
                f"the reference {reference.path}. {redo}"
            )
        have = haplotypes_digest(reference)
        if have != built:
            raise ArtifactError(
                f"index {self.dir} was built from other haplotypes (digest {built}) than the "
                f"reference {reference.path} ({have}): another panel, or tokens or an index copied "
                f"from another run. Its neighbours would name other haplotypes. {redo}"
            )

    def search(self, q: QueryBlock, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` reference haplotype ids and distances per query row, sorted by (distance, id).

        A query never gets a haplotype of its own sample back (both phases are excluded), so training
        queries cannot copy their own answer.
        """
        self.check(q.mask_hash)
        n_obs = self.meta["n_observed"][q.window]
        cols = observed_columns(q.tokens, f"queries for window {q.window}")
        if len(cols) != n_obs:
            raise MaskMismatchError(
                f"window {q.window}: queries observe {len(cols)} sites, index {self.dir} {n_obs}"
            )
        x = encode(q.tokens, cols, self.kind)
        return search_excluding(self.window_index(q.window), x, q.samples, self._sample_idx, k)


def search_excluding(
    index, x: np.ndarray, query_samples: list[str], sample_idx: dict[str, int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ids and distances per row, sorted by (distance, id), never from the query's own sample.

    Ids are ``2 * sample + phase``; both phases of a query's own sample are excluded, so that a training
    query cannot copy its own answer.
    """
    n_ref = index.ntotal
    own = np.array([sample_idx.get(s, -1) for s in query_samples], dtype=np.int64)
    n_excl = 2 if (own >= 0).any() else 0
    if k + n_excl > n_ref:
        raise InputError(
            "retrieval.k",
            f"k={k} neighbours asked but the index holds {n_ref} haplotypes"
            + (" (2 of them the query's own sample)" if n_excl else ""),
            "Lower retrieval.k (-k on the command line) or use a larger reference panel",
        )
    dist, ids = index.search(x, k + n_excl)
    dist = dist.astype(np.float32)
    keep = (ids >= 0) & ((ids // 2) != own[:, None])
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    out_d = np.full((len(ids), k), np.inf, dtype=np.float32)
    for r in range(len(ids)):
        i, d = ids[r][keep[r]], dist[r][keep[r]]
        order = np.lexsort((i, d))[:k]
        out_ids[r, : len(order)] = i[order]
        out_d[r, : len(order)] = d[order]
    if (out_ids < 0).any():
        raise ArtifactError(f"the index returned fewer than {k} neighbours for some queries")
    return out_ids, out_d


class EmbeddingIndex:
    """Embedding-space retrieval for one window: reference haplotypes encoded by one model state.

    Keyed on the mask hash and the model's state hash: queries embedded by another model state, or
    tokenized with another mask, are refused like foreign masks are by ``HaplotypeIndex``.
    """

    def __init__(self, mask_hash: str, model_hash: str, vectors: np.ndarray, samples: list[str]):
        self.mask_hash = mask_hash
        self.model_hash = model_hash
        self._sample_idx = {s: i for i, s in enumerate(samples)}
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatL2(x.shape[1])
        self.index.add(x)
        h = hashlib.sha256(f"{mask_hash}:{model_hash}:".encode())
        h.update(x.tobytes())
        self.hash = h.hexdigest()[:16]

    def search(
        self, queries: np.ndarray, query_samples: list[str], k: int, mask_hash: str, model_hash: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if mask_hash != self.mask_hash:
            raise MaskMismatchError(
                f"embedding index of mask {self.mask_hash} asked with mask {mask_hash}"
            )
        if model_hash != self.model_hash:
            raise MaskMismatchError(
                f"embedding index built by model state {self.model_hash}, queries embedded by {model_hash}: "
                "refresh the index"
            )
        x = np.ascontiguousarray(queries, dtype=np.float32)
        return search_excluding(self.index, x, query_samples, self._sample_idx, k)
