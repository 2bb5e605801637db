"""What survives a killed training job, and what identifies a run.

Snakemake deletes a rule's outputs before re-running it, so the state lives in ``state_dir``:
``ckpt.pt`` (the run's state, written atomically after every epoch) and ``best.pt`` (the best model so
far, copied to the outputs at the end). A re-run resumes from ``ckpt.pt`` only when its fingerprint
matches: the same train config, chromosomes, masks and contents of every table read (``identity``).
Seeds derive from (seed, epoch) and the RNG states are saved too, so a resumed run ends with the weights
an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import __version__
from .atomic import atomic_path
from .logs import log
from .methods import TRAIN_MACHINE_SETTINGS
from .model import ImputationModel
from .tokens import VOCAB
from .windows import reference_identity

if TYPE_CHECKING:
    from .train import TrainConfig
    from .train_data import ChromInputs


# Settings added to the train section after runs were first fingerprinted, with the value that leaves
# training as it was: recorded (in the identity and in model.pt) only when set otherwise, so that a run
# that does not use them keeps its fingerprint and its model.pt bytes, and resumes its checkpoint.
ADDED_SETTINGS = {"examples_per_epoch": 0}
# Settings that change how a run uses the machine, not what it computes: never in the identity.
MACHINE_SETTINGS = TRAIN_MACHINE_SETTINGS
# Settings applied to the best model after training: a change makes the choice again (the run
# resumes its finished checkpoint), it does not retrain.
AFTER_TRAINING_SETTINGS = ("correction_by_maf",)


def recorded_config(cfg: TrainConfig) -> dict:
    """The train config as model.pt records it: without the added settings left at their defaults,
    nor the window cache (it bounds memory, the weights do not depend on it)."""
    return {
        k: v
        for k, v in asdict(cfg).items()
        if k != "cache_windows" and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])
    }


def identity(cfg: TrainConfig, inputs: list[ChromInputs], data: dict | None = None) -> dict:
    """What a run trains on: the train config, the chromosomes and masks, and (``data``: per chromosome
    the ``identity`` of ``train_data.Chromosome``) the samples of each split, the site list and a digest of
    every table read. Paths are left out, so that the same data in another directory is the same run."""
    return {
        "cfg": {
            k: v
            for k, v in recorded_config(cfg).items()
            if k not in MACHINE_SETTINGS + AFTER_TRAINING_SETTINGS
        },
        "inputs": [(i.chrom, i.hashes) for i in inputs],
        "version": __version__,
        "data": data or {},
    }


def fingerprint(cfg: TrainConfig, inputs: list[ChromInputs], data: dict | None = None) -> str:
    """Identity of a run: a checkpoint is resumed only by the run that wrote it."""
    return _fingerprint_of(identity(cfg, inputs, data))


def _fingerprint_of(ident: dict) -> str:
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
        out += _data_changes(chrom, o, n)
    if not out:
        out.append("the inputs differ")
    if len(out) > limit:
        out = out[:limit] + [f"and {len(out) - limit} more"]
    return out


def _data_changes(chrom: str, o: dict, n: dict) -> list[str]:
    """What changed in one chromosome's data: the site list, the samples of a split, a table."""
    out = []
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
    return out


def state_hash(model: torch.nn.Module | dict) -> str:
    """Digest of a model's weights (a module or its state dict), recorded in model.pt and best.pt:
    ``tensors_hash`` of the state dict (the bytes of every tensor under its sorted name)."""
    return tensors_hash(dict(model.state_dict() if isinstance(model, torch.nn.Module) else model))


def tensors_hash(obj, h=None) -> str:
    """Digest of every tensor in a nested dict / list (a checkpoint's model and optimizer state):
    torch.load does not check the archive's CRCs, so a flipped byte loads silently otherwise."""
    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            tensors_hash(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            tensors_hash(v, h)
    return h.hexdigest()[:16] if top else ""


def verify_weights(ck: dict, path: str | os.PathLike) -> str | None:
    """Why the weights of a loaded model.pt / best.pt do not match the digest it records (None: they
    do, or it records none)."""
    recorded = ck.get("state_hash")
    if recorded and state_hash(ck["model"]) != recorded:
        return (
            f"{path}: its weights do not match the digest it records ({recorded}): it is corrupted"
        )
    return None


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


def torch_save(state: dict, path: Path) -> None:
    """Atomic ``torch.save`` whose bytes depend on ``state`` only.

    Given a path, torch.save names the zip archive inside after the file, here a random temporary
    name, so two identical models would hash differently (the imputed VCF records the model's
    SHA-256). A file object gets the fixed name "archive".
    """
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


@dataclass
class RunState:
    """Where training stands: what ``ckpt.pt`` saves after every epoch and a resumed run restores."""

    model: ImputationModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    epoch: int = -1  # the last epoch done
    history: list[dict] = field(default_factory=list)  # one metrics row per epoch done
    best: dict = field(default_factory=lambda: {"val_r2": -1.0, "epoch": -1})
    bad_epochs: int = 0  # epochs since the best validation r²
    refreshes: list[dict] = field(default_factory=list)  # embedding index refreshes

    def to_checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "refreshes": self.refreshes,
            "rng": _rng_state(),
        }

    def restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.epoch, self.history, self.best = ck["epoch"], ck["history"], ck["best"]
        self.bad_epochs, self.refreshes = ck["bad_epochs"], ck.get("refreshes", [])
        _set_rng_state(ck["rng"])


