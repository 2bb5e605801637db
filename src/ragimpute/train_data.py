"""What training reads: per chromosome the windows (truth alleles, AF, positions), and per mask hash and
split the token tables, the retrieve stage's neighbours and the engine's prior, read window by window.

A window's arrays are read from their Parquet row groups when a batch first needs them and kept in a
small LRU cache of windows (``WindowCache``, ``train.cache_windows``): memory is bounded by the cache,
not by the chromosome. Only the per-site columns (AF, MAF, positions) of every chromosome stay.

Every table is digested once, streaming, window by window, so that a checkpoint is resumed only on the
same data (``identity``), and checked against the others it must match (mask, site list, samples): a
stale table is an error that names the stage to re-run, not a silently different training set.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import open_parquet, parquet_metadata, reading
from .errors import ArtifactError, MaskMismatchError
from .metrics import Accumulator
from .prior import PRIOR_COLUMN, REFERENCE_DIGEST_KEY
from .prior import SCALE as PRIOR_SCALE
from .tokens import TokenTable
from .windows import DIGEST_KEY, WindowedTable, haplotypes_digest, load_windows, sites_with_hash

# What re-makes tokens, and the index and retrieval tables after them, from the windows' haplotypes.
REMAKE_TOKENS = (
    "Re-make them from the haplotypes: `snakemake --cores all --forcerun tokenize`, with the target "
    "you ran if it was not the whole workflow (outside Snakemake: `ragimpute tokenize`, `ragimpute "
    "index` and `ragimpute retrieve`)"
)

# What re-makes the prior tables from the haplotypes (there is no CLI subcommand for the stage).
REMAKE_PRIOR = (
    "Re-make it from the haplotypes: `snakemake --cores all --forcerun prior`, with the target you ran "
    "if it was not the whole workflow"
)

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


class WindowCache:
    """The windows whose arrays are in memory, least recently used first; at most ``capacity``.

    Arrays are read on first use (``get``) and dropped with their window when ``capacity`` others have
    been used since. ``loads`` counts windows brought in, ``reads`` tables read, ``peak`` the most
    windows held at once."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f"the window cache holds at least one window, got {capacity}")
        self.capacity = capacity
        self._held: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self.loads = self.reads = self.peak = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def get(self, owner: tuple[str, int], item: tuple, read: Callable[[], object]):
        arrays = self._held.get(owner)
        if arrays is None:
            arrays = self._held[owner] = {}
            self.loads += 1
            while len(self._held) > self.capacity:
                self._held.popitem(last=False)
            self.peak = max(self.peak, len(self._held))
        else:
            self._held.move_to_end(owner)
        if item not in arrays:
            arrays[item] = read()
            self.reads += 1
        return arrays[item]

    def clear(self) -> None:
        self._held.clear()


class Lazy(Mapping):
    """One window's arrays of one kind (truth, tokens, priors, neighbours), by key: read through the
    cache when first asked for. ``key in lazy`` says whether the table exists, without reading it."""

    def __init__(
        self, cache: WindowCache, owner: tuple[str, int], kind: str, readers: dict[object, Callable]
    ):
        self._cache, self._owner, self._kind, self._readers = cache, owner, kind, readers

    def __getitem__(self, key):
        return self._cache.get(self._owner, (self._kind, key), self._readers[key])

    def __contains__(self, key) -> bool:
        return key in self._readers

    def __iter__(self):
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)


@dataclass
class Window:
    """One window: its per-site columns, and its tables (dicts, or ``Lazy`` mappings read on use)."""

    chrom: str
    window: int
    af: np.ndarray  # (L,)
    maf: np.ndarray  # (L,)
    pos: np.ndarray  # (L,)
    owned: np.ndarray  # (L,) bool: sites scored in this window
    truth: Mapping[str, np.ndarray]  # split -> (n_hap, L) alleles
    # (hash, split) -> (n_hap, L)
    tokens: Mapping[tuple[str, str], np.ndarray] = field(default_factory=dict)
    # (hash, split) -> (n_hap, L) uint16, P(ALT) x 65535
    priors: Mapping[tuple[str, str], np.ndarray] = field(default_factory=dict)
    # split -> haplotypes, known without reading the window
    n_hap: dict[str, int] = field(default_factory=dict)

    def haplotypes(self, split: str) -> int:
        return self.n_hap[split] if split in self.n_hap else self.truth[split].shape[0]


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


