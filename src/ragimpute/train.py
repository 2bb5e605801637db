"""Training: one loop, read top to bottom.

Data come from the pipeline's artifacts (``train_data``): per chromosome the windows (truth alleles, AF,
positions), and per mask hash the token tables, the retrieval tables and the engine's prior of the train
and val splits. With a mask schedule of E masks, epoch e uses mask e mod E for both queries and
retrieval (dynamic masking with an index that always matches). Neighbours come from the provider of
``train.mode`` (``retrieval_providers``: token, embedding or none).

State that must survive a killed job lives in ``state_dir`` (``checkpoint``): ``ckpt.pt`` is written
atomically after every epoch and a re-run resumes from it when the configuration and the data are
unchanged. The best model is chosen on the current epoch's validation r².
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from . import __version__
from .atomic import atomic_path, write_json, write_tsv
from .checkpoint import Checkpoints, RunState, state_hash, torch_save
from .devices import pick_device
from .errors import ArtifactError, InputError
from .logs import log, setup_logging
from .metrics import BIN_LABELS, Accumulator, r2_from_sums
from .model import ImputationModel, ModelConfig, masked_loss
from .plots import pyplot, save_png
from .procs import die_with_parent
from .retrieval_providers import (
    EmbeddingRetrieval,
    ProviderFactory,
    RetrievalProvider,
    make_provider,
)
from .tokens import MASK
from .train_data import (
    Batch,
    ChromInputs,
    TrainingData,
    Window,
    epoch_batches,
    load_training_data,
    n_sampled_batches,
    sample_batches,
)

MODES = ("token", "embedding", "none")


@dataclass
class TrainConfig:
    """The config's ``train`` section, with its defaults (config/schema.yaml; tests hold the two
    equal). ``k`` is ``retrieval.k``; ``grad_clip`` and ``threads`` (the rule's threads) are not in
    the config."""

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
    k: int = 256  # neighbours per query haplotype window (retrieval.k)
    refresh_every: int = 0  # embedding mode: steps between index refreshes; 0 = every epoch
    rare_weight: float = 0.0  # loss weight 1 + rare_weight on sites with reference MAF < 5%
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    processes: int = 0  # DDP processes; 0 = one per GPU when more than one, else 1
    max_steps_per_epoch: int = 0  # 0 = every batch
    # haplotype windows per epoch, drawn across every window of every chromosome; 0 = every one
    examples_per_epoch: int = 0
    cache_windows: int = 8  # windows whose arrays are held in memory at once (LRU)
    log_every: int = 100  # steps between progress lines; 0 = none
    preset: str = "small"
    prior: bool = (
        True  # refine the engine's P(ALT) (the prior stage); False: the window copying model
    )
    model: dict = field(default_factory=dict)  # overrides of the preset (d_model, n_layers, ...)
    # after training, choose on validation per MAF bin the share of the correction applied
    correction_by_maf: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size % 2:
            raise ValueError(
                "train.batch_size must be even (both haplotypes of a sample go together)"
            )
        if self.examples_per_epoch < 0 or self.cache_windows < 1:
            raise ValueError(
                "train.examples_per_epoch must be >= 0 and train.cache_windows >= 1, got "
                f"{self.examples_per_epoch} and {self.cache_windows}"
            )

    def model_config(self, use_prior: bool = False) -> ModelConfig:
        return ModelConfig.preset(
            self.preset, use_retrieval=self.mode != "none", use_prior=use_prior, **self.model
        )


@dataclass
class Process:
    """This process's place in the run: one of ``world`` DDP processes on ``device``; rank 0 leads
    (it validates, logs and writes)."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def start(cls, rank: int, world: int, cfg: TrainConfig) -> Process:
        device = torch.device(pick_device(cfg.device, "train.device"))
        if world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=rank, world_size=world)
            if device.type == "cuda":
                device = torch.device("cuda", rank)
                torch.cuda.set_device(device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return cls(rank, world, device)

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def _wire(self) -> torch.device:
        """Where tensors travel between processes: NCCL needs them on the GPU, gloo on the CPU."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, acc: Accumulator) -> None:
        """Every process's metrics added up, in ``acc``."""
        if self.distributed:
            v = torch.from_numpy(acc.state()).to(self._wire)
            dist.all_reduce(v)
            acc.load_state(v.cpu().numpy())

    def from_lead(self, value: int) -> int:
        """The lead's ``value``, on every process."""
        if not self.distributed:
            return value
        flag = torch.tensor([value], device=self._wire)
        dist.broadcast(flag, 0)
        return int(flag.item())

    def end(self) -> None:
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


@dataclass
class Run:
    """One process's training run: what stays fixed, and ``state``, which the checkpoint saves."""

    cfg: TrainConfig
    proc: Process
    data: TrainingData
    provider: RetrievalProvider
    state: RunState
    net: torch.nn.Module  # state.model, wrapped for DDP when distributed
    steps_per_epoch: int


@dataclass
class Epoch:
    """One epoch as it runs: its masks, its generator, its metrics so far."""

    number: int
    hashes: dict[str, str]  # chrom -> mask hash of this epoch
    rng: np.random.Generator  # batch order and the hidden sites scored
    started: float = field(default_factory=time.perf_counter)
    acc: Accumulator = field(default_factory=Accumulator)
    n_hw: int = 0  # haplotype windows this process trained on
    train_seconds: float = 0.0
    loads: int = 0  # windows the cache read while training (from ``data.cache.loads`` at the start)


def check_retrieval_k(cfg: TrainConfig, inputs: list[ChromInputs]) -> None:
    """In token mode the model trains on the neighbours the retrieve stage stored, and model.pt
    records ``cfg.k`` as the number imputation retrieves: the two must agree, or imputation feeds
    the model another number of neighbours than it trained on (or asks for more than there are)."""
    import pyarrow.parquet as pq

    from .atomic import reading

    for chrom in inputs:
        for path in chrom.retrieval.values():
            with reading(path, "retrieve"):
                width = pq.read_schema(path).field("neighbours").type.list_size
            if width != cfg.k:
                raise InputError(
                    path,
                    f"holds {width} neighbours per query, but training is set to k={cfg.k} "
                    "(retrieval.k), which model.pt records and imputation retrieves",
                    f"Set retrieval.k to {width} (ragimpute train: the --config file's "
                    f"retrieval.k, or --set k={width}), or re-run retrieve with k={cfg.k}",
                )


def train(
    cfg: TrainConfig,
    inputs: list[ChromInputs],
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    retrieval_factory: ProviderFactory | None = None,
) -> dict:
    """Train and write ``model.pt`` (best), ``metrics.csv``, ``curves.png`` and ``train.json`` to out_dir.

    ``retrieval_factory(data, device)`` may supply another retrieval provider; benchmarks use it to
    reproduce the prototype's mismatched-mask defect on purpose. The pipeline never passes one.
    """
    if cfg.mode == "token" and retrieval_factory is None:
        check_retrieval_k(cfg, inputs)
    world = cfg.processes or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    world = max(1, world)
    on_cuda = pick_device(cfg.device, "train.device").startswith("cuda")
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
    os.environ["RAGIMPUTE_TRAIN_PARENT"] = str(os.getpid())
    log.info("distributed training: %d processes", world)
    # the spawned processes log to this process's log files (Snakemake's log:), appending
    log_files = [
        h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
    ]
    mp.spawn(
        _run,
        args=(world, cfg, inputs, out_dir, state_dir, retrieval_factory, log_files),
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
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    retrieval_factory: ProviderFactory | None,
    log_files: list[str] | None = None,
) -> dict | None:
    """One process of the run (``mp.spawn`` calls it with the rank, and the parent's ``log_files``,
    which a spawned process logs to: the lead at INFO, the others their warnings); the lead returns
    the summary."""
    if log_files is not None:  # a spawned process: it dies with the job that spawned it
        die_with_parent(int(os.environ["RAGIMPUTE_TRAIN_PARENT"]))
        setup_logging(log_files[0] if log_files else None, append=True,
                      level=logging.INFO if rank == 0 else logging.WARNING)  # fmt: skip
    proc = Process.start(rank, world, cfg)
    data = load_training_data(inputs, cfg.cache_windows)
    ckpts = Checkpoints(state_dir, cfg, inputs, data.identity)
    provider = make_provider(cfg.mode, cfg.k, data, proc.device, retrieval_factory)
    run = _new_run(cfg, proc, data, provider)
    stale = ckpts.resume(run.state, proc.lead)
    proc.barrier()  # every process has read the checkpoint before the lead removes it
    if proc.lead and run.state.epoch < 0:
        ckpts.start_afresh(stale)
    if proc.lead:
        model = run.state.model
        log.info(
            "model %s: %d parameters, mode %s, device %s, %d windows (%d held at a time), %d "
            "steps/epoch%s, %d mask(s)",
            model.cfg,
            sum(p.numel() for p in model.parameters()),
            cfg.mode,
            proc.device,
            len(data.windows),
            cfg.cache_windows,
            run.steps_per_epoch,
            f" ({cfg.examples_per_epoch} haplotype windows sampled)"
            if cfg.examples_per_epoch
            else "",
            len(data.masks),
        )

    stopped_early = False
    for epoch in range(run.state.epoch + 1, cfg.epochs):
        if run.state.bad_epochs >= cfg.patience:
            stopped_early = True
            break
        ep = Epoch(epoch, data.hashes(epoch), np.random.default_rng([cfg.seed, epoch]))
        _train_epoch(run, ep)
        if proc.lead:
            _end_of_epoch(run, ep, ckpts)  # validation, the best model, the checkpoint
        run.state.bad_epochs = proc.from_lead(run.state.bad_epochs)
        proc.barrier()
    stopped_early = stopped_early or len(run.state.history) < cfg.epochs

    summary = _write_outputs(run, ckpts, Path(out_dir), stopped_early) if proc.lead else None
    proc.end()
    return summary


def _new_run(
    cfg: TrainConfig, proc: Process, data: TrainingData, provider: RetrievalProvider
) -> Run:
    """Model, optimiser and schedule, from the seed."""
    # The global Python and numpy generators are not used by our code (it draws from generators
    # seeded per epoch) but are seeded too, for any library that does.
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002
    model = ImputationModel(cfg.model_config(use_prior=data.with_prior)).to(proc.device)
    net = torch.nn.parallel.DistributedDataParallel(model) if proc.distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.examples_per_epoch:
        n_batches = n_sampled_batches(cfg.examples_per_epoch, cfg.batch_size)
    else:
        n_batches = len(epoch_batches(data.windows, cfg.batch_size, np.random.default_rng(0)))
    steps_per_epoch = n_batches // proc.world
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.warmup_frac, cfg.min_lr_frac)
    )
    return Run(cfg, proc, data, provider, RunState(model, opt, sched), net, steps_per_epoch)


