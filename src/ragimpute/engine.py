"""The imputation engine: Li and Stephens' copying model on composite states, run over the typed sites
of a whole chunk, with untyped sites interpolated in centimorgans.

What it does for each target haplotype, and why:

1. **Local state selection** (``StateIndex``). The typed sites are cut into steps of ``step_cm``; for
   each step a FAISS binary index over the reference haplotypes' alleles at the typed sites of
   ``span_steps`` consecutive steps centred on it answers which ``candidates`` reference haplotypes
   are nearest (Hamming) to the target there. This is the retrieval analogue of Beagle's IBS steps.
   Near the chunk's ends a window has fewer steps on one side: where the reference has more
   haplotypes than ``states`` it narrows on both sides, staying centred; where it fits in them, it
   keeps the steps the chunk has on the other side (``EngineParams.centred_ends``).
2. **Composite states**. ``states`` slots each hold one reference haplotype at a time. Along the chunk,
   a candidate already in a slot refreshes it; a new one takes the least recently refreshed slot, from
   halfway between that slot's last refresh and now. A slot is thus a mosaic of reference haplotypes
   that matched the target where they are used, and the copying model needs far fewer states than the
   panel has haplotypes. Reference haplotypes that match the target nowhere are left out even when the
   panel has fewer than ``states`` (only a panel no larger than ``candidates`` is used whole).
3. **The copying model on typed sites only**, across the whole chunk (no window seams): switch
   probability ``1 - exp(-0.04 ne d / n_ref)`` between typed sites ``d`` cM apart, ``n_ref`` the
   reference haplotypes (Beagle's; a switch lands on any of the states uniformly), a
   copied allele differing with probability ``error``; a missing allele emits nothing. Forward values
   are stored every ``block_sites`` typed sites and recomputed block by block in the backward pass, so
   memory is ``states x (typed sites / block + block)`` per haplotype, not ``states x typed sites``.
4. **Untyped sites by interpolation**: between typed sites m and m+1 the state posterior is linearly
   interpolated in cM (as Beagle does), and P(ALT) is read off the reference haplotypes the states
   copy there. States with posterior below ``min_posterior`` are dropped from that sum and their mass
   is given the reference allele frequency (0: exact); with ``renormalise`` the kept states' posteriors
   are scaled to sum to 1 instead, below a threshold of at most 0.9999 / states (Beagle's rule, with
   ``min_posterior`` 0.005). The sum runs over the carriers of a rare
   site's minor allele, or over classes of haplotypes identical across the interval
   (``interval_classes``): a few bytes per site instead of a row of the panel.

No tensor spans all sites x all states x all haplotypes: a haplotype's work is ``typed sites x states``
for the HMM and ``sites x kept states`` for the interpolation, and haplotypes run in parallel (numba
threads). ``copying`` is this engine; the trained model reads its output as its prior.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import cached_property

import numba
import numpy as np
from numba import njit, prange

from .devices import on_cuda
from .kernel_cache import load_kernels


@dataclass(frozen=True)
class EngineParams:
    states: int = 600  # composite states per target haplotype (the whole panel when it is smaller)
    step_cm: float = 0.1  # length of a state-selection step
    # a step's candidates match the target over this many steps around it (odd); None: span_for()
    span_steps: int | None = None
    candidates: int = 64  # nearest reference haplotypes taken per step
    ne: float = 1e5  # effective population size in the switch probability (Beagle's default)
    error: float | None = None  # allele mismatch probability; None: estimated from the targets
    min_posterior: float = 1e-4  # states below this posterior are left out of the interpolation
    # True: the states kept are renormalised instead of their dropped mass taking the allele
    # frequency, and the threshold is at most 0.9999 / states (Beagle's rule with min_posterior 0.005)
    renormalise: bool = False
    block_sites: int = 256  # typed sites per block of stored forward values
    seed: int = 1  # order in which equally near candidates are taken (ties)

    def __post_init__(self) -> None:
        if self.states < 2:
            raise ValueError("engine.states must be at least 2")
        if not 0 < self.candidates < self.states:
            raise ValueError("engine.candidates must be at least 1 and less than engine.states")
        if self.span_steps is not None and (self.span_steps < 1 or self.span_steps % 2 == 0):
            raise ValueError("engine.span_steps must be odd and positive, or auto")
        if self.step_cm <= 0 or self.ne <= 0:
            raise ValueError("engine: step_cm and ne must be positive")
        if self.error is not None and not 0 < self.error < 0.5:
            raise ValueError("engine.error must be in (0, 0.5), or auto")
        if not 0 <= self.min_posterior < 1 or self.block_sites < 1:
            raise ValueError("engine: min_posterior in [0, 1), block_sites >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def span_for(self, n_ref: int) -> int:
        """``span_steps``, or when it is auto (None): 3 for a reference of more haplotypes than
        ``states``, 7 (Beagle's ``imp-nsteps``) otherwise. Where the composite states must leave
        haplotypes out, candidates matched over 0.3 cM are the locally better ones (up to +0.0013 a
        bin, at worst -0.00004, from 1,000 to 5,000 haplotypes); where the whole reference fits, the
        states are every haplotype ever a candidate, and the steadier wider windows leave out more
        that never match (docs/benchmarks.md, "Step windows and the reference's size")."""
        if self.span_steps is not None:
            return self.span_steps
        return 3 if n_ref > self.states else 7

    def centred_ends(self, n_ref: int) -> bool:
        """Whether the step windows near a chunk's ends narrow on both sides, staying centred (for a
        reference of more haplotypes than ``states``), or keep the steps the chunk has on their
        inner side (one that fits). The same divide as ``span_for``'s: where the states leave
        haplotypes out, an end step's candidates are best chosen on its own sites (+0.0003 a bin on
        1 Mb regions of 1,600-1,800 haplotypes); where the whole reference fits, a candidate stays
        in the states along the chunk, and the few sites of an end step, matched alone, let in
        haplotypes by chance (-0.0002 and -0.0010 in the rarest bin of the demos, every seed).
        docs/benchmarks.md, "The ends of a chromosome or region"."""
        return n_ref > self.states

    def resolved(self, n_ref: int) -> EngineParams:
        """These settings for a reference of ``n_ref`` haplotypes: ``span_steps`` made explicit."""
        return replace(self, span_steps=self.span_for(n_ref))


# -- layout ----------------------------------------------------------------------------------------


def step_bounds(cm_typed: np.ndarray, step_cm: float) -> np.ndarray:
    """(S + 1,) typed-site boundaries of the steps: a step starts at the first typed site at least
    ``step_cm`` beyond the start of the previous one, so every step holds at least one typed site."""
    starts = [0]
    start_cm = cm_typed[0] if len(cm_typed) else 0.0
    for m in range(1, len(cm_typed)):
        if cm_typed[m] >= start_cm + step_cm:
            starts.append(m)
            start_cm = cm_typed[m]
    return np.asarray(starts + [len(cm_typed)], dtype=np.int64)


def interpolation_weights(cm: np.ndarray, pos: np.ndarray, typed_site: np.ndarray) -> np.ndarray:
    """(N,) weight of the right typed site at each site between two typed sites (linear in cM; in bp
    where the map is flat); 0 elsewhere."""
    n = len(cm)
    lam = np.zeros(n, dtype=np.float32)
    if len(typed_site) < 2:
        return lam
    right = np.searchsorted(typed_site, np.arange(n), side="right")  # first typed site after each
    inside = (right > 0) & (right < len(typed_site))
    u = np.flatnonzero(inside)
    lo, hi = typed_site[right[u] - 1], typed_site[right[u]]
    span = cm[hi] - cm[lo]
    span_bp = (pos[hi] - pos[lo]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (cm[u] - cm[lo]) / span, (pos[u] - pos[lo]) / np.maximum(span_bp, 1))
    lam[u] = np.clip(w, 0.0, 1.0)
    return lam


def pack_reference(alleles: np.ndarray) -> np.ndarray:
    """(sites, haplotypes) 0/1 -> (sites, ceil(haplotypes / 8)) bits, little bit order: one byte holds
    haplotypes 8j..8j+7 of a site."""
    return np.packbits(np.asarray(alleles, dtype=np.uint8), axis=1, bitorder="little")


# How a site's carriers are listed (``reference_carriers``): the haplotypes with REF, with ALT, or none.
REF_LISTED, ALT_LISTED, NOT_LISTED = 0, 1, 2
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def reference_carriers(
    ref_packed: np.ndarray, n_ref: int, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The carriers of each site's minor allele in the reference, where there are at most ``limit``:
    ``ptr`` (N + 1,) and ``hap`` (ptr[-1],) in CSR form, haplotypes increasing; ``kind`` (N,) which
    allele they carry (ALT_LISTED, REF_LISTED; NOT_LISTED where there are more than ``limit``)."""
    counts, kind = _carrier_counts(ref_packed, n_ref, limit)
    ptr = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    hap = np.empty(ptr[-1], np.int32)
    _carrier_lists(ref_packed, n_ref, kind, ptr, hap)
    return ptr, hap, kind