class RetrievalTable:
    """The retrieve stage's table, read window by window and checked against the token table it must
    match: its mask, and the rows of each window in the order of the token table's haplotypes."""

    def __init__(
        self, path: str | os.PathLike, tokens: TokenTable, reference: WindowedTable | None = None
    ):
        self.path, self.tokens = Path(path), tokens
        meta = parquet_metadata(path, "retrieve")
        if meta.get("mask_hash") != tokens.mask_hash:
            raise MaskMismatchError(
                f"{path} was retrieved with mask {meta.get('mask_hash')}, the queries {tokens.path} use "
                f"mask {tokens.mask_hash}; re-run the retrieve stage"
            )
        if reference is not None:
            _refuse_other_haplotypes(
                path,
                meta.get(DIGEST_KEY),
                reference,
                "retrieved from an index of other haplotypes",
                f"Its neighbour ids index those. {REMAKE_TOKENS}",
            )
        self._file = open_parquet(path, "retrieve")
        with reading(path, "retrieve"):
            windows = self._file.read(columns=["window"]).column("window").to_numpy()
            self.k = self._file.schema_arrow.field("neighbours").type.list_size
        if len(windows) and (np.diff(windows) < 0).any():
            raise ArtifactError(f"{path}: rows are not in window order; re-run retrieve")
        # rows [start[w], start[w + 1]) are window w; row groups [group[g], group[g + 1])
        self._start = np.searchsorted(windows, np.arange(tokens.n_windows + 1))
        sizes = [
            self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)
        ]
        self._group = np.r_[0, np.cumsum(sizes, dtype=np.int64)]
        self._expected = list(np.repeat(np.asarray(tokens.samples, dtype=object), 2))

    def read(self, w: int) -> Neighbours:
        """The neighbours of window ``w``: its row groups only (one per window as the retrieve stage
        writes them; tables of earlier versions, written in larger groups, are sliced)."""
        a, b = int(self._start[w]), int(self._start[w + 1])
        first = int(np.searchsorted(self._group, a, side="right")) - 1
        last = max(first, int(np.searchsorted(self._group, b, side="left")) - 1)
        with reading(self.path, "retrieve"):
            t = self._file.read_row_groups(
                list(range(first, last + 1)) if b > a else [],
                columns=["sample", "neighbours", "distances"],
            )
        t = t.slice(a - int(self._group[first]), b - a) if b > a else t
        if t.column("sample").to_pylist() != self._expected:
            raise ArtifactError(
                f"{self.path}: rows of window {w} do not follow {self.tokens.path}; re-run retrieve"
            )
        k = self.k
        ids = t.column("neighbours").combine_chunks().flatten().to_numpy().reshape(-1, k)
        dist = t.column("distances").combine_chunks().flatten().to_numpy().reshape(-1, k)
        return Neighbours(ids.astype(np.int64), dist.astype(np.float32), self.tokens.mask_hash)


def read_retrieval(path: str | os.PathLike, tokens: TokenTable) -> dict[int, Neighbours]:
    """The retrieve stage's table, every window, checked against the token table it must match."""
    table = RetrievalTable(path, tokens)
    return {w: table.read(w) for w in range(tokens.n_windows)}


def _open_tables(
    inp: ChromInputs, splits: tuple[str, ...], slh: str
) -> tuple[dict[str, WindowedTable], dict[tuple, TokenTable], dict[tuple, WindowedTable]]:
    """The truth, token and prior tables of one chromosome, each checked against the site list and the
    samples of its split."""

    def haplotypes(split: str) -> WindowedTable:
        return WindowedTable(Path(inp.windows_dir) / "haplotypes" / f"{split}.parquet", "alleles")

    truth = {s: haplotypes(s) for s in splits}
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
        if key[1] in truth:
            _refuse_other_haplotypes(
                t.path,
                t.metadata.get(DIGEST_KEY),
                truth[key[1]],
                "made from other haplotypes",
                REMAKE_TOKENS,
            )
    priors = {key: WindowedTable(p, PRIOR_COLUMN) for key, p in inp.priors.items()}
    reference = truth.get("train")  # what every prior copied from, read here if training does not
    if priors and reference is None:
        reference = haplotypes("train")
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
        # the haplotypes of its rows (when training reads that split) and those it copied from
        for digest, table in ((DIGEST_KEY, truth.get(key[1])), (REFERENCE_DIGEST_KEY, reference)):
            if table is not None:
                _refuse_other_haplotypes(
                    t.path, meta.get(digest), table, "computed from other haplotypes", REMAKE_PRIOR
                )
    return truth, tokens, priors