def _train_epoch(run: Run, ep: Epoch) -> None:
    cfg, proc = run.cfg, run.proc
    torch.manual_seed(cfg.seed * 100_003 + ep.number * 1_009 + proc.rank)
    _reset_peak_memory(proc.device)
    loads = run.data.cache.loads
    batches = _epoch_batches(run, ep)
    batches = batches[proc.rank :: proc.world][: run.steps_per_epoch]
    embedding = isinstance(run.provider, EmbeddingRetrieval)
    if embedding:
        _refresh(run, ep, 0)
    run.net.train()
    for step, (wi, rows) in enumerate(batches):
        if embedding and cfg.refresh_every and step and step % cfg.refresh_every == 0:
            _refresh(run, ep, step)
        ep.n_hw += _train_step(run, ep, run.data.windows[wi], rows)
        if proc.lead and cfg.log_every and (step + 1) % cfg.log_every == 0:
            _log_progress(run, ep, step, len(batches))
    proc.sum(ep.acc)
    ep.train_seconds = time.perf_counter() - ep.started
    ep.loads = run.data.cache.loads - loads


# Sampled windows whose batches are shuffled together: a constant, not train.cache_windows, so that
# the cache bounds memory without changing the model (a cache of at least this many windows reads
# each window once per epoch; a smaller one reads some again).
SAMPLE_GROUP = 8


