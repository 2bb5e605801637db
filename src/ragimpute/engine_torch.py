"""The engine's copying model in torch, for a GPU: the same model as ``engine._impute_batch``, with a
batch of target haplotypes x states per kernel instead of one haplotype per CPU thread.

State selection (FAISS) and the composite states are built on the CPU as for the numba kernel; the
forward-backward over typed sites, the posterior and the interpolation at untyped sites run on the
device, a batch of ``batch_haplotypes`` at a time, forward values stored every ``block_sites`` typed
sites as on the CPU. Outputs equal the numba kernel's to float32 precision (tests/test_engine.py runs
both on the CPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .engine import Engine


def composite_tables(engine: Engine, query: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """(Q, S, K) reference haplotype of every state at every step, -1 where a haplotype has fewer
    states than the widest one."""
    tables = engine.states(query, exclude)
    width = max(t.shape[1] for t in tables)
    out = np.full((len(tables), engine.index.n_steps, width), -1, dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, :, : t.shape[1]] = t
    return out


@torch.no_grad()
def impute_torch(
    engine: Engine,
    query: np.ndarray,
    error: float,
    device: str | torch.device,
    exclude: np.ndarray | None = None,
    interpolate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """P(ALT) (Q, N) and (Q, 2) expected mismatches / observed typed sites, as ``Engine.impute``;
    without ``interpolate`` only the statistics (P(ALT) (Q, 0)), as the error estimate needs."""
    dev = torch.device(device)
    c, p = engine.chunk, engine.params
    M, N = len(c.typed_site), c.n_sites
    hap = torch.from_numpy(composite_tables(engine, query, exclude)).to(dev)  # (B, S, K)
    valid = hap >= 0
    hap = hap.clamp(min=0)
    n = valid[:, 0, :].sum(1, keepdim=True).float()  # (B, 1) states per haplotype
    threshold = torch.full_like(n, p.min_posterior)  # (B, 1) as the numba kernel's
    if p.renormalise:
        threshold = torch.minimum(threshold, 0.9999 / n)
    B, _, K = hap.shape
    q = torch.from_numpy(np.asarray(query, dtype=np.int64)).to(dev)  # (B, M)
    ref_typed = torch.from_numpy(c.ref_typed.astype(np.int64)).to(dev)  # (M, R)
    step_of = engine.step_of.tolist()  # host ints: indexing with a device scalar syncs each time
    d = np.maximum(engine.dist_cm, 1e-7)
    rho = torch.from_numpy(-np.expm1(-0.04 * p.ne * d / c.n_ref)).float().to(dev)  # (M,)

    def states_at(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = step_of[m]
        return hap[:, s, :], valid[:, s, :]  # (B, K)

    def emission(m: int) -> torch.Tensor:
        h, v = states_at(m)
        allele = ref_typed[m][h]
        e = torch.where(allele == q[:, m : m + 1], 1.0 - error, error)
        e = torch.where(q[:, m : m + 1] < 0, torch.ones_like(e), e)
        return e * v

    def step(a: torch.Tensor, m: int) -> torch.Tensor:
        x = emission(m) * ((1 - rho[m]) * a + rho[m] / n)
        return x / x.sum(1, keepdim=True)

    block = p.block_sites
    n_blocks = math.ceil(M / block)
    ckpt = torch.empty(n_blocks, B, K, device=dev)
    a = emission(0)
    a = a / a.sum(1, keepdim=True)
    for m in range(M):
        if m:
            a = step(a, m)
        if m % block == 0:
            ckpt[m // block] = a
    out = torch.empty(B, N if interpolate else 0, device=dev)
    stats = torch.zeros(B, 2, dtype=torch.float64, device=dev)
    af = torch.from_numpy(c.af).to(dev)
    lam = torch.from_numpy(engine.lam).to(dev)
    packed = torch.from_numpy(c.ref_packed).to(dev)
    typed_site = c.typed_site
    b = valid[:, step_of[M - 1], :].float() / n
    nxt = None  # (haplotypes, probabilities, residual) at typed site m + 1
    for j in range(n_blocks - 1, -1, -1):
        c0, c1 = j * block, min(M, (j + 1) * block)
        alphas = [ckpt[j]]
        for m in range(c0 + 1, c1):
            alphas.append(step(alphas[-1], m))
        for m in range(c1 - 1, c0 - 1, -1):
            if m < M - 1:
                x = emission(m + 1) * b
                b = (1 - rho[m + 1]) * x + rho[m + 1] * x.sum(1, keepdim=True) / n
                b = b * valid[:, step_of[m], :]
                b = b / b.sum(1, keepdim=True)
            post = alphas[m - c0] * b
            post = post / post.sum(1, keepdim=True)
            h, _ = states_at(m)
            allele = ref_typed[m][h].float()
            seen = q[:, m] >= 0
            wrong = (post * (allele != q[:, m : m + 1]).float()).sum(1)
            stats[:, 0] += torch.where(seen, wrong, torch.zeros_like(wrong)).double()
            stats[:, 1] += seen.double()
            if not interpolate:
                continue
            out[:, typed_site[m]] = (post * allele).sum(1)
            kept = torch.where(post >= threshold, post, torch.zeros_like(post))
            if p.renormalise:
                kept = kept / kept.sum(1, keepdim=True)
            cur = (h, kept, (1 - kept.sum(1, keepdim=True)).clamp(min=0))
            if m == M - 1:
                _interval(out, packed, af, lam, typed_site[m] + 1, N, cur, None)
            else:
                _interval(out, packed, af, lam, typed_site[m] + 1, typed_site[m + 1], cur, nxt)
            if m == 0:
                _interval(out, packed, af, lam, 0, typed_site[0], cur, None)
            nxt = cur
    return out.cpu().numpy(), stats.cpu().numpy()


def _dosage(packed: torch.Tensor, af: torch.Tensor, sites: torch.Tensor, state) -> torch.Tensor:
    """(B, U) P(ALT) at ``sites`` from one typed site's kept states: Σ p · allele + residual · AF."""
    h, prob, residual = state
    bits = (packed[sites][:, h >> 3] >> (h & 7).to(torch.uint8)) & 1  # (U, B, K)
    return (bits.float() * prob[None]).sum(-1).T + residual * af[sites][None]


# untyped sites interpolated at a time: _dosage holds ~11 bytes per site x haplotype x state, so a
# long run of untyped sites (thousands between two array sites) goes in slices
INTERVAL_SITES = 256


def _interval(out, packed, af, lam, u0: int, u1: int, cur, nxt) -> None:
    for a in range(u0, u1, INTERVAL_SITES):
        b = min(a + INTERVAL_SITES, u1)
        sites = torch.arange(a, b, device=out.device)
        x = _dosage(packed, af, sites, cur)
        if nxt is None:
            out[:, a:b] = x
            continue
        w = lam[sites][None]
        out[:, a:b] = (1 - w) * x + w * _dosage(packed, af, sites, nxt)