class Checkpoints:
    """The state directory of one run (``cfg`` on ``inputs``, whose tables read ``data_identity``)."""

    def __init__(
        self,
        state_dir: str | os.PathLike,
        cfg: TrainConfig,
        inputs: list[ChromInputs],
        data_identity: dict,
    ):
        self.dir = Path(state_dir)
        self.path = self.dir / "ckpt.pt"
        self.best_path = self.dir / "best.pt"
        self.cfg, self.inputs = cfg, inputs
        self.identity = identity(cfg, inputs, data_identity)
        self.fingerprint = _fingerprint_of(self.identity)
        # the reference of each chromosome, as model.pt records it for imputation to check
        self.reference = {i.chrom: reference_identity(i.windows_dir) for i in inputs}
        self.best_behind: str | None = None  # why best.pt is written again from ckpt.pt on resume

    def resume(self, state: RunState, lead: bool) -> bool:
        """Restore ``state`` from ``ckpt.pt`` when this run wrote it; True when there is a checkpoint
        this run must not resume (unreadable, or of another configuration or other inputs)."""
        if not self.path.exists():
            return False
        # on the CPU: the RNG states must stay CPU tensors (load_state_dict moves the weights and
        # the optimizer state to the model's device)
        try:
            ck = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or corrupted file: the state is lost, not the run
            if lead:
                log.warning(
                    "%s is unreadable, truncated or corrupted (%s: %s); training starts afresh",
                    self.path, type(e).__name__, str(e).strip()[:200],
                )  # fmt: skip
            return True
        if ck.get("fingerprint") == self.fingerprint:
            broken = self._broken(ck)
            if broken:
                if lead:
                    log.warning("%s; training starts afresh", broken)
                return True
        if ck.get("fingerprint") != self.fingerprint:
            if lead:
                log.warning(
                    "%s belongs to another configuration or other inputs (%s != %s): %s. Training "
                    "starts afresh; the old checkpoint is discarded",
                    self.path,
                    ck.get("fingerprint"),
                    self.fingerprint,
                    "; ".join(identity_changes(ck.get("identity"), self.identity)),
                )
            return True
        state.restore(ck)
        if lead:
            log.info(
                "resuming from %s: epoch %d done, best val r2 %.4f at epoch %d",
                self.path,
                ck["epoch"],
                state.best["val_r2"],
                state.best["epoch"],
            )
            if self.best_behind:
                # ckpt.pt is written before best.pt: a kill between them leaves the epoch's best
                # model in the checkpoint only
                log.info("%s; written again from the checkpoint's weights", self.best_behind)
                self.save_best(state.model, state.history[-1])
        return False

    def _broken(self, ck: dict) -> str | None:
        """What is wrong with a checkpoint of this run, or with the best model it goes with: its
        tensors not those it was saved with, or best.pt missing, unreadable, corrupted or of another
        epoch (the run would end by copying it to model.pt)."""
        recorded = ck.get("content_hash")
        if recorded and tensors_hash([ck["model"], ck["optimizer"]]) != recorded:
            return f"{self.path} is corrupted: its tensors do not match the digest it records"
        self.best_behind = None
        if ck["best"]["epoch"] < 0:
            return None
        # the checkpoint's own weights are its best model: best.pt, written after it, may lag
        own = ck["best"]["epoch"] == ck["epoch"] and ck["history"][-1]["epoch"] == ck["epoch"]
        if not self.best_path.exists():
            missing = f"{self.best_path}, the best model of {self.path}, is missing"
            self.best_behind = missing if own else None
            return None if own else missing
        try:
            best = torch.load(self.best_path, map_location="cpu", weights_only=False)
        except Exception as e:
            return f"{self.best_path} is unreadable, truncated or corrupted ({type(e).__name__})"
        if (
            own
            and best.get("fingerprint") == self.fingerprint
            and best.get("epoch", 0) < ck["epoch"]
        ):
            self.best_behind = (
                f"{self.best_path} is of epoch {best.get('epoch')}, not {ck['epoch']}"
            )
            return None
        if best.get("fingerprint") != self.fingerprint or best.get("epoch") != ck["best"]["epoch"]:
            return f"{self.best_path} is not the best model of {self.path}"
        if best.get("reference") != self.reference:
            # written by an earlier version: as model.pt, imputation would refuse it
            return f"{self.best_path} records no reference it was trained on, or another one"
        return verify_weights(best, self.best_path)

    def start_afresh(self, stale: bool) -> None:
        """A checkpoint or best model of other inputs must never be resumed or copied."""
        if stale:
            self.path.unlink(missing_ok=True)
        self.best_path.unlink(missing_ok=True)

    def save(self, state: RunState) -> None:
        ck = state.to_checkpoint()
        ck.update(fingerprint=self.fingerprint, identity=self.identity, ragimpute=__version__,
                  content_hash=tensors_hash([ck["model"], ck["optimizer"]]))  # fmt: skip
        torch_save(ck, self.path)

    def save_best(self, model: ImputationModel, row: dict) -> None:
        """The artifact imputation loads: weights, the model's own arguments, vocabulary and provenance."""
        state = {
            "model": model.state_dict(),
            "model_args": asdict(model.cfg),
            "vocab": VOCAB,
            "train_config": recorded_config(self.cfg),
            "mask_hashes": {i.chrom: i.hashes for i in self.inputs},
            # checked at imputation (``ModelPredictor.check_reference``)
            "reference": self.reference,
            "epoch": row["epoch"],
            "val": {k: v for k, v in row.items() if k.startswith("val_")},
            "fingerprint": self.fingerprint,
            "ragimpute": __version__,
            "state_hash": state_hash(model),
        }
        torch_save(state, self.best_path)
