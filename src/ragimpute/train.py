"""Training: one loop, read top to bottom.

Data come from the pipeline's artifacts: per chromosome the windows (truth alleles, AF, positions), and
per mask hash the token tables and the retrieval tables of the train and val splits. With a mask
schedule of E masks, epoch e uses mask e mod E for both queries and retrieval (dynamic masking with an
index that always matches). Retrieval modes:

- ``token``: neighbours from the mask-keyed FAISS index (the ``retrieve`` stage's tables);
- ``embedding``: reference haplotypes encoded by the current model, a FAISS index rebuilt every epoch
  (or every N steps), each refresh logged with its time and index hash;
- ``none``: the same model without retrieval (ablation).

A training query never retrieves its own sample; val samples are never in the index or the training data.

State that must survive a killed job (Snakemake deletes a rule's outputs before re-running it) lives in
``state_dir``: ``ckpt.pt`` is written atomically after every epoch and a re-run resumes from it when the
configuration is unchanged. The best model is chosen on the current epoch's validation r².
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .atomic import atomic_path, parquet_metadata, read_parquet, write_json, write_tsv
from .errors import ArtifactError, MaskMismatchError
from .index import EmbeddingIndex
from .logs import log
from .metrics import BIN_LABELS, Accumulator
from .model import ImputationModel, ModelConfig, masked_loss
from .plots import pyplot, save_png
from .prior import PRIOR_COLUMN
from .prior import SCALE as PRIOR_SCALE
from .tokens import MASK, VOCAB, TokenTable
from .windows import WindowedTable, load_windows, sites_with_hash

MODES = ("token", "embedding", "none")


@dataclass
class TrainConfig:
    mode: str = "token"
    epochs: int = 4
    batch_size: int = 16  # haplotype windows per step (pairs of haplotypes of one sample)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    grad_clip: float = 1.0
    patience: int = 2  # epochs without a better validation r² before stopping
    sites_per_example: int = 128  # hidden sites scored per haplotype window per step
    k: int = 256
    refresh_every: int = 0  # embedding mode: steps between index refreshes; 0 = every epoch
    rare_weight: float = 0.0  # loss weight 1 + rare_weight on sites with reference MAF < 5%
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    processes: int = 0  # DDP processes; 0 = one per GPU when more than one, else 1
    max_steps_per_epoch: int = 0  # 0 = every batch
    log_every: int = 50
    preset: str = "small"
    prior: bool = (
        True  # refine the engine's P(ALT) (the prior stage); False: the window copying model
    )
    model: dict = field(default_factory=dict)  # overrides of the preset (d_model, n_layers, ...)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size % 2:
            raise ValueError(
                "train.batch_size must be even (both haplotypes of a sample go together)"
            )

    def model_config(self, use_prior: bool = False) -> ModelConfig:
        return ModelConfig.preset(
            self.preset, use_retrieval=self.mode != "none", use_prior=use_prior, **self.model
        )


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


# -- data ---------------------------------------------------------------------------------------------


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


def load_chromosome(
    inp: ChromInputs, splits: tuple[str, ...] = ("train", "val")
) -> tuple[list[Window], dict]:
    """Windows of one chromosome with truth and tokens in memory, the retrieval tables by (hash, split),
    and ``identity``: what was read (samples per split in order, site list hash, a digest of every
    table's contents), so that a checkpoint is resumed only on the same data."""
    sites, slh = sites_with_hash(inp.windows_dir)
    wins = load_windows(inp.windows_dir)
    truth_tables = {
        s: WindowedTable(Path(inp.windows_dir) / "haplotypes" / f"{s}.parquet", "alleles")
        for s in splits
    }
    token_tables = {key: TokenTable(p) for key, p in inp.tokens.items()}
    for key, t in token_tables.items():
        if t.mask_hash != key[0] or t.site_list_hash != slh:
            raise ArtifactError(
                f"{t.path}: mask {t.mask_hash} / sites {t.site_list_hash}, expected {key[0]} / {slh}"
            )
        if key[1] in truth_tables and t.samples != truth_tables[key[1]].samples:
            raise ArtifactError(
                f"{t.path}: its samples are not those of {truth_tables[key[1]].path} (stale tokens); "
                "re-run the tokenize stage (`snakemake --cores all --forcerun tokenize`)"
            )
    prior_tables = {key: WindowedTable(p, PRIOR_COLUMN) for key, p in inp.priors.items()}
    for key, t in prior_tables.items():
        meta = t.metadata
        if meta.get("mask_hash") != key[0] or meta.get("site_list_hash") != slh:
            raise MaskMismatchError(
                f"{t.path}: prior of mask {meta.get('mask_hash')} / sites {meta.get('site_list_hash')}"
                f", expected {key[0]} / {slh}; re-run the prior stage"
            )
        if key[1] in truth_tables and t.samples != truth_tables[key[1]].samples:
            raise ArtifactError(
                f"{t.path}: its samples are not those of {truth_tables[key[1]].path} (stale prior); "
                "re-run the prior stage (`snakemake --cores all --forcerun prior`)"
            )
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


# -- retrieval providers ------------------------------------------------------------------------------


class TokenRetrieval:
    """Neighbours from the mask-keyed index (precomputed by the retrieve stage)."""

    name = "token"

    def __init__(self, tables: dict[str, dict]):
        self.tables = tables  # chrom -> {(hash, split): {window: Neighbours}}

    def get(self, w: Window, mask_hash: str, split: str) -> Neighbours:
        nb = self.tables[w.chrom][(mask_hash, split)][w.window]
        if nb.mask_hash != mask_hash:
            raise MaskMismatchError(
                f"neighbours of mask {nb.mask_hash} asked for queries of mask {mask_hash}"
            )
        return nb


class NoRetrieval:
    name = "none"

    def get(self, w: Window, mask_hash: str, split: str) -> None:
        return None


class EmbeddingRetrieval:
    """Reference haplotypes encoded by the current model; the index is rebuilt at every refresh."""

    name = "embedding"

    def __init__(self, k: int, samples: dict[str, dict[str, list[str]]], device: torch.device):
        self.k = k
        self.samples = samples  # chrom -> split -> sample names
        self.device = device
        self.current: dict[tuple[str, int, str, str], Neighbours] = {}
        self.hash: str | None = None
        self.refreshes = 0

    def refresh(
        self, model: ImputationModel, windows: list[Window], step: int, hashes: dict[str, str]
    ) -> dict:
        t0 = time.perf_counter()
        model_hash = state_hash(model)
        was_training = model.training
        model.eval()
        digest = hashlib.sha256(model_hash.encode())
        self.current = {}
        for w in windows:
            h = hashes[w.chrom]
            vec = {s: _embed(model, w, h, s, self.device) for s in ("train", "val")}
            index = EmbeddingIndex(h, model_hash, vec["train"], self.samples[w.chrom]["train"])
            digest.update(index.hash.encode())
            for split in ("train", "val"):
                rows = list(np.repeat(np.asarray(self.samples[w.chrom][split], dtype=object), 2))
                ids, dist = index.search(vec[split], rows, self.k, h, model_hash)
                self.current[(w.chrom, w.window, h, split)] = Neighbours(ids, dist, h)
        model.train(was_training)
        self.hash = digest.hexdigest()[:16]
        self.refreshes += 1
        info = {
            "refresh": self.refreshes,
            "step": step,
            "seconds": round(time.perf_counter() - t0, 3),
            "index_hash": self.hash,
            "model_hash": model_hash,
        }
        log.info(
            "embedding index refresh %d at step %d: %.1f s, index hash %s",
            self.refreshes,
            step,
            info["seconds"],
            self.hash,
        )
        return info

    def get(self, w: Window, mask_hash: str, split: str) -> Neighbours:
        return self.current[(w.chrom, w.window, mask_hash, split)]


def _embed(
    model: ImputationModel, w: Window, h: str, split: str, device: torch.device
) -> np.ndarray:
    tokens = w.tokens[(h, split)]
    af = torch.from_numpy(w.af.copy()).to(device)
    pos = torch.from_numpy(w.pos.copy()).to(device)
    out = []
    for a in range(0, len(tokens), 256):
        t = torch.from_numpy(tokens[a : a + 256].astype(np.int64)).to(device)
        out.append(model.embed(t, af, pos).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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


def to_tensors(
    w: Window,
    h: str,
    split: str,
    rows: np.ndarray,
    nb: Neighbours | None,
    reference: np.ndarray,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    t = {
        "tokens": torch.from_numpy(w.tokens[(h, split)][rows].astype(np.int64)).to(device),
        "af": torch.from_numpy(w.af.copy()).to(device),
        "pos": torch.from_numpy(w.pos.copy()).to(device),
    }
    if nb is not None:
        t["neighbours"] = torch.from_numpy(reference[nb.ids[rows]]).to(device)  # (B, K, L)
        t["distances"] = torch.from_numpy(nb.distances[rows]).to(device)
    if (h, split) in w.priors:
        prior = w.priors[(h, split)][rows].astype(np.float32) / PRIOR_SCALE
        t["prior"] = torch.from_numpy(prior).to(device)
    return t


# -- the loop -----------------------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup_frac: float, min_frac: float) -> float:
    """Linear warm-up, then cosine decay to ``min_frac`` of the peak."""
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def identity(cfg: TrainConfig, inputs: list[ChromInputs], data: dict | None = None) -> dict:
    """What a run trains on: the train config, the chromosomes and masks, and (``data``: per chromosome
    the ``identity`` of ``load_chromosome``) the samples of each split, the site list and a digest of
    every table read. Paths are left out, so that the same data in another directory is the same run."""
    return {
        "cfg": {
            k: v for k, v in asdict(cfg).items() if k not in ("log_every", "threads", "device")
        },
        "inputs": [(i.chrom, i.hashes) for i in inputs],
        "version": __version__,
        "data": data or {},
    }


def fingerprint(cfg: TrainConfig, inputs: list[ChromInputs], data: dict | None = None) -> str:
    """Identity of a run: a checkpoint is resumed only by the run that wrote it."""
    ident = identity(cfg, inputs, data)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def identity_changes(old: dict | None, new: dict, limit: int = 6) -> list[str]:
    """Why a checkpoint written under identity ``old`` cannot be resumed by a run of identity ``new``."""
    if not old:
        return ["the checkpoint records no inputs (written by an earlier version)"]
    out = []
    if old.get("version") != new["version"]:
        out.append(f"ragimpute version {old.get('version')} -> {new['version']}")
    ocfg, ncfg = old.get("cfg", {}), new["cfg"]
    changed = [k for k in sorted(set(ocfg) | set(ncfg)) if ocfg.get(k) != ncfg.get(k)]
    if changed:
        out.append(
            "train config changed: "
            + ", ".join(f"{k} {ocfg.get(k)!r} -> {ncfg.get(k)!r}" for k in changed)
        )
    if [list(x) for x in old.get("inputs", [])] != [list(x) for x in new["inputs"]]:
        out.append(f"chromosomes / mask hashes changed: {old.get('inputs')} -> {new['inputs']}")
    odata, ndata = old.get("data", {}), new["data"]
    for chrom in sorted(set(odata) | set(ndata)):
        o, n = odata.get(chrom), ndata.get(chrom)
        if o is None or n is None:
            continue  # reported with the chromosomes above
        if o.get("site_list_hash") != n.get("site_list_hash"):
            out.append(
                f"chromosome {chrom}: the site list changed ({o.get('site_list_hash')} -> "
                f"{n.get('site_list_hash')}: another panel, or other filters)"
            )
        for split in sorted(set(o.get("samples", {})) | set(n.get("samples", {}))):
            a, b = o.get("samples", {}).get(split, []), n.get("samples", {}).get(split, [])
            if a != b:
                left, joined = len(set(a) - set(b)), len(set(b) - set(a))
                what = f"{left} samples left, {joined} joined" if left or joined else "reordered"
                out.append(f"chromosome {chrom}: the {split} split changed ({what})")
        od, nd = o.get("digests", {}), n.get("digests", {})
        tables = [k for k in sorted(set(od) | set(nd)) if od.get(k) != nd.get(k)]
        if tables:
            out.append(f"chromosome {chrom}: contents changed: {', '.join(tables)}")
    if not out:
        out.append("the inputs differ")
    if len(out) > limit:
        out = out[:limit] + [f"and {len(out) - limit} more"]
    return out


def train(
    cfg: TrainConfig,
    inputs: list[ChromInputs],
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    retrieval_factory=None,
) -> dict:
    """Train and write ``model.pt`` (best), ``metrics.csv``, ``curves.png`` and ``train.json`` to out_dir.

    ``retrieval_factory(data, device)`` may supply another retrieval provider; benchmarks use it to
    reproduce the prototype's mismatched-mask defect on purpose. The pipeline never passes one.
    """
    world = cfg.processes or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    world = max(1, world)
    on_cuda = pick_device(cfg.device).type == "cuda"
    if on_cuda and world > torch.cuda.device_count():
        # NCCL cannot run two processes on one GPU; each process takes a GPU of its own
        raise ValueError(
            f"train.processes is {world} but only {torch.cuda.device_count()} GPU(s) are visible: "
            "set train.processes to at most the number of GPUs (0 = one per GPU), or train.device "
            "to cpu for several CPU processes"
        )
    if world == 1:
        return _run(0, 1, cfg, inputs, out_dir, state_dir, retrieval_factory)
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    log.info("distributed training: %d processes", world)
    mp.spawn(
        _run,
        args=(world, cfg, inputs, out_dir, state_dir, retrieval_factory),
        nprocs=world,
        join=True,
    )
    return json.loads((Path(out_dir) / "train.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(
    rank: int,
    world: int,
    cfg: TrainConfig,
    inputs: list[ChromInputs],
    out_dir,
    state_dir,
    retrieval_factory,
):
    import torch.distributed as dist

    distributed = world > 1
    device = pick_device(cfg.device)
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lead = rank == 0
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    ckpt_path = state_dir / "ckpt.pt"

    # Data
    windows: list[Window] = []
    tables: dict[str, dict] = {}
    samples: dict[str, dict[str, list[str]]] = {}
    data_ids: dict[str, dict] = {}
    for inp in inputs:
        ws, extra = load_chromosome(inp)
        windows += ws
        tables[inp.chrom] = extra["retrieval"]
        samples[inp.chrom] = extra["samples"]
        data_ids[inp.chrom] = extra["identity"]
    ident = identity(cfg, inputs, data_ids)
    fp = fingerprint(cfg, inputs, data_ids)
    overlap = set().union(*(set(s["train"]) & set(s["val"]) for s in samples.values()))
    if overlap:
        raise ArtifactError(f"samples in both train and val: {sorted(overlap)[:5]}")
    n_masks = {len(i.hashes) for i in inputs}
    if len(n_masks) != 1:
        raise ArtifactError(f"every chromosome needs the same number of masks, got {n_masks}")
    n_masks = n_masks.pop()
    hashes_by_epoch = [{i.chrom: i.hashes[e] for i in inputs} for e in range(n_masks)]
    references = {(w.chrom, w.window): w.truth["train"] for w in windows}

    if retrieval_factory is not None:
        provider = retrieval_factory(
            {"windows": windows, "tables": tables, "samples": samples}, device
        )
    elif cfg.mode == "token":
        provider = TokenRetrieval(tables)
    elif cfg.mode == "embedding":
        provider = EmbeddingRetrieval(cfg.k, samples, device)
    else:
        provider = NoRetrieval()

    # Model, optimiser, schedule. The global Python and numpy generators are not used by our code
    # (it draws from generators seeded per epoch) but are seeded too, for any library that does.
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002
    # the model refines the engine's prior when every chromosome's inputs carry one
    with_prior = all(inp.priors for inp in inputs)
    mcfg = cfg.model_config(use_prior=with_prior)
    model = ImputationModel(mcfg).to(device)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(epoch_batches(windows, cfg.batch_size, np.random.default_rng(0))) // world
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.warmup_frac, cfg.min_lr_frac)
    )
    start_epoch, history, best, bad_epochs, refreshes = 0, [], {"val_r2": -1.0, "epoch": -1}, 0, []
    stale = False
    ck = None
    if ckpt_path.exists():
        # on the CPU: the RNG states must stay CPU tensors (load_state_dict moves the weights and
        # the optimizer state to the model's device)
        try:
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or corrupted file: the state is lost, not the run
            stale = True
            if lead:
                log.warning("%s is unreadable (%s); training starts afresh", ckpt_path, e)
    if ck is not None:
        if ck.get("fingerprint") == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start_epoch, history, best = ck["epoch"] + 1, ck["history"], ck["best"]
            bad_epochs, refreshes = ck["bad_epochs"], ck.get("refreshes", [])
            _set_rng_state(ck["rng"])
            if lead:
                log.info(
                    "resuming from %s: epoch %d done, best val r2 %.4f at epoch %d",
                    ckpt_path,
                    ck["epoch"],
                    best["val_r2"],
                    best["epoch"],
                )
        else:
            stale = True
            if lead:
                log.warning(
                    "%s belongs to another configuration or other inputs (%s != %s): %s. Training "
                    "starts afresh; the old checkpoint is discarded",
                    ckpt_path,
                    ck.get("fingerprint"),
                    fp,
                    "; ".join(identity_changes(ck.get("identity"), ident)),
                )
    if distributed:
        dist.barrier()  # every process has read the checkpoint before the lead removes it
    if lead and start_epoch == 0:
        # A fresh start: a checkpoint or best model of other inputs must never be resumed or copied.
        if stale:
            ckpt_path.unlink(missing_ok=True)
        (state_dir / "best.pt").unlink(missing_ok=True)
    if lead:
        log.info(
            "model %s: %d parameters, mode %s, device %s, %d windows, %d steps/epoch, %d mask(s)",
            mcfg,
            sum(p.numel() for p in model.parameters()),
            cfg.mode,
            device,
            len(windows),
            steps_per_epoch,
            n_masks,
        )

    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if bad_epochs >= cfg.patience:
            stopped_early = True
            break
        t_epoch = time.perf_counter()
        hashes = hashes_by_epoch[epoch % n_masks]
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + rank)
        batches = epoch_batches(windows, cfg.batch_size, rng)
        batches = batches[rank::world][:steps_per_epoch]
        if isinstance(provider, EmbeddingRetrieval):
            refreshes.append(
                {
                    "epoch": epoch,
                    **provider.refresh(model, windows, epoch * steps_per_epoch, hashes),
                }
            )
        ddp_model.train()
        acc = Accumulator()
        n_hw = 0
        for step, (wi, rows) in enumerate(batches):
            if (
                isinstance(provider, EmbeddingRetrieval)
                and cfg.refresh_every
                and step
                and step % cfg.refresh_every == 0
            ):
                refreshes.append(
                    {
                        "epoch": epoch,
                        **provider.refresh(model, windows, epoch * steps_per_epoch + step, hashes),
                    }
                )
            w = windows[wi]
            h = hashes[w.chrom]
            nb = provider.get(w, h, "train")
            t = to_tensors(w, h, "train", rows, nb, references[(w.chrom, w.window)], device)
            hidden = np.flatnonzero(w.tokens[(h, "train")][rows[0]] == MASK)
            if len(hidden) == 0:
                continue
            sites = np.sort(
                rng.choice(hidden, size=min(cfg.sites_per_example, len(hidden)), replace=False)
            )
            sites_t = torch.from_numpy(sites).to(device)
            truth = torch.from_numpy(w.truth["train"][rows][:, sites]).to(device)
            weight = None
            if cfg.rare_weight:
                weight = (
                    torch.from_numpy(1.0 + cfg.rare_weight * (w.maf[sites] < 0.05))
                    .float()
                    .to(device)
                )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = ddp_model(
                    t["tokens"],
                    t["af"],
                    t["pos"],
                    t.get("neighbours"),
                    t.get("distances"),
                    sites_t,
                    prior=t.get("prior"),
                )
            loss = masked_loss(logits, truth, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            n_hw += len(rows)
            p = torch.sigmoid(logits.detach().float()).cpu().numpy()
            acc.add_loss(float(loss.item()), truth.numel())
            acc.add(
                p.reshape(-1, 2, len(sites)),
                w.truth["train"][rows][:, sites].reshape(-1, 2, len(sites)),
                w.maf[sites],
            )
            if nb is not None:
                acc.add_retrieval(
                    nb.distances[rows],
                    references[(w.chrom, w.window)][nb.ids[rows, 0]][:, sites],
                    w.truth["train"][rows][:, sites],
                )
            if lead and cfg.log_every and (step + 1) % cfg.log_every == 0:
                el = time.perf_counter() - t_epoch
                rate = n_hw * world / el
                eta = (len(batches) - step - 1) * el / (step + 1)
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e %.1f haplotype-windows/s ETA %.0f s",
                    epoch,
                    step + 1,
                    len(batches),
                    acc.loss[0] / max(acc.loss[1], 1),
                    sched.get_last_lr()[0],
                    rate,
                    eta,
                )
        if distributed:
            v = torch.from_numpy(acc.state()).to(device if device.type == "cuda" else "cpu")
            dist.all_reduce(v)
            acc.load_state(v.cpu().numpy())
        train_seconds = time.perf_counter() - t_epoch

        row = {
            "epoch": epoch,
            "mask_hashes": ",".join(sorted(set(hashes.values()))),
            **acc.result("train_"),
        }
        if lead:
            val = evaluate(model, windows, hashes, provider, references, device, "val")
            row.update(val.result("val_"))
            row["seconds"] = round(time.perf_counter() - t_epoch, 2)
            row["train_seconds"] = round(train_seconds, 2)
            row["haplotype_windows_per_s"] = (
                round(n_hw * world / train_seconds, 1) if train_seconds else float("nan")
            )
            row["lr"] = sched.get_last_lr()[0]
            history.append(row)
            improved = _finite(row["val_r2"]) and row["val_r2"] > best["val_r2"]
            if improved:
                best = {"val_r2": row["val_r2"], "epoch": epoch}
                bad_epochs = 0
                _save_model(state_dir / "best.pt", model, cfg, inputs, row, fp)
            else:
                bad_epochs += 1
            log.info(
                "epoch %d: train loss %.4f r2 %.4f | val loss %.4f r2 %.4f (bins %s) f1 %.3f | %.1f s%s",
                epoch,
                row["train_loss"],
                row["train_r2"],
                row["val_loss"],
                row["val_r2"],
                " ".join(f"{row[f'val_r2_{b}']:.3f}" for b in BIN_LABELS),
                row["val_f1"],
                row["seconds"],
                " *best*" if improved else "",
            )
            _save_checkpoint(
                ckpt_path, model, opt, sched, epoch, history, best, bad_epochs, refreshes, fp, ident
            )
        if distributed:
            flag = torch.tensor([bad_epochs], device=device if device.type == "cuda" else "cpu")
            dist.broadcast(flag, 0)
            bad_epochs = int(flag.item())
            dist.barrier()
    stopped_early = stopped_early or len(history) < cfg.epochs

    summary = None
    if lead:
        summary = _write_outputs(
            out_dir,
            state_dir,
            cfg,
            inputs,
            history,
            best,
            refreshes,
            stopped_early,
            fp,
            world,
            device,
        )
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


@torch.no_grad()
def evaluate(
    model: ImputationModel,
    windows: list[Window],
    hashes: dict[str, str],
    provider,
    references,
    device,
    split: str,
    batch_rows: int = 32,
    site_chunk: int = 512,
) -> Accumulator:
    """Every hidden site that a window owns, for every haplotype of ``split``."""
    was = model.training
    model.eval()
    acc = Accumulator()
    for w in windows:
        h = hashes[w.chrom]
        tokens = w.tokens[(h, split)]
        sites = np.flatnonzero((tokens[0] == MASK) & w.owned)
        if len(sites) == 0:
            continue
        nb = provider.get(w, h, split)
        for a in range(0, len(tokens), batch_rows):
            rows = np.arange(a, min(a + batch_rows, len(tokens)))
            t = to_tensors(w, h, split, rows, nb, references[(w.chrom, w.window)], device)
            p_t = model.predict_sites(
                t["tokens"],
                t["af"],
                t["pos"],
                t.get("neighbours"),
                t.get("distances"),
                torch.from_numpy(sites).to(device),
                site_chunk,
                prior=t.get("prior"),
            )
            truth = w.truth[split][rows][:, sites]
            loss = torch.nn.functional.binary_cross_entropy(
                p_t.clamp(1e-7, 1 - 1e-7), torch.from_numpy(truth).to(device).float()
            )
            acc.add_loss(float(loss.item()), truth.size)
            p = p_t.cpu().numpy()
            acc.add(p.reshape(-1, 2, len(sites)), truth.reshape(-1, 2, len(sites)), w.maf[sites])
            if nb is not None:
                acc.add_retrieval(
                    nb.distances[rows],
                    references[(w.chrom, w.window)][nb.ids[rows, 0]][:, sites],
                    truth,
                )
    model.train(was)
    return acc


def _finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _rng_state() -> dict:
    st = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _torch_save(state: dict, path: Path) -> None:
    """Atomic ``torch.save`` whose bytes depend on ``state`` only.

    Given a path, torch.save names the zip archive inside after the file, here a random temporary
    name, so two identical models would hash differently (the imputed VCF records the model's
    SHA-256). A file object gets the fixed name "archive".
    """
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def _save_checkpoint(
    path: Path, model, opt, sched, epoch, history, best, bad_epochs, refreshes, fp, ident
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "history": history,
        "best": best,
        "bad_epochs": bad_epochs,
        "refreshes": refreshes,
        "rng": _rng_state(),
        "fingerprint": fp,
        "identity": ident,
        "ragimpute": __version__,
    }
    _torch_save(state, path)


def _save_model(
    path: Path,
    model: ImputationModel,
    cfg: TrainConfig,
    inputs: list[ChromInputs],
    row: dict,
    fp: str,
) -> None:
    """The artifact imputation loads: weights, the model's own arguments, vocabulary and provenance."""
    state = {
        "model": model.state_dict(),
        "model_args": asdict(model.cfg),
        "vocab": VOCAB,
        "train_config": asdict(cfg),
        "mask_hashes": {i.chrom: i.hashes for i in inputs},
        "epoch": row["epoch"],
        "val": {k: v for k, v in row.items() if k.startswith("val_")},
        "fingerprint": fp,
        "ragimpute": __version__,
        "state_hash": state_hash(model),
    }
    _torch_save(state, path)


def _write_outputs(
    out_dir: Path,
    state_dir: Path,
    cfg,
    inputs,
    history,
    best,
    refreshes,
    stopped_early,
    fp,
    world,
    device,
) -> dict:
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    best_path = state_dir / "best.pt"
    if not best_path.exists():
        raise ArtifactError(
            f"no epoch produced a finite validation r2; nothing to save ({best_path})"
        )
    with atomic_path(out_dir / "model.pt", suffix=".pt") as tmp:
        shutil.copyfile(best_path, tmp)
    metrics = pd.DataFrame(history)
    write_tsv(out_dir / "metrics.tsv", metrics)
    with atomic_path(out_dir / "metrics.csv", suffix=".csv") as tmp:
        metrics.to_csv(tmp, index=False)
    plot_curves(metrics, out_dir / "curves.png")
    summary = {
        "best_epoch": best["epoch"],
        "best_val_r2": best["val_r2"],
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "config": asdict(cfg),
        "fingerprint": fp,
        "processes": world,
        "device": str(device),
        "mask_hashes": {i.chrom: i.hashes for i in inputs},
        "refreshes": refreshes,
        "ragimpute": __version__,
        "torch": torch.__version__,
        "seed": cfg.seed,
    }
    write_json(out_dir / "train.json", summary)
    return summary


def plot_curves(metrics: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ep = metrics["epoch"]
    axes[0].plot(ep, metrics["train_loss"], "o-", label="train")
    axes[0].plot(ep, metrics["val_loss"], "o-", label="val")
    axes[0].set_title("masked-site loss")
    for b in BIN_LABELS:
        axes[1].plot(ep, metrics[f"val_r2_{b}"], "o-", label=f"MAF {b}")
    axes[1].plot(ep, metrics["val_r2"], "k--", label="all")
    axes[1].set_title("validation dosage r² by MAF bin")
    for name in ("f1", "f1_maf<5%", "f1_maf<1%"):
        axes[2].plot(ep, metrics[f"val_{name}"], "o-", label=name)
    axes[2].set_title("validation ALT F1")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def iter_inputs(
    results: str | os.PathLike, chroms: dict[str, list[str]], mode: str, priors: bool = True
) -> Iterator[ChromInputs]:
    """ChromInputs for the standard results layout (used by the CLI; Snakemake passes its own paths)."""
    r = Path(results)
    for chrom, hashes in chroms.items():
        tokens = {
            (h, s): str(r / "tokens" / chrom / h / f"{s}.parquet")
            for h in hashes
            for s in ("train", "val")
        }
        retrieval = {}
        if mode == "token":
            retrieval = {
                (h, s): str(r / "retrieval" / chrom / h / f"{s}.parquet")
                for h in hashes
                for s in ("train", "val")
            }
        prior = {}
        if priors:
            prior = {
                (h, s): str(r / "prior" / chrom / h / f"{s}.parquet")
                for h in hashes
                for s in ("train", "val")
            }
        yield ChromInputs(chrom, str(r / "windows" / chrom), list(hashes), tokens, retrieval, prior)
