"""What training reads: per chromosome the windows (truth alleles, AF, positions), and per mask hash and
split the token tables, the retrieve stage's neighbours and the engine's prior, all held in memory.

Every table read is digested, so that a checkpoint is resumed only on the same data (``identity``), and
checked against the others it must match (mask, site list, samples): a stale table is an error that
names the stage to re-run, not a silently different training set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import parquet_metadata, read_parquet
from .errors import ArtifactError, MaskMismatchError
from .metrics import Accumulator
from .prior import PRIOR_COLUMN
from .prior import SCALE as PRIOR_SCALE
from .tokens import TokenTable
from .windows import WindowedTable, load_windows, sites_with_hash

SPLITS = ("train", "val")


@dataclass
class ChromInputs:
    """Paths of one chromosome's training inputs; ``tokens``/``retrieval`` are keyed by (hash, split)."""

    chrom: str
    windows_dir: str
    hashes: list[str]
    tokens: dict[tuple[str, str], str]
    retrieval: dict[tuple[str, str], str] = field(default_factory=dict)
    # the engine's P(ALT) per (hash, split) (the prior stage); the model refines it when given
    priors: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Window:
    chrom: str
    window: int
    af: np.ndarray  # (L,)
    maf: np.ndarray  # (L,)
    pos: np.ndarray  # (L,)
    owned: np.ndarray  # (L,) bool: sites scored in this window
    truth: dict[str, np.ndarray]  # split -> (n_hap, L) alleles
    tokens: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict
    )  # (hash, split) -> (n_hap, L)
    priors: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict
    )  # (hash, split) -> (n_hap, L) uint16, P(ALT) x 65535


@dataclass
class Neighbours:
    ids: np.ndarray  # (n_hap, K) rows of the train split
    distances: np.ndarray  # (n_hap, K)
    mask_hash: str


def iter_inputs(
    results: str | os.PathLike, chroms: dict[str, list[str]], mode: str, priors: bool = True
) -> Iterator[ChromInputs]:
    """ChromInputs for the standard results layout (used by the CLI; Snakemake passes its own paths)."""
    r = Path(results)

    def tables(stage: str, chrom: str, hashes: list[str]) -> dict[tuple[str, str], str]:
        return {(h, s): str(r / stage / chrom / h / f"{s}.parquet") for h in hashes for s in SPLITS}

    for chrom, hashes in chroms.items():
        yield ChromInputs(
            chrom,
            str(r / "windows" / chrom),
            list(hashes),
            tables("tokens", chrom, hashes),
            tables("retrieval", chrom, hashes) if mode == "token" else {},
            tables("prior", chrom, hashes) if priors else {},
        )


# -- one chromosome -----------------------------------------------------------------------------------


def read_retrieval(path: str | os.PathLike, tokens: TokenTable) -> dict[int, Neighbours]:
    """The retrieve stage's table, checked against the token table it must match."""
    meta = parquet_metadata(path, "retrieve")
    if meta.get("mask_hash") != tokens.mask_hash:
        raise MaskMismatchError(
            f"{path} was retrieved with mask {meta.get('mask_hash')}, the queries {tokens.path} use mask "
            f"{tokens.mask_hash}; re-run the retrieve stage"
        )
    t = read_parquet(path, "retrieve")
    windows = t.column("window").to_numpy()
    k = t.schema.field("neighbours").type.list_size
    ids = t.column("neighbours").combine_chunks().flatten().to_numpy().reshape(-1, k)
    dist = t.column("distances").combine_chunks().flatten().to_numpy().reshape(-1, k)
    samples = t.column("sample").to_pylist()
    expected = list(np.repeat(np.asarray(tokens.samples, dtype=object), 2))
    out = {}
    for w in range(tokens.n_windows):
        rows = np.flatnonzero(windows == w)
        if [samples[r] for r in rows] != expected:
            raise ArtifactError(
                f"{path}: rows of window {w} do not follow {tokens.path}; re-run retrieve"
            )
        out[w] = Neighbours(
            ids[rows].astype(np.int64), dist[rows].astype(np.float32), tokens.mask_hash
        )
    return out