def _epoch_batches(run: Run, ep: Epoch) -> list[tuple[int, np.ndarray]]:
    """Every batch (``examples_per_epoch`` 0), or that many haplotype windows sampled across the
    genome, ``SAMPLE_GROUP`` windows at a time; from the epoch's generator."""
    cfg = run.cfg
    if cfg.examples_per_epoch:
        return sample_batches(
            run.data.windows, cfg.batch_size, cfg.examples_per_epoch, ep.rng, SAMPLE_GROUP
        )
    return epoch_batches(run.data.windows, cfg.batch_size, ep.rng)


def _refresh(run: Run, ep: Epoch, step: int) -> None:
    """Rebuild the embedding index from the current model."""
    at = ep.number * run.steps_per_epoch + step
    info = run.provider.refresh(run.state.model, run.data.windows, at, ep.hashes)
    run.state.refreshes.append({"epoch": ep.number, **info})


def _train_step(run: Run, ep: Epoch, w: Window, rows: np.ndarray) -> int:
    """One optimiser step on the haplotypes ``rows`` of ``w``, at a sample of its hidden sites.
    Returns the number of haplotype windows trained on (0: the window hides no site)."""
    cfg, device, st = run.cfg, run.proc.device, run.state
    h = ep.hashes[w.chrom]
    b = run.data.batch(w, h, "train", rows, run.provider.get(w, h, "train"))
    t = b.tensors(device)
    hidden = np.flatnonzero(w.tokens[(h, "train")][rows[0]] == MASK)
    if len(hidden) == 0:
        return 0
    n_sites = min(cfg.sites_per_example, len(hidden))
    sites = np.sort(ep.rng.choice(hidden, size=n_sites, replace=False))
    truth = torch.from_numpy(b.truth(sites)).to(device)
    weight = None
    if cfg.rare_weight:
        weight = torch.from_numpy(1.0 + cfg.rare_weight * (w.maf[sites] < 0.05)).float().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = run.net(**t, sites=torch.from_numpy(sites).to(device))
    loss = masked_loss(logits, truth, weight)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), cfg.grad_clip)
    st.opt.step()
    st.sched.step()
    ep.acc.add_loss(float(loss.item()), truth.numel())
    b.score(ep.acc, sites, torch.sigmoid(logits.detach().float()).cpu().numpy())
    return len(rows)


