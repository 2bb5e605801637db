"""Chunk planning: overlapping regions whose cores tile the chromosome exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ragimpute.chunks import chrom_of, plan_chunks, unit_name
from ragimpute.errors import InputError
from ragimpute.genmap import GeneticMap


def check_tiling(units, first, last):
    assert units[0].start == first and units[-1].end == last
    assert units[0].core_start == first and units[-1].core_end == last
    for a, b in zip(units[:-1], units[1:], strict=True):
        assert b.core_start == a.core_end + 1  # cores tile: no gap, no overlap
        assert a.start <= a.core_start <= a.core_end <= a.end
        assert b.start <= a.end  # regions overlap


@pytest.mark.parametrize(
    "length,overlap", [(1_000_000, 200_000), (700_000, 0), (2_500_000, 500_000)]
)
def test_bp_chunks_tile_the_chromosome(length, overlap):
    units = plan_chunks("20", 1, 3_000_000, length, overlap, unit="bp")
    check_tiling(units, 1, 3_000_000)
    for a, b in zip(units[:-1], units[1:], strict=True):
        assert b.start - 1 <= a.end  # overlap at least as asked (bp rounding)
        assert a.end - b.start + 1 == pytest.approx(overlap, abs=2)
        # every core site at least about half the overlap from its chunk's inner edges
        assert a.end - a.core_end >= overlap // 2 - 1
        assert b.core_start - b.start >= overlap // 2 - 1
    assert [u.name for u in units] == [unit_name("20", i) for i in range(len(units))]


def test_one_unit_when_not_chunked_or_short():
    (u,) = plan_chunks("chr20", 5, 1000, 0, 0)
    assert (u.name, u.start, u.end, u.core_start, u.core_end) == ("chr20", 5, 1000, 5, 1000)
    (u,) = plan_chunks("20", 1, 500_000, 2.0, 0.5)  # 0.5 cM at 1 cM/Mb: shorter than a chunk
    assert u.name == "20"


def test_cm_chunks_follow_the_genetic_map():
    # 0-1 Mb at 1 cM/Mb, 1-2 Mb a hotspot region at 10 cM/Mb, 2-3 Mb at 1 cM/Mb
    g = GeneticMap(
        "map",
        "20",
        np.array([1, 1_000_000, 2_000_000, 3_000_000]),
        np.array([0.0, 1.0, 11.0, 12.0]),
    )
    units = plan_chunks("20", 1, 3_000_000, 2.0, 0.5, unit="cm", genetic_map=g)
    check_tiling(units, 1, 3_000_000)
    cm = lambda bp: float(g.cm_at(np.array([bp]))[0])  # noqa: E731
    for u in units[:-1]:
        assert cm(u.end) - cm(u.start) == pytest.approx(2.0, abs=1e-3)
    # the hotspot holds many chunks, the flat flanks few
    inside = [u for u in units if 1_000_000 <= u.start and u.end <= 2_000_000]
    assert len(inside) >= 5


def test_bad_chunk_settings_and_names():
    with pytest.raises(InputError, match="overlap < length"):
        plan_chunks("20", 1, 10_000_000, 1.0, 1.0)
    with pytest.raises(InputError, match="cm or bp"):
        plan_chunks("20", 1, 10_000_000, 1.0, 0.1, unit="kb")
    assert (
        chrom_of("20.c003") == "20" and chrom_of("chr20") == "chr20" and chrom_of("1.cx") == "1.cx"
    )


def test_a_region_reads_exactly_the_chunks_records(tmp_path):
    """Windowing a chunk reads only its region, the same records as the whole chromosome there."""
    from ragimpute.demo import DemoSpec, make_demo
    from ragimpute.vcf_io import read_panel

    panel = tmp_path / "panel.vcf.gz"
    make_demo(DemoSpec(seed=2, n_samples=10, sequence_length=200_000), panel, tmp_path / "a.tsv")
    whole = read_panel(panel, "20")
    part = read_panel(panel, "20", region=(50_000, 120_000))
    inside = ((whole.sites["pos"] >= 50_000) & (whole.sites["pos"] <= 120_000)).to_numpy()
    assert part.n_sites == inside.sum() > 0
    assert np.array_equal(part.haplotypes, whole.haplotypes[inside])
    assert part.sites["pos"].tolist() == whole.sites["pos"][inside].tolist()
