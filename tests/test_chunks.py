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


# -- sample batches: merged, the same VCF as one batch ---------------------------------------------


def test_batches_merged_equal_one_batch(tmp_path_factory, tmp_path):
    """Targets imputed in batches of samples and merged give the VCF of one batch, INFO included."""
    import gzip

    from impute_data import CHROM, shared_env

    from ragimpute.impute import impute_target, run_impute_stage
    from ragimpute.layout import Layout
    from ragimpute.ligate import merge_batches

    env = shared_env(tmp_path_factory)
    whole = tmp_path / "whole.vcf.gz"
    kw = dict(panel_vcf=env.panel, reference_splits=("train",), aligned_dir=tmp_path / "al")
    impute_target(env.results, CHROM, env.split, env.target, "copying", whole, **kw)
    layout = Layout(str(env.results))
    aligned = tmp_path / "al"
    h = __import__("json").loads((aligned / "alignment.json").read_text())["hash"]
    n = len(env.split_samples["test"])
    parts = []
    for i, (first, count) in enumerate([(0, 2), (2, n - 2)]):
        vcf = tmp_path / f"b{i}.vcf.gz"
        run_impute_stage(
            "copying", aligned / "alignment.json", aligned / "target.vcf.gz", env.windows,
            env.store, None, vcf, tmp_path / f"b{i}.json", panel_vcf=env.panel,
            states_dir=layout.states(CHROM, h), sample_batch=(first, count),
            stats_out=tmp_path / f"b{i}.stats.npz",
        )  # fmt: skip
        parts.append((vcf, tmp_path / f"b{i}.stats.npz"))
    merged = tmp_path / "merged.vcf.gz"
    merge_batches(parts, merged)

    def body(path):
        with gzip.open(path, "rt") as f:
            lines = f.read().splitlines()
        return [ln for ln in lines if not ln.startswith("##")]

    got, want = body(merged), body(whole)
    assert got[0] == want[0]  # #CHROM line: every sample, in order
    assert got == want  # every record, INFO AF/R2 and every sample's GT:DS:GP


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
    writes it; each record's GT says which chunk it came from."""
    import gzip

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["##fileformat=VCFv4.2\n", "##contig=<ID=20,length=10000>\n"]
    if prov:
        lines.append(f"##ragimpute_impute=<method=copying,{prov}>\n")
    if not_run:
        lines.append(f'##ragimpute_not_run=<method=beagle,reason="{not_run}">\n')
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO",
                            "FORMAT", *samples]) + "\n")  # fmt: skip
    gt = "0|1" if "c001" in str(path) else "1|0"
    for p in positions:
        lines.append(f"20\t{p}\t.\tA\tC\t.\tPASS\tIMP\tGT" + f"\t{gt}" * len(samples) + "\n")
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
    assert [(int(r[1]), r[9]) for r in rows] == [(100, "1|0"), (200, "1|0"), (300, "0|1"),
                                                 (400, "0|1"), (500, "0|1")]  # fmt: skip
    prov = [m for m in meta if m.startswith("##ragimpute_impute=")]
    assert prov == ["##ragimpute_impute=<chunk=20.c000,method=copying,mask_hash=aa>",
                    "##ragimpute_impute=<chunk=20.c001,method=copying,mask_hash=bb>"]  # fmt: skip
    assert (tmp_path / "20.vcf.gz.tbi").exists()


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