def _log_progress(run: Run, ep: Epoch, step: int, n_steps: int) -> None:
    el = time.perf_counter() - ep.started
    log.info(
        "epoch %d step %d/%d loss %.4f lr %.2e %.1f haplotype-windows/s ETA %.0f s",
        ep.number,
        step + 1,
        n_steps,
        ep.acc.loss[0] / max(ep.acc.loss[1], 1),
        run.state.sched.get_last_lr()[0],
        ep.n_hw * run.proc.world / el,
        (n_steps - step - 1) * el / (step + 1),
    )


def _end_of_epoch(run: Run, ep: Epoch, ckpts: Checkpoints) -> None:
    """Validate, keep the model if it is the best so far, log the epoch and save the checkpoint."""
    st, data = run.state, run.data
    row = {
        "epoch": ep.number,
        "mask_hashes": ",".join(sorted(set(ep.hashes.values()))),
        **ep.acc.result("train_"),
    }
    val = evaluate(
        st.model, data.windows, ep.hashes, run.provider, data.references, run.proc.device, "val"
    )
    row.update(val.result("val_"))
    row["seconds"] = round(time.perf_counter() - ep.started, 2)
    row["train_seconds"] = round(ep.train_seconds, 2)
    row["haplotype_windows_per_s"] = (
        round(ep.n_hw * run.proc.world / ep.train_seconds, 1) if ep.train_seconds else float("nan")
    )
    row["examples"] = ep.n_hw * run.proc.world  # haplotype windows trained on, every process
    row["windows_read"] = ep.loads  # windows the lead's cache read while training
    row["cache_peak_windows"] = data.cache.peak  # the most windows held at once so far
    row.update(_peak_memory(run.proc.device))
    row["lr"] = st.sched.get_last_lr()[0]
    st.history.append(row)
    improved = _finite(row["val_r2"]) and row["val_r2"] > st.best["val_r2"]
    if improved:
        st.best = {"val_r2": row["val_r2"], "epoch": ep.number}
        st.bad_epochs = 0
    else:
        st.bad_epochs += 1
    log.info(
        "epoch %d: train loss %.4f r2 %.4f | val loss %.4f r2 %.4f (bins %s) f1 %.3f | %.1f s, "
        "%d haplotype windows at %.1f/s, %d windows read, peak RSS %.0f MB%s",
        ep.number,
        row["train_loss"],
        row["train_r2"],
        row["val_loss"],
        row["val_r2"],
        " ".join(f"{row[f'val_r2_{b}']:.3f}" for b in BIN_LABELS),
        row["val_f1"],
        row["seconds"],
        row["examples"],
        row["haplotype_windows_per_s"],
        row["windows_read"],
        row["peak_rss_mb"],
        " *best*" if improved else "",
    )
    st.epoch = ep.number
    # the checkpoint first: a kill before best.pt is written leaves the best model in it
    # (``Checkpoints.resume`` writes best.pt again from it)
    ckpts.save(st)
    if improved:
        ckpts.save_best(st.model, row)


