"""Chunk planning: overlapping regions whose cores tile the chromosome exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pysam
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


# -- chunks over the panel's records: its span, and no chunk in a gap --------------------------------


def _has_record(positions):
    positions = np.asarray(positions)

    def has(a, b):
        i = np.searchsorted(positions, a)
        return bool(i < len(positions) and positions[i] <= b)

    return has


def check_records_tiled(units, positions):
    """Every record in exactly one core, within that chunk's region; no core without a record."""
    positions = np.asarray(positions)
    owner = np.full(len(positions), -1)
    for i, u in enumerate(units):
        in_core = (positions >= u.core_start) & (positions <= u.core_end)
        assert in_core.any(), f"{u.name}: no record in its core"
        assert (owner[in_core] == -1).all(), "a record in two cores"
        owner[in_core] = i
        assert ((positions[in_core] >= u.start) & (positions[in_core] <= u.end)).all()
    assert (owner >= 0).all(), f"records in no core: {positions[owner < 0][:5]}"
    for a, b in zip(units[:-1], units[1:], strict=True):
        assert b.core_start == a.core_end + 1 and a.start < b.start and a.end <= b.end
    assert units[0].core_start == positions[0] and units[-1].core_end == positions[-1]
    assert [u.name for u in units] == [unit_name(units[0].chrom, i) for i in range(len(units))]


@pytest.mark.parametrize(
    "gap", [(1_000_000, 1_300_000), (1_000_000, 2_000_000), (800_000, 6_000_000)]
)
@pytest.mark.parametrize("length,overlap", [(500_000, 100_000), (400_000, 0), (1_000_000, 250_000)])
def test_no_chunk_in_a_gap_and_the_cores_tile_every_record(gap, length, overlap):
    """A gap (a centromere) of 0.3 to 5.2 Mb: the chunks within it are not made, their neighbours'
    cores meet over it, and every record is in exactly one core."""
    rng = np.random.default_rng(1)
    pos = np.unique(rng.integers(20_000, 8_000_000, 20_000))
    pos = pos[(pos < gap[0]) | (pos > gap[1])]
    units = plan_chunks("20", int(pos[0]), int(pos[-1]), length, overlap, "bp", None,
                        has_record=_has_record(pos))  # fmt: skip
    check_records_tiled(units, pos)
    every = plan_chunks("20", int(pos[0]), int(pos[-1]), length, overlap, "bp")
    inside = [u for u in every if gap[0] < u.core_start and u.core_end < gap[1]]
    assert len(units) == len(every) - len(inside)
    assert inside or gap[1] - gap[0] < 2 * (length - overlap)  # a long gap holds a core


def test_chunks_in_cm_leave_out_a_gap_the_map_is_flat_over():
    """The genetic map flat over a 2 Mb centromere: in cM the gap is short, in bp long."""
    g = GeneticMap(
        "map", "20", np.array([1, 3_000_000, 5_000_000, 9_000_000]), np.array([0.0, 3, 3.1, 7.1])
    )
    pos = np.r_[np.arange(10_000, 3_000_000, 997), np.arange(5_000_000, 9_000_000, 997)]
    units = plan_chunks("20", int(pos[0]), int(pos[-1]), 0.5, 0.1, "cm", g, _has_record(pos))
    check_records_tiled(units, pos)


def test_records_only_in_overlaps_and_isolated_records():
    """A chunk whose core holds no record but whose overlap does is left out too (its records are
    its neighbours'); one record alone between gaps gets a chunk."""
    pos = np.r_[np.arange(1, 1_000_000, 1000), [1_460_000], np.arange(3_000_000, 4_000_000, 1000)]
    units = plan_chunks("20", 1, int(pos[-1]), 500_000, 100_000, "bp", None, _has_record(pos))
    check_records_tiled(units, pos)
    pos = np.r_[np.arange(1, 1_000_000, 1000), np.arange(1_002_000, 2_000_000, 1000)]
    units = plan_chunks("20", 1, int(pos[-1]), 500_000, 100_000, "bp", None, _has_record(pos))
    assert len(units) == len(plan_chunks("20", 1, int(pos[-1]), 500_000, 100_000, "bp"))


