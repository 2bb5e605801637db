"""Genetic maps: PLINK and HapMap give the same cM, interpolation and extrapolation as Beagle's, the
site map every tool reads, and the hotspot demo's map."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from ragimpute.errors import InputError
from ragimpute.genmap import read_genetic_map, site_cm, write_plink_map, write_site_map

# Map points of chromosome 20: a flat stretch, a hotspot (steep) and a slow stretch.
BP = np.array([10_000, 50_000, 52_000, 120_000, 400_000])
CM = np.array([0.0, 0.04, 1.04, 1.10, 1.38])


def plink_text(chrom="20", ids=None):
    ids = ids or [f"rs{i}" for i in range(len(BP))]
    return "".join(f"{chrom} {i} {c} {b}\n" for i, c, b in zip(ids, CM, BP, strict=True))


def hapmap_text(chrom="chr20"):
    rate = np.r_[np.diff(CM) / np.diff(BP) * 1e6, 0.0]  # cM/Mb to the next point
    rows = "".join(f"{chrom}\t{b}\t{r:.6f}\t{c}\n" for b, r, c in zip(BP, rate, CM, strict=True))
    return "Chromosome\tPosition(bp)\tRate(cM/Mb)\tMap(cM)\n" + rows


def hapmap3_text():
    rate = np.r_[np.diff(CM) / np.diff(BP) * 1e6, 0.0]
    rows = "".join(f"{b} {r:.6f} {c}\n" for b, r, c in zip(BP, rate, CM, strict=True))
    return "position COMBINED_rate(cM/Mb) Genetic_Map(cM)\n" + rows


@pytest.fixture
def maps(tmp_path):
    out = {}
    out["plink"] = tmp_path / "map.map"
    out["plink"].write_text(plink_text("chr20", ids=["."] * len(BP)) + plink_text("21"))
    out["hapmap"] = tmp_path / "genetic_map_chr20.txt"
    out["hapmap"].write_text(hapmap_text())
    out["hapmap3"] = tmp_path / "genetic_map_chr20_b37.txt"
    out["hapmap3"].write_text(hapmap3_text())
    out["plink.gz"] = tmp_path / "map.map.gz"
    with gzip.open(out["plink.gz"], "wt") as f:
        f.write(plink_text())
    return out


def beagle_cm(pos):
    """Beagle's PlinkGenMap.genPos: linear between the two map points around a position, and from
    the first two (last two) points before the first (after the last) point."""
    out = []
    for x in np.asarray(pos, dtype=float):
        i = int(np.searchsorted(BP, x))
        if i < len(BP) and BP[i] == x:
            out.append(CM[i])
            continue
        i = min(max(i, 1), len(BP) - 1)
        a, b, fa, fb = BP[i - 1], BP[i], CM[i - 1], CM[i]
        out.append(fa + (x - a) / (b - a) * (fb - fa))
    return np.array(out)


POSITIONS = np.array([1, 5_000, 10_000, 30_000, 50_001, 51_000, 90_000, 399_999, 400_000, 750_000])


@pytest.mark.parametrize("fmt", ["plink", "hapmap", "hapmap3", "plink.gz"])
def test_map_formats_give_the_same_cm(maps, fmt):
    gmap = read_genetic_map(maps[fmt], "20")
    assert np.array_equal(gmap.bp, BP)
    np.testing.assert_allclose(gmap.cm, CM)
    np.testing.assert_allclose(gmap.cm_at(POSITIONS), beagle_cm(POSITIONS), atol=1e-12)


def test_sites_outside_the_map_are_extrapolated_as_beagle_does(maps):
    gmap = read_genetic_map(maps["plink"], "chr20")
    before, after = np.array([1, 9_999]), np.array([400_001, 1_000_000])
    slope_first = (CM[1] - CM[0]) / (BP[1] - BP[0])
    slope_last = (CM[-1] - CM[-2]) / (BP[-1] - BP[-2])
    np.testing.assert_allclose(gmap.cm_at(before), CM[0] + (before - BP[0]) * slope_first)
    np.testing.assert_allclose(gmap.cm_at(after), CM[-1] + (after - BP[-1]) * slope_last)
    # in particular not clamped to the end points, and not a ratio from position 0 (Minimac4's rule)
    assert gmap.cm_at(np.array([1]))[0] < 0 and gmap.cm_at(np.array([1_000_000]))[0] > CM[-1]


def test_no_map_is_one_cm_per_mb():
    np.testing.assert_allclose(site_cm(np.array([1_000_000, 2_500_000]), None), [1.0, 2.5])


def test_the_chromosome_is_chosen_by_either_name(maps):
    assert read_genetic_map(maps["plink"], "21").chrom == "21"
    with pytest.raises(InputError, match="no map points for chromosome 22"):
        read_genetic_map(maps["plink"], "22")


@pytest.mark.parametrize(
    "text,message",
    [
        ("20 . 0.1 2000\n20 . 0.2 1000\n", "positions not increasing"),
        ("20 . 0.3 1000\n20 . 0.2 2000\n", "genetic position decreases"),
        ("20 . x 1000\n", "is not a number"),
    ],
)
def test_bad_maps_are_named(tmp_path, text, message):
    path = tmp_path / "bad.map"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        read_genetic_map(path, "20")
    assert str(path) in str(e.value)


@pytest.mark.parametrize("scale,warned", [(0.01, True), (1.0, False), (100.0, True)])
def test_a_map_in_other_units_is_warned_about(tmp_path, caplog, scale, warned):
    """A map in Morgans passed every check, and the copying model ran on a 100 times shorter map."""
    path = tmp_path / "m.map"
    path.write_text("".join(f"20 . {scale * 1.2 * i:.6f} {1 + i * 1_000_000}\n" for i in range(6)))
    caplog.set_level("WARNING", logger="ragimpute")
    read_genetic_map(path, "20")
    assert ("check that the map is in cM" in caplog.text) == warned


def test_site_map_holds_the_cm_of_every_reference_site(demo_windows, tmp_path):
    """What Beagle, Minimac4 and the phaser read: a point at every site, the windows' cM, the
    reference's chromosome name; read back, it gives the same cM (nothing left to extrapolate)."""
    sites = pd.read_parquet(demo_windows / "sites.parquet")
    out = tmp_path / "sites.map"
    write_site_map(demo_windows, out)
    rows = pd.read_csv(out, sep="\t", header=None, names=["chrom", "id", "cm", "bp"])
    assert len(rows) == len(sites) and (rows["chrom"].astype(str) == "20").all()
    assert np.array_equal(rows["bp"], sites["pos"])
    back = read_genetic_map(out, "20")
    np.testing.assert_allclose(back.cm_at(sites["pos"].to_numpy()), sites["cm"], atol=1e-8)