def _refuse_other_haplotypes(
    path: str | os.PathLike, recorded: str | None, table: WindowedTable, how: str, remake: str
) -> None:
    """Refuse the artifact at ``path`` when the haplotypes digest it records is not ``table``'s (an
    earlier version's records none): it was ``how`` (e.g. "made from other haplotypes")."""
    have = haplotypes_digest(table)
    if recorded != have:
        raise ArtifactError(
            f"{path} was {how} (digest {recorded}; none: written by an earlier version) than "
            f"{table.path} ({have}). {remake}"
        )


def _read_prior(table: WindowedTable, w: int) -> np.ndarray:
    return table.read(w).view(np.uint16)


class Chromosome:
    """One chromosome's tables, opened and checked: ``windows`` read their arrays through ``cache``
    when used, ``retrieval`` maps (hash, split) to {window: Neighbours} read likewise."""

    def __init__(self, inp: ChromInputs, cache: WindowCache, splits: tuple[str, ...] = SPLITS):
        self.inp = inp
        sites, self.site_list_hash = sites_with_hash(inp.windows_dir)
        self._wins = load_windows(inp.windows_dir)
        self.truth, self.tokens, self.priors = _open_tables(inp, splits, self.site_list_hash)
        reference = self.truth.get("train")  # the haplotypes neighbour ids name
        self.retrieval_tables = {
            key: RetrievalTable(p, self.tokens[key], reference) for key, p in inp.retrieval.items()
        }
        self.samples = {s: t.samples for s, t in self.truth.items()}
        self._sites = (
            sites["pos"].to_numpy(np.int64),
            sites["af"].to_numpy(np.float32),
            sites["maf"].to_numpy(np.float32),
            sites["window"].to_numpy(),
        )
        self.windows = [self._window(cache, row) for row in self._wins.itertuples()]
        self.retrieval = {
            key: _WindowNeighbours(cache, inp.chrom, key, table)
            for key, table in self.retrieval_tables.items()
        }

    def _window(self, cache: WindowCache, row) -> Window:
        pos, af, maf, owner = self._sites
        a, b, w = row.first_site, row.last_site + 1, row.window

        def lazy(kind: str, tables: dict, read: Callable | None = None) -> Lazy:
            readers = {key: _reader(t, w, read) for key, t in tables.items()}
            return Lazy(cache, (self.inp.chrom, w), kind, readers)

        return Window(
            self.inp.chrom,
            w,
            af[a:b],
            maf[a:b],
            pos[a:b],
            owner[a:b] == w,
            lazy("truth", self.truth),
            lazy("tokens", self.tokens),
            lazy("priors", self.priors, _read_prior),
            {s: t.n_haplotypes for s, t in self.truth.items()},
        )

    def identity(self) -> dict:
        """What was read: the samples of each split in order, the site list hash and a digest of every
        table's contents, computed window by window (one window in memory at a time)."""
        pos, af, maf, owner = self._sites
        bounds = self._wins[["first_site", "last_site"]]
        digests = {("sites",): _digest(pos, af, maf, owner, bounds)}
        ids = [w.window for w in self.windows]
        for s, t in self.truth.items():
            digests[("truth", s)] = _digest_windows(t.read(w) for w in ids)
        for key, t in self.tokens.items():
            digests[("tokens", *key)] = _digest_windows(t.read(w) for w in ids)
        for key, t in self.priors.items():
            digests[("prior", *key)] = _digest_windows(_read_prior(t, w) for w in ids)
        for key, t in self.retrieval_tables.items():
            nbs = (t.read(w) for w in range(self.tokens[key].n_windows))
            digests[("retrieval", *key)] = _digest_windows((nb.ids, nb.distances) for nb in nbs)
        return {
            "site_list_hash": self.site_list_hash,
            "samples": self.samples,
            "digests": {"/".join(k): v for k, v in sorted(digests.items())},
        }