def _panel(tmp_path, positions, name="panel", extra=(), form="tbi", length=64_444_167):
    """A panel VCF of SNVs at ``positions`` (and the ``extra`` records), its ##contig saying
    ``length``: bgzipped and tabix-indexed (tbi), CSI-indexed (csi), a BCF (bcf), or unindexed."""
    from conftest import vcf_text, write_vcf

    recs = [("20", int(p), "A", "C", "PASS", ["0|1", "1|0"]) for p in positions]
    recs = sorted([*recs, *extra], key=lambda r: r[1])
    text = vcf_text(
        recs, ["S1", "S2"], contigs=(), extra_header=(f"##contig=<ID=20,length={length}>",)
    )
    path = write_vcf(tmp_path / f"{name}.vcf.gz", text, "bgzip", index=form == "tbi")
    if form == "csi":
        pysam.tabix_index(str(path), preset="vcf", csi=True, force=True)
    if form == "bcf":
        bcf = tmp_path / f"{name}.bcf"
        pysam.bcftools.view("-Ob", "-o", str(bcf), str(path), catch_stdout=False)
        pysam.bcftools.index(str(bcf))
        return bcf
    return path


@pytest.mark.parametrize("form", ["tbi", "csi", "bcf", "unindexed"])
def test_panel_chunks_span_the_records_of_a_region_subset_and_skip_its_gap(tmp_path, form):
    """A panel cut to 20:2-3.5 Mb with a 1 Mb hole, its ##contig still the whole chromosome's: chunks
    from its first to its last biallelic SNV (an indel before, a filtered SNV and a multi-allelic
    record after, and an indel in the hole do not count), none in the hole; the same through
    every kind of index, and without one (read once, then from the cache)."""
    import pysam.bcftools  # noqa: F401

    from ragimpute.chunks import plan_panel_chunks

    pos = np.r_[np.arange(2_000_000, 2_500_000, 701), np.arange(3_500_000, 3_900_000, 701)]
    extra = [
        ("20", 1_500_000, "AT", "A", "PASS", ["0|1", "1|0"]),
        ("20", 3_000_000, "AT", "A", "PASS", ["0|1", "1|0"]),
        ("20", 3_950_000, "A", "C", "LowQual", ["0|1", "1|0"]),
        ("20", 3_960_000, "A", "C,G", "PASS", ["0|1", "2|0"]),
    ]
    path = _panel(tmp_path, pos, extra=extra, form=form)
    cache = tmp_path / "cache"
    units = plan_panel_chunks(str(path), "chr20", 0.3, 0.05, "cm", cache_dir=str(cache))
    check_records_tiled(units, pos)
    assert (units[0].start, units[-1].end) == (pos[0], pos[-1])
    assert not any(2_600_000 <= u.start and u.end <= 3_400_000 for u in units)
    assert len(units) == 5  # of 8 over the span
    assert (cache.exists() and len(list(cache.iterdir())) == 1) == (form == "unindexed")
    assert plan_panel_chunks(str(path), "chr20", 0.3, 0.05, "cm", cache_dir=str(cache)) == units
    # with pass_only off, the filtered SNV is a record: it ends the span
    units = plan_panel_chunks(
        str(path), "20", 0.3, 0.05, "cm", pass_only=False, cache_dir=str(cache)
    )
    assert units[-1].core_end == 3_950_000
    # a span shorter than a chunk is one unit, the whole chromosome
    (u,) = plan_panel_chunks(str(path), "20", 5.0, 1.0, "cm", cache_dir=str(cache))
    assert u.name == "20"