def test_a_chromosome_without_records_is_the_panels_error_not_the_maps(
    demo, demo_split, maps, tmp_path
):
    """A contig the panel's header declares but holds no record of, with a map that lacks it too:
    the error named the map ("no map points"), not the panel."""
    import pysam

    from ragimpute.windows import run_window_stage

    with gzip.open(demo.vcf, "rt") as f:
        text = f.read().replace("#CHROM", "##contig=<ID=22,length=1000000>\n#CHROM", 1)
    plain = tmp_path / "panel.vcf"
    plain.write_text(text)
    panel = tmp_path / "panel.vcf.gz"
    pysam.tabix_compress(str(plain), str(panel))
    pysam.tabix_index(str(panel), preset="vcf")
    with pytest.raises(InputError, match="no biallelic SNV records on chromosome 22") as e:
        run_window_stage(panel, demo_split, "22", 64, 16, tmp_path / "w", genetic_map=maps["plink"])
    assert str(panel) in str(e.value) and "map" not in str(e.value).split(":")[0]


def test_window_stage_uses_the_map_in_either_format(demo, demo_split, maps, tmp_path):
    """The same map as PLINK and as HapMap gives the same cm column."""
    from ragimpute.windows import run_window_stage

    cms = []
    for fmt in ("plink", "hapmap"):
        out = tmp_path / fmt
        run_window_stage(demo.vcf, demo_split, "20", 64, 16, out, genetic_map=maps[fmt])
        cms.append(pd.read_parquet(out / "sites.parquet")["cm"].to_numpy())
    np.testing.assert_allclose(cms[0], cms[1], atol=1e-12)
    pos = pd.read_parquet(tmp_path / "plink" / "sites.parquet")["pos"].to_numpy()
    np.testing.assert_allclose(cms[0], beagle_cm(pos), atol=1e-12)


def test_write_plink_map_round_trip(tmp_path):
    write_plink_map(tmp_path / "m.map", "chr7", BP, CM)
    gmap = read_genetic_map(tmp_path / "m.map", "7")
    assert np.array_equal(gmap.bp, BP)
    np.testing.assert_allclose(gmap.cm, CM)


# -- the hotspot demo's map ------------------------------------------------------------------------


def test_demo_hotspot_map_is_the_simulated_one(tmp_path):
    from ragimpute.demo import DemoSpec, make_demo, plink_map_rows, recombination_map

    spec = DemoSpec(
        seed=2, n_samples=10, sequence_length=100_000, hotspots=4, hotspot_width_bp=1_000,
        hotspot_intensity=30.0,
    )  # fmt: skip
    rate_map = recombination_map(spec, 0)
    hot = rate_map.rate > spec.recombination_rate
    assert hot.sum() == 4 and np.allclose(rate_map.rate[hot], 30 * spec.recombination_rate)
    assert np.allclose(np.diff(rate_map.position)[hot], 1_000)
    expected_cm = 100 * spec.recombination_rate * (100_000 + 4 * 1_000 * 29)
    info = make_demo(spec, tmp_path / "panel.vcf.gz", tmp_path / "array.tsv")
    assert info["chromosomes"]["20"]["map_cm"] == pytest.approx(expected_cm)
    gmap = read_genetic_map(tmp_path / "genetic_map.map", "20")
    # VCF position x + 1 is msprime position x
    x = np.array([0, 10_000, 55_555, 99_999])
    np.testing.assert_allclose(gmap.cm_at(x + 1), 100 * rate_map.get_cumulative_mass(x))
    rows = plink_map_rows(rate_map, "20")
    assert rows["bp"].iloc[0] == 1 and rows["bp"].iloc[-1] == 100_001
    # the same seed gives the same map; without hotspots the map is uniform
    assert np.array_equal(recombination_map(spec, 0).position, rate_map.position)
    flat = recombination_map(DemoSpec(sequence_length=100_000), 0)
    assert flat.num_intervals == 1