def _open_tables(
    inp: ChromInputs, splits: tuple[str, ...], slh: str
) -> tuple[dict[str, WindowedTable], dict[tuple, TokenTable], dict[tuple, WindowedTable]]:
    """The truth, token and prior tables of one chromosome, each checked against the site list and the
    samples of its split."""
    truth = {
        s: WindowedTable(Path(inp.windows_dir) / "haplotypes" / f"{s}.parquet", "alleles")
        for s in splits
    }
    tokens = {key: TokenTable(p) for key, p in inp.tokens.items()}
    for key, t in tokens.items():
        if t.mask_hash != key[0] or t.site_list_hash != slh:
            raise ArtifactError(
                f"{t.path}: mask {t.mask_hash} / sites {t.site_list_hash}, expected {key[0]} / {slh}"
            )
        if key[1] in truth and t.samples != truth[key[1]].samples:
            raise ArtifactError(
                f"{t.path}: its samples are not those of {truth[key[1]].path} (stale tokens); "
                "re-run the tokenize stage (`snakemake --cores all --forcerun tokenize`)"
            )
    priors = {key: WindowedTable(p, PRIOR_COLUMN) for key, p in inp.priors.items()}
    for key, t in priors.items():
        meta = t.metadata
        if meta.get("mask_hash") != key[0] or meta.get("site_list_hash") != slh:
            raise MaskMismatchError(
                f"{t.path}: prior of mask {meta.get('mask_hash')} / sites {meta.get('site_list_hash')}"
                f", expected {key[0]} / {slh}; re-run the prior stage"
            )
        if key[1] in truth and t.samples != truth[key[1]].samples:
            raise ArtifactError(
                f"{t.path}: its samples are not those of {truth[key[1]].path} (stale prior); "
                "re-run the prior stage (`snakemake --cores all --forcerun prior`)"
            )
    return truth, tokens, priors


def load_chromosome(
    inp: ChromInputs, splits: tuple[str, ...] = SPLITS
) -> tuple[list[Window], dict]:
    """Windows of one chromosome with truth and tokens in memory, the retrieval tables by (hash, split),
    and ``identity``: what was read (samples per split in order, site list hash, a digest of every
    table's contents), so that a checkpoint is resumed only on the same data."""
    sites, slh = sites_with_hash(inp.windows_dir)
    wins = load_windows(inp.windows_dir)
    truth_tables, token_tables, prior_tables = _open_tables(inp, splits, slh)
    maf = sites["maf"].to_numpy(np.float32)
    af = sites["af"].to_numpy(np.float32)
    pos = sites["pos"].to_numpy(np.int64)
    owner = sites["window"].to_numpy()
    digests = {("sites",): _digest(pos, af, maf, owner, wins[["first_site", "last_site"]])}
    hashers = {("truth", s): hashlib.sha256() for s in truth_tables}
    hashers.update({("tokens", *key): hashlib.sha256() for key in token_tables})
    hashers.update({("prior", *key): hashlib.sha256() for key in prior_tables})
    out = []
    for row in wins.itertuples():
        a, b = row.first_site, row.last_site + 1
        w = Window(
            inp.chrom,
            row.window,
            af[a:b],
            maf[a:b],
            pos[a:b],
            owner[a:b] == row.window,
            {s: t.read(row.window) for s, t in truth_tables.items()},
        )
        for s, block in w.truth.items():
            _digest_update(hashers[("truth", s)], block)
        for key, t in token_tables.items():
            w.tokens[key] = t.read(row.window)
            _digest_update(hashers[("tokens", *key)], w.tokens[key])
        for key, t in prior_tables.items():
            w.priors[key] = t.read(row.window).view(np.uint16)
            _digest_update(hashers[("prior", *key)], w.priors[key])
        out.append(w)
    retrieval = {key: read_retrieval(p, token_tables[key]) for key, p in inp.retrieval.items()}
    for key, table in retrieval.items():
        h = hashlib.sha256()
        for w in sorted(table):
            _digest_update(h, table[w].ids, table[w].distances)
        hashers[("retrieval", *key)] = h
    digests.update({k: h.hexdigest()[:16] for k, h in hashers.items()})
    samples = {s: t.samples for s, t in truth_tables.items()}
    identity = {
        "site_list_hash": slh,
        "samples": samples,
        "digests": {"/".join(k): v for k, v in sorted(digests.items())},
    }
    return out, {
        "retrieval": retrieval,
        "samples": samples,
        "site_list_hash": slh,
        "identity": identity,
    }


def _digest_update(h, *arrays) -> None:
    for x in arrays:
        x = np.ascontiguousarray(x)
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(x.tobytes())


def _digest(*parts) -> str:
    h = hashlib.sha256()
    _digest_update(h, *(np.asarray(p) for p in parts))
    return h.hexdigest()[:16]


