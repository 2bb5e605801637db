"""Training data at scale: epochs sampled across the genome, windows read on use through a bounded cache."""

import numpy as np
import pytest

from ragimpute.train import TrainConfig
from ragimpute.train_data import (
    Lazy,
    Window,
    WindowCache,
    epoch_batches,
    n_sampled_batches,
    sample_batches,
)


def windows(n_windows: int, n_hap: int = 40, chroms=("1", "2")) -> list[Window]:
    """Windows that know their haplotype counts and hold no arrays."""
    out = []
    for c in chroms:
        for w in range(n_windows):
            e = np.zeros(3)
            out.append(Window(c, w, e, e, e, e.astype(bool), {}, n_hap={"train": n_hap}))
    return out


def test_an_epoch_samples_the_examples_asked_for_across_windows_and_chromosomes():
    ws = windows(50)
    batches = sample_batches(ws, 8, 1000, np.random.default_rng([1, 0]), group=4)
    assert sum(len(rows) for _, rows in batches) == 1000
    assert len(batches) == n_sampled_batches(1000, 8) == 125
    drawn = {i for i, _ in batches}
    assert len(drawn) > 40 and {ws[i].chrom for i in drawn} == {"1", "2"}
    for _, rows in batches:  # both haplotypes of distinct samples
        assert (rows[0::2] % 2 == 0).all() and (rows[1::2] == rows[0::2] + 1).all()
        assert len(set(rows.tolist())) == len(rows) and rows.max() < 40
    # seeded per epoch: the same epoch draws the same batches, another epoch others
    again = sample_batches(ws, 8, 1000, np.random.default_rng([1, 0]), group=4)
    assert all(a == c and (r == s).all() for (a, r), (c, s) in zip(batches, again, strict=True))
    other = sample_batches(ws, 8, 1000, np.random.default_rng([1, 1]), group=4)
    assert [i for i, _ in other] != [i for i, _ in batches]


def test_sampled_batches_visit_a_window_once_per_group():
    """Batches come `group` windows at a time: a cache of that many windows reads each window once."""
    ws = windows(30)
    batches = sample_batches(ws, 4, 2000, np.random.default_rng(3), group=3)
    cache, loads = [], 0
    for i, _ in batches:
        if i not in cache:
            loads += 1
            cache = [*cache[-2:], i]
    assert loads == len({i for i, _ in batches})


def test_a_remainder_makes_a_smaller_last_batch_and_weights_follow_haplotypes():
    ws = windows(2, chroms=("1",)) + [Window("3", 0, *[np.zeros(1)] * 3, np.zeros(1, bool), {},
                                             n_hap={"train": 0})]  # fmt: skip
    batches = sample_batches(ws, 8, 20, np.random.default_rng(0), group=8)
    assert [len(r) for _, r in batches] == [8, 8, 4]
    assert 2 not in {i for i, _ in batches}  # a window without training haplotypes is never drawn
    assert sum(len(r) for _, r in sample_batches(ws, 8, 7, np.random.default_rng(0), 8)) == 8


def test_every_batch_when_not_sampling():
    ws = windows(3, n_hap=20, chroms=("1",))
    batches = epoch_batches(ws, 8, np.random.default_rng(0))
    assert sorted(i for i, _ in batches) == [0] * 3 + [1] * 3 + [2] * 3
    assert sum(len(r) for _, r in batches) == 60


def test_the_cache_holds_at_most_its_capacity():
    cache = WindowCache(2)
    reads = []
    lazy = [
        Lazy(cache, ("1", w), "truth", {"train": lambda w=w: reads.append(w) or np.full(2, w)})
        for w in range(5)
    ]
    for _ in range(2):
        for w in range(5):
            assert lazy[w]["train"][0] == w
            assert cache.held <= 2
    assert cache.peak == 2 and cache.loads == 10 and reads == list(range(5)) * 2
    assert lazy[4]["train"][0] == 4 and len(reads) == 10  # held: no read
    assert "train" in lazy[0] and "val" not in lazy[0] and len(reads) == 10  # no read either
    with pytest.raises(ValueError):
        WindowCache(0)


def test_train_config_refuses_a_negative_epoch_or_an_empty_cache():
    with pytest.raises(ValueError, match="examples_per_epoch"):
        TrainConfig(examples_per_epoch=-1)
    with pytest.raises(ValueError, match="cache_windows"):
        TrainConfig(cache_windows=0)