def _split_batches(
    windows: list[Window],
    hashes: dict[str, str],
    provider: RetrievalProvider,
    references: dict[tuple[str, int], np.ndarray],
    device: torch.device,
    split: str,
    batch_rows: int,
) -> Iterator[tuple[Batch, dict, np.ndarray]]:
    """Every haplotype of ``split`` in batches of ``batch_rows``, window by window, with the hidden
    sites the window owns: (batch, its tensors on ``device``, sites)."""
    for w in windows:
        h = hashes[w.chrom]
        tokens = w.tokens[(h, split)]
        sites = np.flatnonzero((tokens[0] == MASK) & w.owned)
        if len(sites) == 0:
            continue
        nb = provider.get(w, h, split)
        for a in range(0, len(tokens), batch_rows):
            rows = np.arange(a, min(a + batch_rows, len(tokens)))
            b = Batch(w, h, split, rows, nb, references[(w.chrom, w.window)])
            yield b, b.tensors(device), sites


@torch.no_grad()
def evaluate(
    model: ImputationModel,
    windows: list[Window],
    hashes: dict[str, str],
    provider: RetrievalProvider,
    references: dict[tuple[str, int], np.ndarray],
    device: torch.device,
    split: str,
    batch_rows: int = 32,
    site_chunk: int = 512,
) -> Accumulator:
    """Every hidden site that a window owns, for every haplotype of ``split``."""
    was = model.training
    model.eval()
    acc = Accumulator()
    for b, t, sites in _split_batches(
        windows, hashes, provider, references, device, split, batch_rows
    ):
        p_t = model.predict_sites(**t, sites=torch.from_numpy(sites).to(device), chunk=site_chunk)
        truth = b.truth(sites)
        loss = torch.nn.functional.binary_cross_entropy(
            p_t.clamp(1e-7, 1 - 1e-7), torch.from_numpy(truth).to(device).float()
        )
        acc.add_loss(float(loss.item()), truth.size)
        b.score(acc, sites, p_t.cpu().numpy())
    model.train(was)
    return acc