# -- every chromosome ---------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Every chromosome's windows in memory, and the tables and names that go with them."""

    windows: list[Window]
    tables: dict[str, dict]  # chrom -> {(hash, split): {window: Neighbours}}
    samples: dict[str, dict[str, list[str]]]  # chrom -> split -> sample names
    identity: dict[str, dict]  # chrom -> what was read (``load_chromosome``)
    masks: list[dict[str, str]]  # mask e of the schedule: chrom -> hash
    with_prior: bool  # every chromosome comes with the engine's prior: the model refines it
    # (chrom, window) -> (n_ref, L) train-split alleles: the rows that neighbour ids index
    references: dict[tuple[str, int], np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.references = {(w.chrom, w.window): w.truth["train"] for w in self.windows}

    def hashes(self, epoch: int) -> dict[str, str]:
        """Epoch e uses mask e mod E for queries and retrieval alike (dynamic masking)."""
        return self.masks[epoch % len(self.masks)]

    def batch(self, w: Window, mask_hash: str, split: str, rows: np.ndarray, nb) -> Batch:
        return Batch(w, mask_hash, split, rows, nb, self.references[(w.chrom, w.window)])


def load_training_data(inputs: list[ChromInputs]) -> TrainingData:
    windows: list[Window] = []
    tables: dict[str, dict] = {}
    samples: dict[str, dict[str, list[str]]] = {}
    identity: dict[str, dict] = {}
    for inp in inputs:
        ws, extra = load_chromosome(inp)
        windows += ws
        tables[inp.chrom] = extra["retrieval"]
        samples[inp.chrom] = extra["samples"]
        identity[inp.chrom] = extra["identity"]
    overlap = set().union(*(set(s["train"]) & set(s["val"]) for s in samples.values()))
    if overlap:
        raise ArtifactError(f"samples in both train and val: {sorted(overlap)[:5]}")
    n_masks = {len(i.hashes) for i in inputs}
    if len(n_masks) != 1:
        raise ArtifactError(f"every chromosome needs the same number of masks, got {n_masks}")
    masks = [{i.chrom: i.hashes[e] for i in inputs} for e in range(n_masks.pop())]
    with_prior = all(inp.priors for inp in inputs)
    return TrainingData(windows, tables, samples, identity, masks, with_prior)


# -- batches ------------------------------------------------------------------------------------------


def epoch_batches(
    windows: list[Window], batch_size: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """(window index, rows) batches; rows come in (2s, 2s+1) pairs so dosages can be formed."""
    batches = []
    per = batch_size // 2
    for i, w in enumerate(windows):
        n_samples = w.truth["train"].shape[0] // 2
        order = rng.permutation(n_samples)
        for a in range(0, n_samples, per):
            s = order[a : a + per]
            batches.append((i, np.stack([2 * s, 2 * s + 1], 1).ravel()))
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Haplotypes ``rows`` of one window and split, tokenized with mask ``mask_hash``, with their
    neighbours (None without retrieval) among ``reference``, the train split's alleles there."""

    window: Window
    mask_hash: str
    split: str
    rows: np.ndarray
    neighbours: Neighbours | None
    reference: np.ndarray  # (n_ref, L)

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor | None]:
        """The model's inputs, by the name of its arguments: tokens (B, L), af and pos (L,),
        neighbours (B, K, L) and their distances (B, K), prior (B, L); None where there are none."""
        w, key, rows, nb = self.window, (self.mask_hash, self.split), self.rows, self.neighbours
        t = {
            "tokens": torch.from_numpy(w.tokens[key][rows].astype(np.int64)).to(device),
            "af": torch.from_numpy(w.af.copy()).to(device),
            "pos": torch.from_numpy(w.pos.copy()).to(device),
            "neighbours": None,
            "distances": None,
            "prior": None,
        }
        if nb is not None:
            t["neighbours"] = torch.from_numpy(self.reference[nb.ids[rows]]).to(device)
            t["distances"] = torch.from_numpy(nb.distances[rows]).to(device)
        if key in w.priors:
            prior = w.priors[key][rows].astype(np.float32) / PRIOR_SCALE
            t["prior"] = torch.from_numpy(prior).to(device)
        return t

    def truth(self, sites: np.ndarray) -> np.ndarray:
        """(B, S) true alleles at ``sites``."""
        return self.window.truth[self.split][self.rows][:, sites]

    def score(self, acc: Accumulator, sites: np.ndarray, p: np.ndarray) -> None:
        """Add the predictions ``p`` (B, S) at ``sites`` to ``acc``, with how good the neighbours were."""
        truth = self.truth(sites)
        acc.add(
            p.reshape(-1, 2, len(sites)), truth.reshape(-1, 2, len(sites)), self.window.maf[sites]
        )
        if self.neighbours is not None:
            nb = self.neighbours
            acc.add_retrieval(
                nb.distances[self.rows], self.reference[nb.ids[self.rows, 0]][:, sites], truth
            )