@njit(parallel=True, cache=True)
def _carrier_counts(ref_packed, n_ref, limit):
    n_sites, n_bytes = ref_packed.shape
    counts = np.zeros(n_sites, np.int64)
    kind = np.full(n_sites, NOT_LISTED, np.uint8)
    for u in prange(n_sites):
        alt = 0
        for b in range(n_bytes):
            alt += _POPCOUNT[ref_packed[u, b]]
        minor = min(alt, n_ref - alt)
        if minor <= limit:
            counts[u] = minor
            kind[u] = ALT_LISTED if alt == minor else REF_LISTED
    return counts, kind


@njit(parallel=True, cache=True)
def _carrier_lists(ref_packed, n_ref, kind, ptr, hap):
    for u in prange(len(kind)):
        if kind[u] == NOT_LISTED:
            continue
        want = 1 if kind[u] == ALT_LISTED else 0
        at = ptr[u]
        for h in range(n_ref):
            if ((ref_packed[u, h >> 3] >> (h & 7)) & 1) == want:
                hap[at] = h
                at += 1


# -- state selection ---------------------------------------------------------------------------------


class StateIndex:
    """One FAISS binary index per step over the reference haplotypes at the typed sites of its span.

    Reference haplotypes are added in a seeded random order (``order``), so that among equally near
    candidates none is preferred for its place in the panel; ids returned are panel haplotype indices.
    ``bounds`` (S + 1,) typed-site boundaries of the steps; ``span`` (S, 2) typed sites each step's
    index covers.
    """

    def __init__(
        self, bounds: np.ndarray, span: np.ndarray, order: np.ndarray, indexes: list
    ) -> None:
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.span = np.asarray(span, dtype=np.int64)
        self.order = np.asarray(order, dtype=np.int64)
        self.indexes = indexes
        for index in indexes:
            # a counting sort over the few possible distances instead of a heap per query: the same
            # neighbours in the same order (tested), twice as fast at 64 of 2,000 haplotypes
            index.use_heap = False
        self.n_steps = len(self.bounds) - 1
        self.n_typed = int(self.bounds[-1])
        self.n_ref = len(self.order)

    @classmethod
    def build(
        cls,
        ref_typed: np.ndarray,
        cm_typed: np.ndarray,
        step_cm: float,
        span_steps: int,
        seed: int = 1,
        centred_ends: bool = True,
    ) -> StateIndex:
        """From the reference alleles (M, R) at the typed sites and their cM. ``centred_ends``: near
        an end a step's window narrows on both sides (True) or keeps the steps the chunk has on its
        inner side (False); see ``EngineParams.centred_ends``."""
        import faiss

        ref_typed = np.asarray(ref_typed, dtype=np.uint8)
        bounds = step_bounds(np.asarray(cm_typed, dtype=np.float64), step_cm)
        n_steps = len(bounds) - 1
        s = np.arange(n_steps)
        half = span_steps // 2
        if centred_ends:
            reach = np.minimum(half, np.minimum(s, n_steps - 1 - s))
            first, last = s - reach, s + reach
        else:
            first, last = np.maximum(s - half, 0), np.minimum(s + half, n_steps - 1)
        span = np.stack([bounds[first], bounds[last + 1]], axis=1)
        order = np.random.default_rng(seed).permutation(ref_typed.shape[1])
        hap_major = np.ascontiguousarray(ref_typed[:, order].T)  # (R, M)
        indexes = []
        for a, b in span:
            codes = _codes(hap_major[:, a:b])
            index = faiss.IndexBinaryFlat(8 * codes.shape[1])
            index.add(codes)
            indexes.append(index)
        return cls(bounds, span, order, indexes)

    def step_of(self) -> np.ndarray:
        """(M,) step of every typed site."""
        return np.repeat(np.arange(self.n_steps, dtype=np.int32), np.diff(self.bounds))

    def candidates(
        self,
        query: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        threads: int | None = None,
    ) -> np.ndarray:
        """(Q, S, k) nearest reference haplotypes of each query (Q, M) at each step, nearest first.

        ``exclude`` (Q, E): panel haplotypes a query must not get (a training query's own sample).
        ``threads``: steps searched at once (default: FAISS's thread count).
        """
        import faiss

        query = np.asarray(query, dtype=np.uint8)
        n_ex = 0 if exclude is None else exclude.shape[1]
        k_ask = min(k + n_ex, self.n_ref)
        out = np.full((len(query), self.n_steps, k), -1, dtype=np.int32)

        def search(s: int) -> np.ndarray:
            a, b = self.span[s]
            index = self.indexes[s]
            return index.search(_codes(query[:, a:b], index.code_size), k_ask)[1]

        # One step per thread, each search on one OpenMP thread (FAISS releases the GIL): FAISS's
        # own threads wait for each other at every search, and on a busy machine a descheduled one
        # stalls the rest (a search of 1,000 targets took 15 s instead of 1 s at load 3 on 2 cores).
        workers = max(1, threads or faiss.omp_get_max_threads())
        with ThreadPoolExecutor(
            workers, initializer=faiss.omp_set_num_threads, initargs=(1,)
        ) as pool:
            found = list(pool.map(search, range(self.n_steps)))
        for s, ids in enumerate(found):
            ids = np.where(ids >= 0, self.order[np.maximum(ids, 0)], -1)
            if n_ex:
                ids = np.where((ids[:, :, None] == exclude[:, None, :]).any(-1), -1, ids)
                # survivors first, in their order
                ids = np.take_along_axis(ids, np.argsort(ids < 0, axis=1, kind="stable"), 1)
            ids = ids[:, :k]
            out[:, s, : ids.shape[1]] = ids
        return out