# The shares of the network's correction tried per MAF bin (0: the prior alone).
CORRECTION_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def choose_correction(
    model: ImputationModel,
    windows: list[Window],
    hashes: dict[str, str],
    provider: RetrievalProvider,
    references: dict[tuple[str, int], np.ndarray],
    device: torch.device,
    batch_rows: int = 32,
    site_chunk: int = 512,
) -> dict:
    """Choose, for each MAF bin of the model's allele frequencies, the share of its correction
    (``CORRECTION_SCALES``) with the best validation r² over that bin's sites, and set the model's
    ``correction_scale`` to it. Returns the choice, the validation r² of every share per bin, and
    the validation metrics with the whole correction (``before``) and with the choice (``after``).

    The r² sums add over sites, so one pass scores every combination: per share and per bin of
    the model (``ImputationModel.maf_bins``, which decides the share applied at a site), an
    ``Accumulator`` of that bin's sites; the chosen model's metrics are the sum of the chosen ones.
    """
    was = model.training
    model.eval()
    n_bins = len(BIN_LABELS)
    accs = [[Accumulator() for _ in range(n_bins)] for _ in CORRECTION_SCALES]
    for b, t, sites in _split_batches(
        windows, hashes, provider, references, device, "val", batch_rows
    ):
        s_t = torch.from_numpy(sites).to(device)
        base, corr = model.predict_sites(**t, sites=s_t, chunk=site_chunk, parts=True)
        applied = model.maf_bins(t["af"][s_t]).cpu().numpy()
        for j, scale in enumerate(CORRECTION_SCALES):
            p = torch.sigmoid(base + scale * corr).cpu().numpy()
            for k in range(n_bins):
                at = applied == k
                if at.any():
                    # the neighbours' quality is the same for every share: not scored
                    b.score(accs[j][k], sites[at], p[:, at], neighbours=False)
    model.train(was)

    def r2_of(j: int, k: int) -> float:
        return float(r2_from_sums(*accs[j][k].r2[-1]))

    chosen = []
    for k in range(n_bins):
        # the largest share among the best: with no sites (NaN everywhere) the whole correction
        scores = [(r2_of(j, k), scale) for j, scale in enumerate(CORRECTION_SCALES)]
        finite = [x for x in scores if _finite(x[0])]
        chosen.append(max(finite)[1] if finite else 1.0)
    model.correction_scale.copy_(torch.tensor(chosen, dtype=model.correction_scale.dtype))

    def total(pick: list[float]) -> dict:
        acc = Accumulator()
        for k, scale in enumerate(pick):
            acc.r2 += accs[CORRECTION_SCALES.index(scale)][k].r2
        res = acc.result()
        return {key: _or_none(res[key]) for key in ("r2", *(f"r2_{lab}" for lab in BIN_LABELS))}

    # JSON without NaN: a bin without validation sites has no r² (None)
    return {
        "scale": dict(zip(BIN_LABELS, chosen, strict=True)),
        "val_r2_by_scale": {
            lab: {str(scale): _or_none(r2_of(j, k)) for j, scale in enumerate(CORRECTION_SCALES)}
            for k, lab in enumerate(BIN_LABELS)
        },
        "val_before": total([1.0] * n_bins),
        "val_after": total(chosen),
    }