def test_the_unindexed_cache_follows_the_file(tmp_path):
    from ragimpute.chunks import plan_panel_chunks

    path = _panel(tmp_path, np.arange(1000, 900_000, 997), form="unindexed")
    cache = tmp_path / "cache"
    a = plan_panel_chunks(str(path), "20", 0.3, 0.05, "cm", cache_dir=str(cache))
    _panel(tmp_path, np.arange(1000, 1_900_000, 997), form="unindexed")  # rewritten: new size
    b = plan_panel_chunks(str(path), "20", 0.3, 0.05, "cm", cache_dir=str(cache))
    assert a[-1].core_end < 900_000 < b[-1].core_end


def test_the_unindexed_cache_leaves_no_temporary_after_an_interruption(tmp_path, monkeypatch):
    """The cache is written when Snakemake builds the DAG: a Ctrl-C there left a
    ``positions-*.<pid>.tmp.npz`` behind, and every killed run another. The temporary is removed
    when interrupted, and those of killed processes when the cache is written again."""
    from ragimpute import vcf_io
    from ragimpute.atomic import _host
    from ragimpute.chunks import plan_panel_chunks

    path = _panel(tmp_path, np.arange(1000, 900_000, 997), form="unindexed")
    cache = tmp_path / "cache"
    real = np.savez

    def interrupted(file, **arrays):
        real(file, **arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(vcf_io.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plan_panel_chunks(str(path), "20", 0.3, 0.05, "cm", cache_dir=str(cache))
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(vcf_io.np, "savez", real)
    plan_panel_chunks(str(path), "20", 0.3, 0.05, "cm", cache_dir=str(cache))
    (cached,) = cache.iterdir()
    cached.unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (cache / f".{cached.name}.tmp~{_host()}~{dead.pid}~abcdefgh.npz").write_bytes(b"half")
    plan_panel_chunks(str(path), "20", 0.3, 0.05, "cm", cache_dir=str(cache))
    assert list(cache.iterdir()) == [cached]


def test_a_chunk_without_panel_records_says_where_it_read(tmp_path):
    """The window stage's error for a chunk names its region and says there were no records at
    all, not an empty "(skipped: )"; a job on a chunk prefixes its name."""
    from types import SimpleNamespace

    from ragimpute.smk import _chunk_prefix
    from ragimpute.vcf_io import read_panel

    path = _panel(tmp_path, np.arange(1000, 100_000, 500))
    with pytest.raises(InputError) as e:
        read_panel(path, "20", region=(200_000, 300_000))
    msg = str(e.value)
    assert "no biallelic SNV records in 20:200000-300000, this chunk's region" in msg
    assert "it holds no records at all" in msg and "skipped: )" not in msg
    assert _chunk_prefix(SimpleNamespace(wildcards=SimpleNamespace(unit="20.c004"))) == (
        "chunk 20.c004: "
    )
    assert _chunk_prefix(SimpleNamespace(wildcards=SimpleNamespace(unit="20"))) == ""
    assert _chunk_prefix(SimpleNamespace(wildcards=SimpleNamespace())) == ""


def test_a_target_without_records_in_a_chunk_says_so(tmp_path):
    """A chunk where the panel has sites but the target has no record: the error names the region
    and says to lengthen the chunks, not to lift the target over; records that match no site
    still point at the genome build."""
    import pandas as pd
    from conftest import vcf_text, write_vcf

    from ragimpute.targets import read_target

    recs = [("20", p, "A", "C", "PASS", ["0|1"]) for p in (1000, 2000, 900_000)]
    target = write_vcf(tmp_path / "t.vcf.gz", vcf_text(recs, ["T1"]), "bgzip", index=True)
    sites = pd.DataFrame({"chrom": "20", "pos": [300_500, 500_000], "ref": "A", "alt": "C"})
    with pytest.raises(InputError) as e:
        read_target(target, "20", sites, region=(300_000, 700_000))
    msg = str(e.value)
    assert "the target has no records in 20:300000-700000, this chunk's region" in msg
    assert "chunks.length" in msg and "liftover" not in msg
    with pytest.raises(InputError, match=r"none of its 3 SNV records on chromosome 20.*liftover"):
        read_target(target, "20", sites)
    with pytest.raises(
        InputError, match=r"none of its 1 SNV records in 20:800000-950000, this chunk"
    ):
        read_target(target, "20", sites, region=(800_000, 950_000))


# -- sample batches: merged, the same VCF as one batch ---------------------------------------------


@pytest.mark.parametrize("hds", [False, True])
def test_batches_merged_equal_one_batch(tmp_path_factory, tmp_path, hds):
    """Targets imputed in batches of samples and merged give the VCF of one batch, INFO included
    (and with impute.hds each haplotype's dosage)."""
    import gzip

    from impute_data import CHROM, shared_env

    from ragimpute.impute import impute_target, run_impute_stage
    from ragimpute.layout import Layout
    from ragimpute.ligate import merge_batch_stage

    env = shared_env(tmp_path_factory)
    whole = tmp_path / "whole.vcf.gz"
    kw = dict(panel_vcf=env.panel, reference_splits=("train",), aligned_dir=tmp_path / "al")
    impute_target(env.results, CHROM, env.split, env.target, "copying", whole, hds=hds, **kw)
    layout = Layout(str(env.results))
    aligned = tmp_path / "al"
    h = json.loads((aligned / "alignment.json").read_text())["hash"]
    n = len(env.split_samples["test"])
    parts = []
    for i, (first, count) in enumerate([(0, 2), (2, n - 2)]):
        vcf = tmp_path / f"b{i}.vcf.gz"
        run_impute_stage(
            "copying", aligned / "alignment.json", aligned / "target.vcf.gz", env.windows,
            env.store, None, vcf, tmp_path / f"b{i}.json", panel_vcf=env.panel,
            states_dir=layout.states(CHROM, h), sample_batch=(first, count),
            stats_out=tmp_path / f"b{i}.stats.npz", hds=hds,
        )  # fmt: skip
        parts.append((vcf, tmp_path / f"b{i}.stats.npz"))
    merged = tmp_path / "merged.vcf.gz"
    report = merge_batch_stage(*map(list, zip(*parts, strict=True)), merged, tmp_path / "m.json")

    def body(path):
        with gzip.open(path, "rt") as f:
            lines = f.read().splitlines()
        return [ln for ln in lines if not ln.startswith("##")]

    got, want = body(merged), body(whole)
    assert got[0] == want[0]  # #CHROM line: every sample, in order
    assert got == want  # every record, INFO AF/R2 and every sample's GT:DS:GP (or GT:DS:HDS:GP)
    assert {r.split("\t")[8] for r in got[1:]} == {"GT:DS:HDS:GP" if hds else "GT:DS:GP"}

    # every batch's provenance line (its own estimated error rate), named by its batch
    def impute_lines(path):
        with gzip.open(path, "rt") as f:
            return [ln for ln in f if ln.startswith("##ragimpute_impute=<")]

    own = [impute_lines(v)[0] for v, _ in parts]
    kept = impute_lines(merged)
    assert kept == [own[i].replace("<", f"<batch=b{i},", 1) for i in range(2)]
    errors = [json.loads((tmp_path / f"b{i}.json").read_text())["error"] for i in range(2)]
    assert [b["error"] for b in report["batches"]] == errors
    assert "error" not in report and "error" not in report["engine"]


def test_chunks_ligated_keep_hds_as_one_piece(tmp_path_factory, tmp_path):
    """A chromosome imputed with impute.hds, cut into two overlapping chunks, the second with some
    samples' haplotypes the other way round (GT and HDS, as a phaser run on the chunk alone may put
    them): ligated, the records are those of the one piece, HDS included."""
    import gzip

    from impute_data import CHROM, shared_env

    from ragimpute.impute import impute_target
    from ragimpute.ligate import ligate

    env = shared_env(tmp_path_factory)
    whole = tmp_path / "whole.vcf.gz"
    impute_target(env.results, CHROM, env.split, env.target, "copying", whole, hds=True,
                  panel_vcf=env.panel, reference_splits=("train",), aligned_dir=tmp_path / "al")  # fmt: skip
    with gzip.open(whole, "rt") as f:
        lines = f.read().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    records = [ln.split("\t") for ln in lines if not ln.startswith("#")]
    n = len(records)
    swap = {0, 3}

    def swapped(column):
        gt, ds, hds, gp = column.split(":")
        return ":".join([gt[::-1], ds, ",".join(hds.split(",")[::-1]), gp])

    def chunk(name, rows, swap=()):
        path = tmp_path / name / "copying.vcf.gz"
        path.parent.mkdir()
        text = [r[:9] + [swapped(c) if j in swap else c for j, c in enumerate(r[9:])] for r in rows]
        with gzip.open(path, "wt") as f:
            f.write("\n".join(header + ["\t".join(r) for r in text]) + "\n")
        return path

    a = chunk("20.c000", records[: 6 * n // 10])
    b = chunk("20.c001", records[4 * n // 10 :], swap)
    core_end = int(records[n // 2][1])
    out = tmp_path / "20.vcf.gz"
    info = ligate([(a, 1, core_end), (b, core_end + 1, 10**9)], out)
    assert info["phase_joins"][0]["samples_swapped"] == len(swap)
    assert _records(out)[1] == records
    assert sum(h.startswith("##FORMAT=<ID=HDS,") for h in _records(out)[0]) == 1


# -- the workflow: chunks ligated, against the chromosome in one piece ------------------------------


@pytest.mark.slow
def test_ligated_chunks_match_the_unchunked_chromosome(tiny_finished, tiny_chunked_finished):
    """The tiny demo in two chunks (100 kb overlap) and two sample batches, against one piece: the
    same records; allele-frequency dosages identical; the copying model's within a small tolerance,
    the differences near the join (measured: mean |dDS| 0.0008 overall, 0.003 within 20 kb of it)."""
    import pysam.bcftools
    from workflow_runs import TINY_RESULTS

    def ds(path):
        rows = [
            r.split("\t")
            for r in pysam.bcftools.query("-f", "%POS[\t%DS]\n", str(path)).splitlines()
        ]
        return np.array([int(r[0]) for r in rows]), np.array(
            [[float(x) for x in r[1:]] for r in rows]
        )

    runs = {
        "whole": tiny_finished / TINY_RESULTS,
        "chunked": tiny_chunked_finished / TINY_RESULTS,
    }
    chunked = runs["chunked"]
    assert sorted(p.name for p in (chunked / "impute").iterdir()) == ["20", "20.c000", "20.c001"]
    assert (chunked / "impute" / "20.c000" / "batches" / "copying.b001.vcf.gz").exists()
    # the ligated chromosome has its report beside it, as an unchunked one has
    lig = json.loads((chunked / "impute" / "20" / "copying.json").read_text())
    assert lig["chunks"] == 2 and len(lig["phase_joins"]) == 1
    assert [Path(p).parent.name for p in lig["chunk_reports"]] == ["20.c000", "20.c001"]
    for method, tolerance in (("af", 0.0), ("copying", 0.005)):
        pos_w, ds_w = ds(runs["whole"] / "impute" / "20" / f"{method}.vcf.gz")
        pos_c, ds_c = ds(chunked / "impute" / "20" / f"{method}.vcf.gz")
        assert np.array_equal(pos_w, pos_c)  # every site once, in order
        diff = np.abs(ds_w - ds_c)
        assert diff.mean() <= tolerance, (method, diff.mean())
        far = np.abs(pos_w - 150_000) > 20_000  # the cores meet at 150 kb
        assert diff[far].mean() <= tolerance / 2, (method, diff[far].mean())
    scores = {}
    for name, root in runs.items():
        table = (root / "evaluation" / "comparison.tsv").read_text().splitlines()
        scores[name] = {
            ln.split("\t")[0]: float(ln.split("\t")[4]) for ln in table if "\tall\t" in ln
        }
    assert abs(scores["whole"]["copying"] - scores["chunked"]["copying"]) < 0.002


# -- ligating chunk VCFs --------------------------------------------------------------------------


def _chunk_vcf(path, samples, positions, prov=None, not_run=None):
    """A gzipped chunk VCF as impute (``prov``) or external_tool.sh's placeholder (``not_run``)
    writes it; each record's ID says which chunk it came from."""
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["##fileformat=VCFv4.2\n", "##contig=<ID=20,length=10000>\n"]
    if prov:
        lines.append(f"##ragimpute_impute=<method=copying,{prov}>\n")
    if not_run:
        lines.append(f'##ragimpute_not_run=<method=beagle,reason="{not_run}">\n')
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO",
                            "FORMAT", *samples]) + "\n")  # fmt: skip
    chunk = path.parent.name
    for p in positions:
        lines.append(f"20\t{p}\t{chunk}\tA\tC\t.\tPASS\tIMP\tGT" + "\t0|1" * len(samples) + "\n")
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    return path


def _records(path):
    import gzip

    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    return [x for x in lines if x.startswith("##")], [x.split("\t") for x in lines
                                                      if not x.startswith("#")]  # fmt: skip


def test_ligate_takes_each_site_from_its_core_and_keeps_every_chunks_provenance(tmp_path):
    from ragimpute.ligate import ligate

    a = _chunk_vcf(
        tmp_path / "20.c000" / "m.vcf.gz", ["s1", "s2"], [100, 200, 300, 400], "mask_hash=aa"
    )
    b = _chunk_vcf(tmp_path / "20.c001" / "m.vcf.gz", ["s1", "s2"], [300, 400, 500], "mask_hash=bb")
    out = tmp_path / "20.vcf.gz"
    info = ligate([(a, 1, 250), (b, 251, 10_000)], out)
    assert info["records"] == [2, 3]
    meta, rows = _records(out)
    assert [(int(r[1]), r[2]) for r in rows] == [(100, "20.c000"), (200, "20.c000"),
                                                 (300, "20.c001"), (400, "20.c001"),
                                                 (500, "20.c001")]  # fmt: skip
    prov = [m for m in meta if m.startswith("##ragimpute_impute=")]
    assert prov == ["##ragimpute_impute=<chunk=20.c000,method=copying,mask_hash=aa>",
                    "##ragimpute_impute=<chunk=20.c001,method=copying,mask_hash=bb>"]  # fmt: skip
    assert (tmp_path / "20.vcf.gz.tbi").exists()


@pytest.mark.parametrize("cut", ["mid_stream", "eof_block"])
def test_ligate_refuses_a_chunk_vcf_cut_short(tmp_path, cut):
    """A chunk VCF cut short was a raw EOFError; cut at a BGZF block boundary (the end-of-file block
    gone) it was read as a VCF with fewer records. Either is named, with the rerun that makes it."""
    from ragimpute.errors import ArtifactError
    from ragimpute.ligate import ligate

    a = _chunk_vcf(tmp_path / "20.c000" / "m.vcf.gz", ["s1", "s2"], [100, 200, 300], "mask_hash=aa")
    b = _chunk_vcf(tmp_path / "20.c001" / "m.vcf.gz", ["s1", "s2"], [300, 400], "mask_hash=bb")
    if cut == "eof_block":  # a BGZF file (ligate writes one) without its last, empty block
        bgzf = tmp_path / "bgzf" / "m.vcf.gz"
        bgzf.parent.mkdir()
        ligate([(b, 1, 10_000)], bgzf)
        b.write_bytes(bgzf.read_bytes()[:-28])
    else:
        data = b.read_bytes()
        b.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError) as e:
        ligate([(a, 1, 250), (b, 251, 10_000)], tmp_path / "20.vcf.gz")
    assert str(b) in str(e.value) and "--forcerun impute" in str(e.value)
    assert not (tmp_path / "20.vcf.gz").exists()


def test_merging_batches_refuses_a_stats_file_cut_short(tmp_path):
    """A batch's stats file cut short was a raw BadZipFile traceback."""
    import numpy as np

    from ragimpute.errors import ArtifactError
    from ragimpute.ligate import merge_batches

    a = _chunk_vcf(tmp_path / "a" / "m.vcf.gz", ["s1"], [100, 200], "mask_hash=aa")
    stats = tmp_path / "a.stats.npz"
    np.savez(stats, pos=np.array([100, 200]))
    stats.write_bytes(stats.read_bytes()[:40])
    with pytest.raises(ArtifactError) as e:
        merge_batches([(a, stats)], tmp_path / "merged.vcf.gz")
    assert str(stats) in str(e.value) and "--forcerun impute" in str(e.value)


def test_a_baseline_that_did_not_run_on_one_chunk_is_left_out_of_the_chromosome(tmp_path):
    """Beagle skips a chunk that types too few sites (a placeholder VCF without samples); the
    chromosome's VCF is then a placeholder naming that chunk, and evaluation scores it as not run."""
    from ragimpute.evaluate import not_run_reason
    from ragimpute.ligate import ligate

    a = _chunk_vcf(tmp_path / "20.c000" / "beagle.vcf.gz", ["s1"], [100, 200])
    why = "the target types 1 site(s) it can take; beagle needs at least 2"
    b = _chunk_vcf(tmp_path / "20.c001" / "beagle.vcf.gz", [], [], not_run=why)
    c = _chunk_vcf(tmp_path / "20.c002" / "beagle.vcf.gz", ["s1"], [900])
    out = tmp_path / "20.vcf.gz"
    info = ligate([(a, 1, 250), (b, 251, 800), (c, 801, 10_000)], out)
    assert not_run_reason(out) == f"chunk 20.c001: {why}" == info["not_run"]
    meta, rows = _records(out)
    assert rows == [] and "##ragimpute_not_run=<method=beagle," in "\n".join(meta)
    # samples that differ between chunks that both ran are still an error
    d = _chunk_vcf(tmp_path / "20.c003" / "beagle.vcf.gz", ["s9"], [950])
    with pytest.raises(Exception, match="other samples"):
        ligate([(a, 1, 250), (d, 251, 10_000)], tmp_path / "x.vcf.gz")


def _phased_chunk(path, haps, positions, lo, hi, swap=(), fmt="GT:DS"):
    """A chunk VCF of the haplotypes ``haps`` (sites, samples, 2) at the sites from ``lo`` to ``hi``
    (indices), the samples in ``swap`` written the other way round, as a phaser run on the chunk alone
    may put them; with ``fmt`` GT:DS:HDS the haplotype dosages too."""
    import gzip

    n = haps.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["##fileformat=VCFv4.2\n", "##contig=<ID=20,length=100000>\n",
             "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT",
                        *[f"s{j}" for j in range(n)]]) + "\n"]  # fmt: skip
    for i in range(lo, hi + 1):
        fields = []
        for j in range(n):
            a, b = haps[i, j][::-1] if j in swap else haps[i, j]
            field = f"{a}|{b}:{a + b}"
            if "HDS" in fmt:
                field += f":{a}.000,{b}.000"
            fields.append(field)
        lines.append(
            f"20\t{positions[i]}\t.\tA\tC\t.\tPASS\tIMP\t{fmt}\t" + "\t".join(fields) + "\n"
        )
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    return path


@pytest.mark.parametrize("fmt", ["GT:DS", "GT:DS:HDS"])
def test_ligate_puts_each_chunks_haplotypes_the_way_round_of_the_chunk_before(tmp_path, fmt):
    """Each chunk's targets are phased on their own, so a sample's haplotypes can come out swapped
    from one chunk to the next; the ligated VCF puts them back in line through the overlap, so
    that each haplotype is one haplotype along the chromosome (as bcftools concat --ligate)."""
    from ragimpute.ligate import ligate

    rng = np.random.default_rng(3)
    sites, n = 90, 6
    haps = rng.integers(0, 2, size=(sites, n, 2))
    positions = [100 * (i + 1) for i in range(sites)]
    # chunks of sites 0-39, 30-69, 60-89; cores 0-34, 35-64, 65-89; chunk 1 swaps samples 1 and 2,
    # chunk 2 swaps samples 2 and 4 (relative to the truth, not to chunk 1)
    a = _phased_chunk(tmp_path / "20.c000" / "m.vcf.gz", haps, positions, 0, 39, (), fmt)
    b = _phased_chunk(tmp_path / "20.c001" / "m.vcf.gz", haps, positions, 30, 69, (1, 2), fmt)
    c = _phased_chunk(tmp_path / "20.c002" / "m.vcf.gz", haps, positions, 60, 89, (2, 4), fmt)
    out = tmp_path / "20.vcf.gz"
    info = ligate([(a, 1, 3500), (b, 3501, 6500), (c, 6501, 100_000)], out)
    assert info["records"] == [35, 30, 25]
    assert [j["samples_swapped"] for j in info["phase_joins"]] == [2, 2]
    _, rows = _records(out)
    got = np.array([[[int(x) for x in g.split(":")[0].split("|")] for g in r[9:]] for r in rows])
    assert np.array_equal(got, haps)
    if "HDS" in fmt:
        hds = np.array([[[float(x) for x in g.split(":")[2].split(",")] for g in r[9:]]
                        for r in rows])  # fmt: skip
        assert np.array_equal(hds, haps)
    # dosages are not touched
    assert [r[9].split(":")[1] for r in rows] == [str(h.sum()) for h in haps[:, 0]]
    # bcftools reads it all
    if shutil.which("bcftools"):
        r = subprocess.run(["bcftools", "view", "-H", str(out)], capture_output=True, text=True)
        assert r.returncode == 0 and len(r.stdout.splitlines()) == sites


def test_ligate_decides_on_the_typed_sites_not_on_imputed_ties(tmp_path):
    """An imputed heterozygote can be a tie written the same way round in every chunk whatever the
    phase (the allele-frequency method: GT 1|0 wherever P(ALT) is equal on both haplotypes). The
    typed sites, which carry the phaser's phase, decide, however many such ties the overlap has."""
    import gzip

    from ragimpute.ligate import ligate

    rng = np.random.default_rng(5)
    sites, n = 90, 4
    haps = rng.integers(0, 2, size=(sites, n, 2))
    haps[::3, :, 0], haps[::3, :, 1] = 0, 1  # a typed heterozygote every third site
    positions = [100 * (i + 1) for i in range(sites)]

    def chunk(name, lo, hi, swap):
        path = tmp_path / name / "af.vcf.gz"
        path.parent.mkdir()
        lines = ["##fileformat=VCFv4.2\n", "#" + "\t".join(["CHROM", "POS", "ID", "REF", "ALT",
                 "QUAL", "FILTER", "INFO", "FORMAT", *[f"s{j}" for j in range(n)]]) + "\n"]  # fmt: skip
        for i in range(lo, hi + 1):
            if i % 3:  # imputed: a tie, the same in every chunk
                lines.append(f"20\t{positions[i]}\t.\tA\tC\t.\tPASS\tAF=0.5;IMP\tGT"
                             + "\t1|0" * n + "\n")  # fmt: skip
                continue
            gts = [f"{b}|{a}" if j in swap else f"{a}|{b}" for j, (a, b) in enumerate(haps[i])]
            lines.append(f"20\t{positions[i]}\t.\tA\tC\t.\tPASS\tAF=0.5;TYPED\tGT\t"
                         + "\t".join(gts) + "\n")  # fmt: skip
        with gzip.open(path, "wt") as f:
            f.writelines(lines)
        return path

    a = chunk("20.c000", 0, 39, ())
    b = chunk("20.c001", 30, 69, (0, 3))
    out = tmp_path / "20.vcf.gz"
    info = ligate([(a, 1, 3500), (b, 3501, 100_000)], out)
    assert info["phase_joins"][0]["samples_swapped"] == 2
    _, rows = _records(out)
    typed = [r for r in rows if r[7].endswith("TYPED")]
    assert all(g == "0|1" for r in typed for g in r[9:])