def _codes(bits: np.ndarray, width: int | None = None) -> np.ndarray:
    """Rows of 0/1 -> packed bytes, zero-padded to ``width`` bytes; by default to the next width that
    FAISS compares with a dedicated Hamming kernel (4, 8, 16, 32, 64 or a multiple of 8 bytes): the
    distances are the same, and a search is ~1.5x faster than at an odd width."""
    packed = np.packbits(bits, axis=1)
    if width is None:
        n = packed.shape[1]
        width = next((w for w in (4, 8, 16, 32, 64) if n <= w), -(-n // 8) * 8)
    out = np.zeros((bits.shape[0], width), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out


# -- the copying model (numba) -------------------------------------------------------------------------


@njit(cache=True)
def _composite(cand, n_slots, slot_of, stretch_hap):
    """Fill ``stretch_hap`` (S, n_slots): the reference haplotype each slot copies at each step.

    cand (S, L) candidates per step (-1 = none). Returns the number of filled slots; they are
    0..n-1. ``slot_of`` (R,) must be all -1 and is left so.
    """
    n_steps, n_cand = cand.shape
    slot_hap = np.full(n_slots, -1, np.int32)
    slot_start = np.zeros(n_slots, np.int32)
    slot_last = np.full(n_slots, -1, np.int32)
    prev = np.arange(-1, n_slots - 1).astype(np.int32)  # least recently refreshed slot at the head
    nxt = np.arange(1, n_slots + 1).astype(np.int32)
    nxt[n_slots - 1] = -1
    head, tail = 0, n_slots - 1
    filled = 0
    for s in range(n_steps):
        for j in range(n_cand):
            c = cand[s, j]
            if c < 0:
                continue
            k = slot_of[c]
            if k < 0:
                k = head
                old = slot_hap[k]
                if old >= 0:
                    slot_of[old] = -1
                    switch = (slot_last[k] + 1 + s) // 2
                    for t in range(slot_start[k], switch):
                        stretch_hap[t, k] = old
                    slot_start[k] = switch
                else:
                    slot_start[k] = 0
                    filled += 1
                slot_hap[k] = c
                slot_of[c] = k
            slot_last[k] = s
            if k != tail:  # move k to the tail: most recently refreshed
                p, n = prev[k], nxt[k]
                if p >= 0:
                    nxt[p] = n
                else:
                    head = n
                prev[n] = p
                prev[k] = tail
                nxt[k] = -1
                nxt[tail] = k
                tail = k
    for k in range(n_slots):
        h = slot_hap[k]
        if h >= 0:
            for t in range(slot_start[k], n_steps):
                stretch_hap[t, k] = h
            slot_of[h] = -1
    return filled


@njit(cache=True)
def _hits(q, stretch_hap, n, step_of, ref_typed):
    """(M, n) uint8: 1 where state k copies the query's allele at typed site m, 0 where it does not,
    2 where the query's allele is missing (no emission). Gathered once per haplotype so that the
    forward and backward passes read a dense row instead of two indirections per state."""
    M = len(q)
    hit = np.empty((M, n), np.uint8)
    for m in range(M):
        a = q[m]
        row = stretch_hap[step_of[m]]
        if a < 0:
            hit[m, :] = 2
        else:
            for k in range(n):
                hit[m, k] = ref_typed[m, row[k]] == a
    return hit


@njit(cache=True, fastmath=True)
def _alpha_step(prev, out, hit, n, rho_m, err):
    """Forward values at a typed site (its ``hit`` row) from those at the one before (normalised).
    In float32 with the emission computed from the hit (not looked up), so that the loops vectorise."""
    stay = np.float32(1.0) - rho_m
    add = rho_m / np.float32(n)
    total = np.float32(0.0)
    if hit[0] == 2:  # the query's allele is missing: no emission
        for k in range(n):
            x = stay * prev[k] + add
            out[k] = x
            total += x
    else:
        d = np.float32(1.0) - np.float32(2.0) * err
        for k in range(n):
            x = (stay * prev[k] + add) * (err + d * np.float32(hit[k]))
            out[k] = x
            total += x
    inv = np.float32(1.0) / total
    for k in range(n):
        out[k] *= inv


@njit(cache=True, fastmath=True)
def _alpha_first(out, hit, n, err):
    total = np.float32(0.0)
    d = np.float32(1.0) - np.float32(2.0) * err
    for k in range(n):
        out[k] = np.float32(1.0) if hit[k] == 2 else err + d * np.float32(hit[k])
        total += out[k]
    inv = np.float32(1.0) / total
    for k in range(n):
        out[k] *= inv


@njit(cache=True, fastmath=True)
def _beta_step(b, hit, n, rho_m1, err, tmp):
    """Backward values at typed site m1 - 1 from those at m1 (its ``hit`` row), in place (normalised)."""
    total = np.float32(0.0)
    if hit[0] == 2:
        for k in range(n):
            tmp[k] = b[k]
            total += b[k]
    else:
        d = np.float32(1.0) - np.float32(2.0) * err
        for k in range(n):
            x = (err + d * np.float32(hit[k])) * b[k]
            tmp[k] = x
            total += x
    stay = np.float32(1.0) - rho_m1
    add = rho_m1 * total / np.float32(n)
    norm = np.float32(0.0)
    for k in range(n):
        x = stay * tmp[k] + add
        b[k] = x
        norm += x
    inv = np.float32(1.0) / norm
    for k in range(n):
        b[k] *= inv


@njit(cache=True, fastmath=True)
def _interval(
    out_col, u0, u1, lam, af, ref_packed, carriers, cur, nx, left_only, classes, k, scratch, renorm
):
    """P(ALT) at sites u0..u1-1 (interval k of ``classes``): posterior of the left typed site (cur)
    and, unless ``left_only``, the right one (nx), mixed by ``lam``; dropped states' mass takes the
    allele frequency (with ``renorm``, the kept states' posteriors are scaled to sum to 1 instead).

    ``cur`` and ``nx`` are (haplotypes, posteriors, how many, kept mass, dropped mass, posterior by
    reference haplotype) of the states kept. Their posteriors are first pooled by class: reference
    haplotypes with the same alleles at every site of the interval copy the same thing there, so a
    site's sum runs over the classes the kept states fall in (tens) instead of over the states
    (hundreds). A site whose minor allele has fewer carriers than that is read off the posterior of
    its carriers instead (most sites are rare: a handful of reads). All give the same sum."""
    if u1 <= u0:
        return
    hs_c, ps_c, n_cur, kept_c, cur_res, w_c = cur
    hs_n, ps_n, n_nx, kept_n, nx_res, w_n = nx
    cls, cls_row, cbits, cbit_off = classes
    row = cls_row[k]
    slot, occ, wa, wb = scratch
    n_occ = 0
    for side in range(1 if left_only else 2):
        hs, ps, n = (hs_c, ps_c, n_cur) if side == 0 else (hs_n, ps_n, n_nx)
        for j in range(n):
            r = hs[j] if row < 0 else np.int32(cls[row, hs[j]])
            s = slot[r]
            if s < 0:
                s = n_occ
                slot[r] = s
                occ[s] = r
                wa[s] = 0.0
                wb[s] = 0.0
                n_occ += 1
            if side == 0:
                wa[s] += ps[j]
            else:
                wb[s] += ps[j]
    for s in range(n_occ):
        slot[occ[s]] = -1
    ptr, hap, kind = carriers
    reads = 1 if left_only else 2
    for u in range(u0, u1):
        c0, c1 = ptr[u], ptr[u + 1]
        a = 0.0
        b = 0.0
        if kind[u] != NOT_LISTED and reads * (c1 - c0) <= n_occ:
            for i in range(c0, c1):
                a += w_c[hap[i]]
                if not left_only:
                    b += w_n[hap[i]]
            if kind[u] == REF_LISTED:
                a = kept_c - a
                b = kept_n - b
        elif row < 0:
            for s in range(n_occ):
                r = occ[s]
                bit = (ref_packed[u, r >> 3] >> (r & 7)) & 1
                a += wa[s] * bit
                b += wb[s] * bit
        else:
            o = cbit_off[u]
            for s in range(n_occ):
                c = occ[s]
                bit = (cbits[o + (c >> 3)] >> (c & 7)) & 1
                a += wa[s] * bit
                b += wb[s] * bit
        x = a / kept_c if renorm else cur_res * af[u] + a
        if left_only:
            out_col[u] = x
        else:
            w = lam[u]
            y = b / kept_n if renorm else nx_res * af[u] + b
            out_col[u] = (1.0 - w) * x + w * y


# Intervals between typed sites shorter than this get no classes (their states are summed one by one):
# the class tables then take at most the memory of the reference bits of the sites they cover.
CLASS_MIN_SITES = 16
# From this many reference haplotypes the class numbers are int32 instead of uint16 (half the
# memory below it); numba compiles a variant of the kernels that take them for each
# (``kernel_cache.warm_up`` compiles both).
WIDE_CLASSES_FROM = 65_536


def interval_classes(
    ref_packed: np.ndarray, n_ref: int, typed_site: np.ndarray, min_sites: int = CLASS_MIN_SITES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference haplotypes grouped by their alleles over each interval between typed sites, and the
    alleles of each group: a site's sum over states then reads a few bytes, not a row of the panel.

    Interval k holds the sites after typed site k - 1 and before typed site k (0: before the first;
    M: after the last). Returns (``cls``, ``cls_row``, ``cbits``, ``cbit_off``): ``cls_row`` (M + 1,)
    is the row of ``cls`` for interval k, or -1 where it has fewer than ``min_sites`` sites;
    ``cls[row, h]`` the class of haplotype h there (classes numbered by their least haplotype; two
    haplotypes share one exactly when their alleles agree at every site of the interval; uint16
    below ``WIDE_CLASSES_FROM`` haplotypes, else int32); the alleles of class c at site u are bit c of
    ``cbits[cbit_off[u]:]`` (little bit order; ``cbit_off`` is -1 at sites outside such intervals)."""
    typed_site = np.asarray(typed_site, dtype=np.int64)
    n_sites = len(ref_packed)
    edges = np.r_[0, typed_site + 1] if len(typed_site) else np.zeros(1, np.int64)
    ends = np.r_[typed_site, n_sites]
    grouped = np.flatnonzero(ends - edges >= min_sites)
    cls_row = np.full(len(edges), -1, np.int64)
    cls_row[grouped] = np.arange(len(grouped))
    starts, stops = edges[grouped], ends[grouped]
    cls = np.empty((len(grouped), n_ref), np.uint16 if n_ref < WIDE_CLASSES_FROM else np.int32)
    reps = np.empty((len(grouped), n_ref), np.int32)
    n_cls = _group_intervals(ref_packed, n_ref, starts, stops, cls, reps)
    row_bytes = (n_cls + 7) // 8
    cbit_off = np.full(n_sites, -1, np.int64)
    sizes = (stops - starts) * row_bytes
    first = np.r_[0, np.cumsum(sizes)]
    for g in range(len(grouped)):
        cbit_off[starts[g] : stops[g]] = first[g] + row_bytes[g] * np.arange(stops[g] - starts[g])
    cbits = np.zeros(first[-1], np.uint8)
    _class_bits(ref_packed, starts, stops, reps, n_cls, cbit_off, cbits)
    return cls, cls_row, cbits, cbit_off


@njit(parallel=True, cache=True)
def _group_intervals(ref_packed, n_ref, starts, stops, cls, reps):
    """Classes of each interval g into cls[g]; reps[g, c] the least haplotype of class c; returns
    the number of classes of each interval."""
    n_cls = np.zeros(len(starts), np.int64)
    if n_ref == 0:
        return n_cls
    for g in prange(len(starts)):
        u0, u1 = starts[g], stops[g]
        key = np.zeros(n_ref, np.uint64)
        for u in range(u0, u1):
            # a fixed pseudo-random 64-bit word per site (splitmix64): a haplotype's key is the sum
            # of the words of the sites where it carries ALT
            z = np.uint64(u + 1) * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            for h in range(n_ref):
                if (ref_packed[u, h >> 3] >> (h & 7)) & 1:
                    key[h] += z
        order = np.argsort(key, kind="mergesort")  # stable: a run of equal keys starts at its least
        rep = np.empty(n_ref, np.int64)
        first = order[0]
        for i in range(n_ref):
            h = order[i]
            if key[h] != key[first]:
                first = h
            same = True  # equal keys are checked bit by bit: a collision only leaves h on its own
            for u in range(u0, u1):
                if (
                    (ref_packed[u, h >> 3] >> (h & 7)) ^ (ref_packed[u, first >> 3] >> (first & 7))
                ) & 1:
                    same = False
                    break
            rep[h] = first if same else h
        c = 0
        for h in range(n_ref):  # rep[h] <= h: a class is numbered when its least haplotype comes
            if rep[h] == h:
                cls[g, h] = c
                reps[g, c] = h
                c += 1
            else:
                cls[g, h] = cls[g, rep[h]]
        n_cls[g] = c
    return n_cls


@njit(parallel=True, cache=True)
def _class_bits(ref_packed, starts, stops, reps, n_cls, cbit_off, cbits):
    for g in prange(len(starts)):
        for u in range(starts[g], stops[g]):
            o = cbit_off[u]
            for c in range(n_cls[g]):
                h = reps[g, c]
                cbits[o + (c >> 3)] |= ((ref_packed[u, h >> 3] >> (h & 7)) & 1) << (c & 7)


@njit(cache=True, fastmath=True)
def _switch_probabilities(dist_cm, ne, n_panel):
    """(M,) probability of a switch between typed site m - 1 and m (0 at the first)."""
    M = len(dist_cm)
    rho = np.empty(M, np.float32)
    rho[0] = 0.0
    c = -0.04 * ne / n_panel  # Beagle's: the switch rate scales with the panel, not the states
    for m in range(1, M):
        rho[m] = -math.expm1(c * max(dist_cm[m], 1e-7))
    return rho


@njit(cache=True, fastmath=True)
def _forward(hit, n, rho, err, block):
    """Forward values at every ``block``-th typed site (ckpt) and at all of the last block (blk):
    the backward pass recomputes the others a block at a time, so memory is O(M / block + block)."""
    M = hit.shape[0]
    n_blocks = (M + block - 1) // block
    last0 = (n_blocks - 1) * block
    ckpt = np.empty((n_blocks, n), np.float32)
    blk = np.empty((block, n), np.float32)
    a = np.empty(n, np.float32)
    a2 = np.empty(n, np.float32)
    _alpha_first(a, hit[0], n, err)
    for m in range(M):
        if m > 0:
            _alpha_step(a, a2, hit[m], n, rho[m], err)
            a, a2 = a2, a
        if m % block == 0:
            ckpt[m // block, :] = a
        if m >= last0:
            blk[m - last0, :] = a
    return ckpt, blk


@njit(cache=True, fastmath=True)
def _site_posterior(
    alpha, b, post, m, q, hit, step_of, stretch_hap, ref_typed, n, min_post, hs, ps, w, n_stale
):
    """Posterior at typed site m from its forward (alpha) and backward (b) values: the states of
    posterior at least ``min_post`` go to hs / ps, and their posterior by reference haplotype to w
    (unless it is empty), after the ``n_stale`` haplotypes hs held before are cleared from it.
    Returns (P(ALT), posterior of the states that disagree with the query, states kept, their
    posterior mass)."""
    if len(w):
        for i in range(n_stale):
            w[hs[i]] = 0.0
    total = np.float32(0.0)
    for k in range(n):
        post[k] = alpha[k] * b[k]
        total += post[k]
    inv = np.float32(1.0) / total
    row = stretch_hap[step_of[m]]
    dos = 0.0
    wrong = 0.0
    n_kept = 0
    kept = 0.0
    for k in range(n):
        p = post[k] * inv
        if q[m] >= 0:  # the state's allele is the query's where it hits
            allele = hit[k] if q[m] == 1 else 1 - hit[k]
            wrong += p * (1 - hit[k])
        else:
            allele = ref_typed[m, row[k]]
        dos += p * allele
        if p >= min_post:
            hs[n_kept] = row[k]
            ps[n_kept] = p
            n_kept += 1
            kept += p
    if len(w):
        for i in range(n_kept):
            w[hs[i]] += ps[i]
    return dos, wrong, n_kept, kept


@njit(cache=True)
def _pool_scratch(n_ref, n):
    """_interval's pooling of the kept states by class: the slot of each class (-1: none), the
    classes in their slots, and their weights from the left and the right typed site."""
    slot = np.full(n_ref, -1, np.int32)
    return slot, np.empty(2 * n, np.int32), np.empty(2 * n, np.float64), np.empty(2 * n, np.float64)


@njit(cache=True, fastmath=True)
def _impute_one(
    q,
    stretch_hap,
    n,
    n_panel,
    step_of,
    ref_typed,
    dist_cm,
    ne,
    err,
    block,
    typed_site,
    lam,
    af,
    ref_packed,
    carriers,
    classes,
    min_post,
    renorm,
    out_col,
):
    """Forward-backward for one haplotype; writes P(ALT) at every site into out_col (N,), or
    nothing when out_col is empty (the error rate's estimation needs only the returned counts).

    Returns (expected mismatches at its observed typed sites, observed typed sites).
    """
    M = len(q)
    N = len(out_col)
    if renorm:  # the most probable state is then always kept: the kept mass is never 0
        min_post = min(min_post, 0.9999 / n)
    rho = _switch_probabilities(dist_cm, ne, n_panel)
    n_blocks = (M + block - 1) // block
    e32 = np.float32(err)
    hit = _hits(q, stretch_hap, n, step_of, ref_typed)
    ckpt, blk = _forward(hit, n, rho, e32, block)
    b = np.full(n, 1.0 / n, np.float32)
    tmp = np.empty(n, np.float32)
    post = np.empty(n, np.float32)
    # the states kept at the current typed site (cur) and at the next one (nx), read by _interval,
    # also as posterior by reference haplotype (cur_w, nx_w; zero elsewhere)
    cur_h = np.empty(n, np.int32)
    cur_p = np.empty(n, np.float32)
    nx_h = np.empty(n, np.int32)
    nx_p = np.empty(n, np.float32)
    n_w = n_panel if N else 0
    cur_w = np.zeros(n_w, np.float32)
    nx_w = np.zeros(n_w, np.float32)
    scratch = _pool_scratch(n_w, n)
    n_nx = 0
    n_stale = 0  # entries of cur_h (the states of two typed sites on) still set in cur_w
    nx_kept = 0.0
    nx_res = 0.0
    mism = 0.0
    n_obs = 0
    for j in range(n_blocks - 1, -1, -1):
        c0 = j * block
        c1 = min(M, c0 + block)
        if j != n_blocks - 1:
            blk[0, :] = ckpt[j, :]
            for m in range(c0 + 1, c1):
                _alpha_step(blk[m - c0 - 1], blk[m - c0], hit[m], n, rho[m], e32)
        for m in range(c1 - 1, c0 - 1, -1):
            if m < M - 1:
                _beta_step(b, hit[m + 1], n, rho[m + 1], e32, tmp)
            dos, wrong, n_cur, kept = _site_posterior(
                blk[m - c0], b, post, m, q, hit[m], step_of, stretch_hap, ref_typed, n, min_post,
                cur_h, cur_p, cur_w, n_stale,
            )  # fmt: skip
            if q[m] >= 0:
                mism += wrong
                n_obs += 1
            if N == 0:
                continue
            out_col[typed_site[m]] = dos
            cur_res = max(1.0 - kept, 0.0)
            # the untyped sites up to the next typed site, from both; past the last, from this one
            cur = (cur_h, cur_p, n_cur, kept, cur_res, cur_w)
            nx = (nx_h, nx_p, n_nx, nx_kept, nx_res, nx_w)
            last = m == M - 1
            hi = N if last else typed_site[m + 1]
            _interval(
                out_col, typed_site[m] + 1, hi, lam, af, ref_packed, carriers, cur, nx, last,
                classes, m + 1, scratch, renorm,
            )  # fmt: skip
            if m == 0:  # ... and before the first typed site, from it alone
                _interval(
                    out_col, 0, typed_site[0], lam, af, ref_packed, carriers, cur, nx, True,
                    classes, 0, scratch, renorm,
                )  # fmt: skip
            cur_h, nx_h, cur_p, nx_p, cur_w, nx_w = nx_h, cur_h, nx_p, cur_p, nx_w, cur_w
            n_stale, n_nx, nx_kept, nx_res = n_nx, n_cur, kept, cur_res
    return mism, n_obs


@njit(parallel=True, cache=True)
def _impute_batch(
    q,
    cand,
    exclude,
    n_slots,
    identity,
    n_ref,
    step_of,
    ref_typed,
    dist_cm,
    ne,
    err,
    block,
    typed_site,
    lam,
    af,
    ref_packed,
    carriers,
    classes,
    min_post,
    renorm,
    out,
    stats,
):
    """Every query haplotype (rows of q) in parallel; out (Q, N) or (Q, 0), stats (Q, 2)."""
    Q = q.shape[0]
    S = cand.shape[1]
    for i in prange(Q):
        if identity:
            stretch_hap = np.empty((S, n_ref), np.int32)
            n = 0
            for h in range(n_ref):
                skip = False
                for e in range(exclude.shape[1]):
                    if exclude[i, e] == h:
                        skip = True
                if not skip:
                    for s in range(S):
                        stretch_hap[s, n] = h
                    n += 1
        else:
            slot_of = np.full(n_ref, -1, np.int32)
            stretch_hap = np.zeros((S, n_slots), np.int32)
            n = _composite(cand[i], n_slots, slot_of, stretch_hap)
        mism, n_obs = _impute_one(
            q[i],
            stretch_hap,
            n,
            n_ref,
            step_of,
            ref_typed,
            dist_cm,
            ne,
            err,
            block,
            typed_site,
            lam,
            af,
            ref_packed,
            carriers,
            classes,
            min_post,
            renorm,
            out[i],
        )
        stats[i, 0] = mism
        stats[i, 1] = n_obs


# -- driver --------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """A reference over consecutive sites, and which of them the targets type.

    ``ref_packed`` (N, ceil(R / 8)) bits of every site; ``ref_typed`` (M, R) alleles at the typed
    sites; ``typed_site`` (M,) their indices among the N sites (increasing); ``cm`` / ``pos`` (N,);
    ``af`` (N,) reference ALT frequency.
    """

    ref_packed: np.ndarray
    ref_typed: np.ndarray
    typed_site: np.ndarray
    cm: np.ndarray
    pos: np.ndarray
    af: np.ndarray

    @classmethod
    def from_alleles(
        cls, alleles: np.ndarray, typed_site: np.ndarray, cm: np.ndarray, pos: np.ndarray
    ) -> Chunk:
        """From a dense (N, R) 0/1 reference (tests and small panels)."""
        alleles = np.asarray(alleles, dtype=np.uint8)
        typed_site = np.asarray(typed_site, dtype=np.int64)
        return cls(
            ref_packed=pack_reference(alleles),
            ref_typed=np.ascontiguousarray(alleles[typed_site]),
            typed_site=typed_site,
            cm=np.asarray(cm, dtype=np.float64),
            pos=np.asarray(pos, dtype=np.int64),
            af=alleles.mean(axis=1).astype(np.float32)
            if alleles.shape[1]
            else np.zeros(len(alleles), np.float32),
        )

    @property
    def n_sites(self) -> int:
        return len(self.cm)

    @property
    def n_ref(self) -> int:
        return self.ref_typed.shape[1]


class Engine:
    """The copying model of one chunk: its state index is built once, then any number of batches of
    target haplotypes are imputed with it."""

    def __init__(self, chunk: Chunk, params: EngineParams, index: StateIndex | None = None):
        if len(chunk.typed_site) == 0:
            raise ValueError("no typed site in the chunk: nothing to copy from")
        self.chunk = chunk
        params = params.resolved(chunk.n_ref)
        self.params = params
        cm_t = chunk.cm[chunk.typed_site]
        # Composite states even when the panel would fit: leaving out the haplotypes that never match
        # the target anywhere helps the rare variants (measured on the demos); only a panel no larger
        # than one step's candidates is used whole.
        self.identity = chunk.n_ref <= params.candidates
        if index is None:
            index = StateIndex.build(
                chunk.ref_typed,
                cm_t,
                params.step_cm,
                params.span_steps,
                params.seed,
                params.centred_ends(chunk.n_ref),
            )
        elif index.n_typed != len(chunk.typed_site) or index.n_ref != chunk.n_ref:
            raise ValueError(
                f"the state index covers {index.n_typed} typed sites and {index.n_ref} haplotypes, "
                f"the chunk {len(chunk.typed_site)} and {chunk.n_ref}"
            )
        self.index = index
        self.step_of = index.step_of()
        self.dist_cm = np.r_[0.0, np.diff(cm_t)].astype(np.float64)
        self.lam = interpolation_weights(chunk.cm, chunk.pos, chunk.typed_site)

    # The interpolation's lookups are built on first use: the CUDA path (engine_torch) interpolates
    # on its own and never reads them.
    @cached_property
    def carriers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``reference_carriers`` of the chunk. Listing a site's carriers pays only where they are
        fewer than the states kept; at most n_ref / 32 of them, the carrier lists take at most the
        reference bits' memory."""
        c = self.chunk
        return reference_carriers(c.ref_packed, c.n_ref, min(self.params.states, c.n_ref // 32))

    @cached_property
    def classes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``interval_classes`` of the chunk."""
        return interval_classes(self.chunk.ref_packed, self.chunk.n_ref, self.chunk.typed_site)

    def candidates(
        self, query: np.ndarray, exclude: np.ndarray | None = None, threads: int | None = None
    ) -> np.ndarray:
        """(Q, S, candidates) nearest reference haplotypes per step; (Q, S, 0) when the panel is used
        whole. Missing alleles are searched as REF (they only rank candidates)."""
        if self.identity:
            return np.zeros((len(query), self.index.n_steps, 0), dtype=np.int32)
        filled = np.where(query < 0, 0, query).astype(np.uint8)
        return self.index.candidates(filled, self.params.candidates, exclude, threads)

    def states(self, query: np.ndarray, exclude: np.ndarray | None = None) -> list[np.ndarray]:
        """Per query haplotype, (S, n) the reference haplotype each composite state copies at each
        step: what the copying model runs on (for inspection and tests)."""
        query = np.asarray(query, dtype=np.int8)
        cand = self.candidates(query, exclude)
        out = []
        for i in range(len(query)):
            if self.identity:
                keep = np.setdiff1d(
                    np.arange(self.chunk.n_ref), [] if exclude is None else exclude[i]
                )
                out.append(np.tile(keep.astype(np.int32), (self.index.n_steps, 1)))
                continue
            table = np.zeros((self.index.n_steps, self.params.states), dtype=np.int32)
            n = _composite(
                cand[i], self.params.states, np.full(self.chunk.n_ref, -1, np.int32), table
            )
            out.append(table[:, :n])
        return out

    def impute(
        self,
        query: np.ndarray,
        exclude: np.ndarray | None = None,
        error: float | None = None,
        threads: int | None = None,
        device: str | None = None,
        interpolate: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(ALT) (Q, N) at every site for query haplotypes (Q, M) typed at the chunk's typed sites
        (-1 = missing); also (Q, 2): expected mismatches and observed typed sites per haplotype.
        Without ``interpolate``, only the latter is computed (P(ALT) is (Q, 0)).

        ``exclude`` (Q, E): reference haplotypes each query must not copy (its own sample, when the
        query is in the reference). ``error`` overrides ``params.error`` (which must then be set).
        ``device``: None or ``cpu`` runs the numba kernel on ``threads`` threads; ``cuda`` (or
        ``cuda:N``) runs the same model in torch on that GPU (``ragimpute.engine_torch``).
        """
        query = np.ascontiguousarray(query, dtype=np.int8)
        if query.ndim != 2 or query.shape[1] != len(self.chunk.typed_site):
            raise ValueError(
                f"queries must be (haplotypes, {len(self.chunk.typed_site)} typed sites), "
                f"got {query.shape}"
            )
        err = self.params.error if error is None else error
        if err is None:
            raise ValueError("no error rate: set params.error or pass error (see estimate_error)")
        # one layout, so that the kernel compiled into numba's cache serves every call
        ex = (
            np.zeros((len(query), 0), np.int64)
            if exclude is None
            else np.ascontiguousarray(exclude, np.int64)
        )
        if len(ex) != len(query):
            raise ValueError("exclude needs one row per query")
        if self.identity and self.chunk.n_ref - ex.shape[1] < 1:
            raise ValueError("no reference haplotype left once the excluded ones are removed")
        if on_cuda(device):
            from .engine_torch import impute_torch

            return impute_torch(
                self, query, float(err), device, None if exclude is None else ex, interpolate
            )
        # before any kernel runs, reference_carriers' and interval_classes' (through self.carriers
        # and self.classes, which only this method reads) included
        load_kernels()
        cand = self.candidates(query, None if exclude is None else ex, threads)
        out = np.empty((len(query), self.chunk.n_sites if interpolate else 0), dtype=np.float32)
        stats = np.zeros((len(query), 2), dtype=np.float64)
        if threads:
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        p = self.params
        _impute_batch(
            query,
            cand,
            ex,
            p.states,
            self.identity,
            self.chunk.n_ref,
            self.step_of,
            self.chunk.ref_typed,
            self.dist_cm,
            float(p.ne),
            float(err),
            int(p.block_sites),
            self.chunk.typed_site,
            self.lam,
            self.chunk.af,
            self.chunk.ref_packed,
            self.carriers,
            self.classes,
            float(p.min_posterior),
            bool(p.renormalise),
            out,
            stats,
        )
        return out, stats

    def estimate_error(
        self,
        query: np.ndarray,
        exclude: np.ndarray | None = None,
        sample: int | None = None,
        rounds: int = 2,
        seed: int = 1,
        threads: int | None = None,
        device: str | None = None,
    ) -> float:
        """The allele mismatch rate that the copying model expects on (a sample of) the queries, by a
        few rounds of expectation-maximisation from 1e-3 (as Beagle estimates its ``err``), clipped to
        [1e-4, 0.05]. Array genotyping errors raise it, so that one wrong call does not break a long
        match. The sample holds enough haplotypes for ~20,000 observed alleles (16 at least)."""
        if sample is None:
            sample = max(16, -(-20_000 // max(len(self.chunk.typed_site), 1)))
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.permutation(len(query))[:sample])
        q = np.asarray(query)[rows]
        ex = None if exclude is None else np.asarray(exclude)[rows]
        err = 1e-3
        for _ in range(rounds):
            _, stats = self.impute(
                q, ex, error=err, threads=threads, device=device, interpolate=False
            )
            seen = stats[:, 1].sum()
            if seen == 0:
                return err
            err = float(np.clip(stats[:, 0].sum() / seen, 1e-4, 0.05))
        return err
