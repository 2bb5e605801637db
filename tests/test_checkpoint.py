"""Digests of model weights and checkpoints (``ragimpute.checkpoint``)."""

from __future__ import annotations

import hashlib

import torch

from ragimpute.checkpoint import state_hash, tensors_hash


def _brute_force(weights: dict) -> str:
    """The digest model.pt files record since the first version: each name, then the weights'
    bytes, in name order (so that models trained before still verify)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(bytes(weights[name].detach().contiguous().view(-1).view(torch.uint8).tolist()))
    return h.hexdigest()[:16]


def test_state_hash_is_the_recorded_digest_of_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    assert state_hash(model) == state_hash(model.state_dict()) == _brute_force(model.state_dict())
    with torch.no_grad():
        model[0].weight[1, 2] += 1e-6
    assert state_hash(model) == _brute_force(model.state_dict())
    assert state_hash(model) != _brute_force({k: v * 0 for k, v in model.state_dict().items()})


def test_state_hash_of_bfloat16_weights():
    """numpy has no bfloat16: the weights' bytes are hashed, not their numpy values."""
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    assert state_hash(model) == _brute_force(model.state_dict())


def test_tensors_hash_sees_every_nested_tensor():
    a = {"model": {"w": torch.ones(3)}, "optimizer": [torch.zeros(2), {"step": torch.tensor(4.0)}]}
    b = {"model": {"w": torch.ones(3)}, "optimizer": [torch.zeros(2), {"step": torch.tensor(5.0)}]}
    assert tensors_hash(a) != tensors_hash(b)
    assert tensors_hash(a) == tensors_hash({"optimizer": a["optimizer"], "model": a["model"]})