def _reader(table, w: int, read: Callable | None = None) -> Callable[[], np.ndarray]:
    return (lambda: read(table, w)) if read else (lambda: table.read(w))


class _WindowNeighbours(Mapping):
    """{window: Neighbours} of one retrieval table, each window read through the cache."""

    def __init__(self, cache: WindowCache, chrom: str, key: tuple[str, str], table: RetrievalTable):
        self._cache, self._chrom, self._key, self._table = cache, chrom, key, table

    def __getitem__(self, w: int) -> Neighbours:
        if not 0 <= w < self._table.tokens.n_windows:
            raise KeyError(w)
        return self._cache.get(
            (self._chrom, w), ("neighbours", self._key), lambda: self._table.read(w)
        )

    def __iter__(self):
        return iter(range(self._table.tokens.n_windows))

    def __len__(self) -> int:
        return self._table.tokens.n_windows


def load_chromosome(
    inp: ChromInputs, splits: tuple[str, ...] = SPLITS, cache: WindowCache | None = None
) -> tuple[list[Window], dict]:
    """Windows of one chromosome (arrays read through ``cache`` on use; by default a cache that holds
    them all), the retrieval tables by (hash, split), and ``identity``: what was read (samples per split
    in order, site list hash, a digest of every table's contents), so that a checkpoint is resumed only
    on the same data."""
    chrom = Chromosome(inp, cache or WindowCache(1 << 30), splits)
    return chrom.windows, {
        "retrieval": chrom.retrieval,
        "samples": chrom.samples,
        "site_list_hash": chrom.site_list_hash,
        "identity": chrom.identity(),
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


def _digest_windows(blocks) -> str:
    """The digest of a table's windows in order (each block an array, or a tuple of arrays)."""
    h = hashlib.sha256()
    for block in blocks:
        _digest_update(h, *(block if isinstance(block, tuple) else (block,)))
    return h.hexdigest()[:16]


# -- every chromosome ---------------------------------------------------------------------------------


class References(Mapping):
    """(chrom, window) -> (n_ref, L) train-split alleles, the rows that neighbour ids index; read
    through the window cache."""

    def __init__(self, windows: list[Window]):
        self._windows = {(w.chrom, w.window): w for w in windows}

    def __getitem__(self, key: tuple[str, int]) -> np.ndarray:
        return self._windows[key].truth["train"]

    def __iter__(self):
        return iter(self._windows)

    def __len__(self) -> int:
        return len(self._windows)


@dataclass
class TrainingData:
    """Every chromosome's windows (arrays read on use through ``cache``), and the tables and names that
    go with them."""

    windows: list[Window]
    tables: dict[str, dict]  # chrom -> {(hash, split): {window: Neighbours}}
    samples: dict[str, dict[str, list[str]]]  # chrom -> split -> sample names
    identity: dict[str, dict]  # chrom -> what was read (``Chromosome.identity``)
    masks: list[dict[str, str]]  # mask e of the schedule: chrom -> hash
    with_prior: bool  # every chromosome comes with the engine's prior: the model refines it
    cache: WindowCache = field(default_factory=WindowCache)
    # (chrom, window) -> (n_ref, L) train-split alleles: the rows that neighbour ids index
    references: References = field(init=False)

    def __post_init__(self) -> None:
        self.references = References(self.windows)

    def hashes(self, epoch: int) -> dict[str, str]:
        """Epoch e uses mask e mod E for queries and retrieval alike (dynamic masking)."""
        return self.masks[epoch % len(self.masks)]

    def batch(self, w: Window, mask_hash: str, split: str, rows: np.ndarray, nb) -> Batch:
        return Batch(w, mask_hash, split, rows, nb, self.references[(w.chrom, w.window)])


def load_training_data(inputs: list[ChromInputs], cache_windows: int = 8) -> TrainingData:
    """Every chromosome's tables opened, checked and digested; arrays are read later, on use, and at
    most ``cache_windows`` windows are held at a time."""
    cache = WindowCache(cache_windows)
    windows: list[Window] = []
    tables: dict[str, dict] = {}
    samples: dict[str, dict[str, list[str]]] = {}
    identity: dict[str, dict] = {}
    for inp in inputs:
        chrom = Chromosome(inp, cache)
        windows += chrom.windows
        tables[inp.chrom] = chrom.retrieval
        samples[inp.chrom] = chrom.samples
        identity[inp.chrom] = chrom.identity()
    overlap = set().union(*(set(s["train"]) & set(s["val"]) for s in samples.values()))
    if overlap:
        raise ArtifactError(f"samples in both train and val: {sorted(overlap)[:5]}")
    n_masks = {len(i.hashes) for i in inputs}
    if len(n_masks) != 1:
        raise ArtifactError(f"every chromosome needs the same number of masks, got {n_masks}")
    masks = [{i.chrom: i.hashes[e] for i in inputs} for e in range(n_masks.pop())]
    with_prior = all(inp.priors for inp in inputs)
    return TrainingData(windows, tables, samples, identity, masks, with_prior, cache)


# -- batches ------------------------------------------------------------------------------------------


def epoch_batches(
    windows: list[Window], batch_size: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """Every (window index, rows) batch, shuffled; rows come in (2s, 2s+1) pairs so dosages can be
    formed."""
    batches = []
    per = batch_size // 2
    for i, w in enumerate(windows):
        n_samples = w.haplotypes("train") // 2
        order = rng.permutation(n_samples)
        for a in range(0, n_samples, per):
            s = order[a : a + per]
            batches.append((i, _pairs(s)))
    rng.shuffle(batches)
    return batches


def _pairs(samples: np.ndarray) -> np.ndarray:
    return np.stack([2 * samples, 2 * samples + 1], 1).ravel()


def n_sampled_batches(examples: int, batch_size: int) -> int:
    """Batches of an epoch of ``examples`` haplotype windows (the last one takes the remainder)."""
    return max(1, math.ceil(examples / batch_size))


def sample_batches(
    windows: list[Window], batch_size: int, examples: int, rng: np.random.Generator, group: int
) -> list[tuple[int, np.ndarray]]:
    """``examples`` haplotype windows (rounded up to whole samples) in batches drawn across every
    window: each batch's window with probability proportional to its training haplotypes (every
    haplotype window equally likely), its samples without replacement. The windows drawn are visited
    in random order, ``group`` at a time with their batches shuffled together, so that a window cache
    of ``group`` windows reads each window once per epoch."""
    per = batch_size // 2
    n_batches = n_sampled_batches(examples, batch_size)
    last = math.ceil((examples - (n_batches - 1) * batch_size) / 2)  # samples of the last batch
    weights = np.array([w.haplotypes("train") for w in windows], dtype=np.float64)
    if weights.sum() == 0:
        return []
    counts = np.bincount(
        rng.choice(len(windows), size=n_batches, p=weights / weights.sum()), minlength=len(windows)
    )
    visited = rng.permutation(np.flatnonzero(counts))
    batches: list[tuple[int, np.ndarray]] = []
    for start in range(0, len(visited), max(1, group)):
        block = []
        for i in visited[start : start + max(1, group)]:
            n_samples = windows[i].haplotypes("train") // 2
            for _ in range(counts[i]):
                s = rng.choice(n_samples, size=min(per, n_samples), replace=False)
                block.append((int(i), _pairs(s)))
        rng.shuffle(block)
        batches += block
    i, rows = batches[-1]
    batches[-1] = (i, rows[: 2 * last])
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

    def score(
        self, acc: Accumulator, sites: np.ndarray, p: np.ndarray, neighbours: bool = True
    ) -> None:
        """Add the predictions ``p`` (B, S) at ``sites`` to ``acc``, with how good the neighbours
        were (unless ``neighbours`` is False: they do not depend on ``p``)."""
        truth = self.truth(sites)
        acc.add(
            p.reshape(-1, 2, len(sites)), truth.reshape(-1, 2, len(sites)), self.window.maf[sites]
        )
        if neighbours and self.neighbours is not None:
            nb = self.neighbours
            acc.add_retrieval(
                nb.distances[self.rows], self.reference[nb.ids[self.rows, 0]][:, sites], truth
            )