def _reset_peak_memory(device: torch.device) -> None:
    """Start the epoch's peak memory: the process's high-water mark (Linux: /proc/self/clear_refs;
    elsewhere the peak since the start) and the GPU's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict[str, float]:
    """``peak_rss_mb``: this process's peak resident memory since ``_reset_peak_memory``, and
    ``cuda_peak_mb`` on a GPU."""
    peak = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if peak is None:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = ru / 1024 if sys.platform != "darwin" else ru / 2**20
    out = {"peak_rss_mb": round(peak, 1)}
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _or_none(x: float) -> float | None:
    return x if _finite(x) else None


def lr_factor(step: int, total: int, warmup_frac: float, min_frac: float) -> float:
    """Linear warm-up, then cosine decay to ``min_frac`` of the peak."""
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * t))


def _write_outputs(run: Run, ckpts: Checkpoints, out_dir: Path, stopped_early: bool) -> dict:
    """``model.pt`` (the best model), ``metrics.csv`` / ``.tsv``, ``curves.png`` and ``train.json``."""
    cfg, st = run.cfg, run.state
    out_dir.mkdir(parents=True, exist_ok=True)
    if not ckpts.best_path.exists():
        raise ArtifactError(
            f"no epoch produced a finite validation r2; nothing to save ({ckpts.best_path})"
        )
    correction = _write_model(run, ckpts, out_dir / "model.pt")
    metrics = pd.DataFrame(st.history)
    write_tsv(out_dir / "metrics.tsv", metrics)
    with atomic_path(out_dir / "metrics.csv", suffix=".csv") as tmp:
        metrics.to_csv(tmp, index=False)
    plot_curves(metrics, out_dir / "curves.png")
    summary = {
        "best_epoch": st.best["epoch"],
        "best_val_r2": st.best["val_r2"],
        "epochs_run": len(st.history),
        "stopped_early": stopped_early,
        "config": asdict(cfg),
        "fingerprint": ckpts.fingerprint,
        "processes": run.proc.world,
        "device": str(run.proc.device),
        "mask_hashes": {i.chrom: i.hashes for i in ckpts.inputs},
        "refreshes": st.refreshes,
        "correction_by_maf": correction,
        "ragimpute": __version__,
        "torch": torch.__version__,
        "seed": cfg.seed,
    }
    write_json(out_dir / "train.json", summary)
    return summary


def _write_model(run: Run, ckpts: Checkpoints, path: Path) -> dict | None:
    """``model.pt``: the best model, with the share of its correction per MAF bin chosen on
    validation (``train.correction_by_maf``; ``choose_correction``). Returns the choice (None: the
    whole correction everywhere, as trained)."""
    cfg, st, data = run.cfg, run.state, run.data
    if not cfg.correction_by_maf or isinstance(run.provider, EmbeddingRetrieval):
        if cfg.correction_by_maf:
            # the provider's index was embedded by the last epoch's model, not the best one's
            log.info("embedding mode: the whole correction in every MAF bin (no choice made)")
        with atomic_path(path, suffix=".pt") as tmp:
            shutil.copyfile(ckpts.best_path, tmp)
        return None
    best = torch.load(ckpts.best_path, map_location=run.proc.device, weights_only=False)
    st.model.load_state_dict(best["model"])
    hashes = data.hashes(best["epoch"])
    choice = choose_correction(
        st.model, data.windows, hashes, run.provider, data.references, run.proc.device
    )
    best["model"] = st.model.state_dict()
    best["state_hash"] = state_hash(best["model"])
    best["correction_by_maf"] = choice
    torch_save(best, path)
    before, after = choice["val_before"], choice["val_after"]
    log.info(
        "correction by MAF bin, chosen on validation: %s; val r2 %.5f -> %.5f (bins %s -> %s)",
        " ".join(f"{lab} {x:g}" for lab, x in choice["scale"].items()),
        before["r2"],
        after["r2"],
        *(" ".join(_bins_text(v)) for v in (before, after)),
    )
    return choice


def _bins_text(r2: dict) -> list[str]:
    """The r² of each MAF bin of a ``choose_correction`` record (None: no sites) for the log."""
    return ["nan" if r2[f"r2_{lab}"] is None else f"{r2[f'r2_{lab}']:.4f}" for lab in BIN_LABELS]


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
