"""The impute stage: a valid, indexed VCF with consistent GT/DS/GP and INFO, aligned targets, bad inputs."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pysam
import pytest
from impute_data import (
    CHROM,
    HDS_SUM_OF_DS,
    check_hds,
    foreign_results,
    imputed_records,
    recorded_writes,
    shared_env,
    vcf_lines,
    without_hds,
    write_bgzip,
    write_vcf,
)

from ragimpute.cli import main as cli_main
from ragimpute.errors import ArtifactError, InputError
from ragimpute.impute import PREDICTOR_FACTORIES, impute_target
from ragimpute.tokens import MASK
from ragimpute.vcf_write import STATS_SCALE, format_records, genotype_codes

HAS_BCFTOOLS = shutil.which("bcftools") is not None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared_env(tmp_path_factory)


@pytest.mark.skipif(not HAS_BCFTOOLS, reason="bcftools is not installed")
def test_reference_vcf_is_the_panel_at_the_windowed_sites(env, tmp_path, monkeypatch):
    """Beagle's and Minimac4's reference, written a few records at a time: the same file as written
    in one block, and the train samples' phased genotypes at every windowed site as bcftools reads
    them from the panel. A panel that no longer matches the windows is refused and nothing is
    written."""
    import pysam
    import pysam.bcftools

    import ragimpute.vcf_io
    from ragimpute.targets import write_reference_vcf

    monkeypatch.setattr(ragimpute.vcf_io, "_CHUNK_RECORDS", 7)
    out = tmp_path / "reference.vcf.gz"
    info = write_reference_vcf(env.panel, env.split, env.windows, CHROM, out)
    assert info["sites"] == len(env.sites) > 100
    header, records = vcf_lines(out)
    env_header, env_records = vcf_lines(env.reference)  # env's was written in one block
    undated = lambda h: [x for x in h if not x.startswith("##filedate=")]  # noqa: E731 (midnight)
    assert undated(header) == undated(env_header) and records == env_records
    train = env.split_samples["train"]
    at = tmp_path / "sites.tsv"
    at.write_text("".join(f"{CHROM}\t{p}\n" for p in env.sites["pos"]))
    fmt = "%POS\t%REF\t%ALT[\t%GT]\n"
    want = pysam.bcftools.query("-s", ",".join(train), "-T", str(at), "-f", fmt, str(env.panel))
    assert pysam.bcftools.query("-f", fmt, str(out)) == want
    with pysam.VariantFile(str(out)) as vf:
        assert list(vf.header.samples) == train
    # the panel without one windowed record: the windows are stale
    header, records = vcf_lines(env.panel)
    other = write_bgzip(tmp_path / "other.vcf.gz", header, records[:50] + records[51:])
    pysam.tabix_index(str(other), preset="vcf", force=True)
    with pytest.raises(InputError, match="window stage is stale"):
        write_reference_vcf(other, env.split, env.windows, CHROM, tmp_path / "stale.vcf.gz")
    assert not list(tmp_path.glob("stale*"))


def run(env, target, out, method="retrieval", **kw):
    kw.setdefault("options", {"k": 16})
    kw.setdefault("panel_vcf", env.panel)
    kw.setdefault("reference_splits", ("train",))  # the targets are the panel's test samples
    return impute_target(env.results, CHROM, env.split, target, method, out, **kw)


@pytest.fixture(scope="module")
def clean(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "retrieval.vcf.gz"
    report = run(env, env.target, out)
    return out, report


def body(path):
    return vcf_lines(path)[1]


# -- the output VCF --------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_BCFTOOLS, reason="bcftools is not installed")
def test_output_passes_bcftools_view_and_stats(env, clean):
    out, _ = clean
    view = subprocess.run(["bcftools", "view", "-H", str(out)], capture_output=True, text=True)
    assert view.returncode == 0, view.stderr
    assert len(view.stdout.splitlines()) == len(env.sites)
    assert "[W::" not in view.stderr and "[E::" not in view.stderr, view.stderr
    stats = subprocess.run(["bcftools", "stats", str(out)], capture_output=True, text=True)
    assert stats.returncode == 0, stats.stderr
    sn = {
        ln.split("\t")[2]: ln.split("\t")[3]
        for ln in stats.stdout.splitlines()
        if ln.startswith("SN")
    }
    assert int(sn["number of records:"]) == len(env.sites)
    assert int(sn["number of SNPs:"]) == len(env.sites)
    assert int(sn["number of samples:"]) == len(env.split_samples["test"])
    # Region queries use the index: the file is sorted and the .tbi is current.
    sites = env.sites
    a, b = int(sites["pos"].iloc[100]), int(sites["pos"].iloc[199])
    region = subprocess.run(
        ["bcftools", "view", "-H", "-r", f"{CHROM}:{a}-{b}", str(out)],
        capture_output=True,
        text=True,
    )
    assert region.returncode == 0 and len(region.stdout.splitlines()) == 100


def test_every_reference_site_with_reference_alleles_in_order(env, clean):
    rec = imputed_records(clean[0])
    sites = env.sites
    assert np.array_equal(rec["pos"], sites["pos"].to_numpy())
    assert rec["ref"] == list(sites["ref"]) and rec["alt"] == list(sites["alt"])
    assert rec["samples"] == env.split_samples["test"]


def test_ds_gp_gt_consistent(clean):
    rec = imputed_records(clean[0])
    ds, gp, gt = rec["ds"], rec["gp"], rec["gt"]
    assert ds.min() >= 0 and ds.max() <= 2
    assert np.allclose(gp.sum(axis=-1), 1.0, atol=1e-9)
    assert np.allclose(ds, gp[..., 1] + 2 * gp[..., 2], atol=0.0025)
    count = gt.sum(axis=-1)
    # The called genotype is the most probable one (up to the printed rounding).
    chosen = np.take_along_axis(gp, count[..., None], axis=-1)[..., 0]
    assert (chosen >= gp.max(axis=-1) - 0.0015).all()
    assert (ds[count == 1] > 0).all()  # a heterozygote call is never at DS 0


def test_typed_sites_keep_observed_genotypes(env, clean):
    rec = imputed_records(clean[0])
    _, target = vcf_lines(env.target)
    pos_index = {int(p): i for i, p in enumerate(rec["pos"])}
    for r in target:
        i = pos_index[int(r[1])]
        observed = [tuple(int(x) for x in g.split("|")) for g in r[9:]]
        assert [tuple(g) for g in rec["gt"][i]] == observed  # phase kept
        assert np.array_equal(rec["ds"][i], [sum(g) for g in observed])
        assert "TYPED" in rec["info"][i] and "IMP" not in rec["info"][i]
        assert rec["info"][i]["R2"] == pytest.approx(1.0) or len(set(observed)) == 1
    n_imp = sum("IMP" in info for info in rec["info"])
    assert n_imp == len(env.sites) - len(target)


def test_info_af_and_r2_match_the_dosages(clean):
    rec = imputed_records(clean[0])
    af = np.array([info["AF"][0] for info in rec["info"]])
    assert np.allclose(af, rec["ds"].mean(axis=1) / 2, atol=2e-3)
    r2 = np.array([info["R2"] for info in rec["info"]])
    assert ((r2 >= 0) & (r2 <= 1)).all()
    assert (r2[(af == 0) | (af == 1)] == 0).all()


def test_header_contig_provenance(env, clean):
    out, report = clean
    header, _ = vcf_lines(out)
    text = "\n".join(header)
    assert header[0] == "##fileformat=VCFv4.2"
    assert any(h.startswith("##source=ragimpute ") for h in header)
    with __import__("pysam").VariantFile(str(env.panel)) as vf:
        length = vf.header.contigs[CHROM].length
    assert f"##contig=<ID={CHROM},length={length}>" in header
    for tag in ("INFO=<ID=AF", "INFO=<ID=R2", "INFO=<ID=IMP", "INFO=<ID=TYPED"):
        assert tag in text
    for tag in ("FORMAT=<ID=GT", "FORMAT=<ID=DS", "FORMAT=<ID=GP"):
        assert tag in text
    prov = next(h for h in header if h.startswith("##ragimpute_impute="))
    assert f"mask_hash={env.train_hash}" in prov and "method=retrieval" in prov
    assert "index_kind=binary_flat" in prov and "k=16" in prov
    assert report["mask_hash"] == env.train_hash
    assert report["peak_rss_mb"] > 0 and report["wall_seconds"] > 0
    assert report["typed_sites"] + report["imputed_sites"] == len(env.sites)
    assert json.loads(out.with_name(out.name + ".json").read_text())["method"] == "retrieval"


def test_demo_target_reuses_the_training_index(env, clean):
    """Typed on the training array: same mask hash, so the index built for training answers it."""
    _, report = clean
    assert report["mask_hash"] == env.train_hash
    assert [p.name for p in (env.results / "index" / CHROM).iterdir()] == [env.train_hash]


# -- genotype arithmetic ---------------------------------------------------------------------------


def genotype_arrays(p: np.ndarray) -> dict[str, np.ndarray]:
    """The genotype arithmetic in float arrays (the writer's before its compiled kernel), kept as the
    kernel's reference: haplotype ALT probabilities (n_sites, 2n) -> DS, GP, GT alleles, AF and R2.

    ``gt`` is (n_sites, 2n) alleles consistent with GP: argmax GP, a heterozygote phased with ALT on the
    haplotype with the larger probability (haplotype 1 on ties).
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    p0, p1 = p[:, 0::2], p[:, 1::2]
    gp = np.stack([(1 - p0) * (1 - p1), p0 * (1 - p1) + p1 * (1 - p0), p0 * p1], axis=-1)
    g = gp.argmax(axis=-1)
    gt = np.empty(p.shape, dtype=np.int8)
    gt[:, 0::2] = (g == 2) | ((g == 1) & (p0 > p1))
    gt[:, 1::2] = (g == 2) | ((g == 1) & (p0 <= p1))
    af = p.mean(axis=1) if p.shape[1] else np.zeros(len(p))
    var = (p * p).mean(axis=1) - af * af if p.shape[1] else np.zeros(len(p))
    denom = af * (1 - af)
    ok = denom > 1e-12
    r2 = np.zeros(len(p))
    r2[ok] = np.clip(var[ok] / denom[ok], 0.0, 1.0)
    return {"ds": p0 + p1, "gp": gp, "gt": gt, "af": af, "r2": r2}


def test_genotype_arrays_against_the_formulas():
    rng = np.random.default_rng(0)
    p = rng.random((50, 8))
    p[:5] = 0.0
    p[5:8] = np.round(p[5:8])
    g = genotype_arrays(p)
    for i in range(p.shape[0]):
        for j in range(4):
            p0, p1 = p[i, 2 * j], p[i, 2 * j + 1]
            gp = [(1 - p0) * (1 - p1), p0 * (1 - p1) + p1 * (1 - p0), p0 * p1]
            assert np.allclose(g["gp"][i, j], gp)
            assert g["ds"][i, j] == pytest.approx(p0 + p1)
            call = int(np.argmax(gp))
            a0, a1 = g["gt"][i, 2 * j], g["gt"][i, 2 * j + 1]
            assert a0 + a1 == call
            if call == 1:
                assert (a0 == 1) == (p0 > p1)
        af = p[i].mean()
        r2 = np.var(p[i]) / (af * (1 - af)) if 0 < af < 1 else 0.0
        assert g["af"][i] == pytest.approx(af)
        assert g["r2"][i] == pytest.approx(r2)


def test_compiled_genotype_codes_equal_the_array_formulas():
    """The record writer's kernel gives the GT, DS and GP of ``genotype_arrays`` in thousandths,
    ties included (p0 = p1 heterozygotes, GP halfway between two thousandths)."""
    rng = np.random.default_rng(1)
    k = rng.integers(0, STATS_SCALE + 1, (400, 12))
    k[:50] = rng.choice([0, STATS_SCALE // 2, STATS_SCALE // 2 + 1, STATS_SCALE], (50, 12))
    k[50:60, 1::2] = k[50:60, 0::2]
    gt, ds, g0, g1, g2 = genotype_codes(k)
    g = genotype_arrays(k / STATS_SCALE)
    np.testing.assert_array_equal(gt, 2 * g["gt"][:, 0::2] + g["gt"][:, 1::2])
    np.testing.assert_array_equal(ds, np.clip(np.rint(g["ds"] * 1000), 0, 2000))
    t0, t2 = (np.clip(np.rint(g["gp"][..., c] * 1000), 0, 1000) for c in (0, 2))
    over = np.maximum(t0 + t2 - 1000, 0)
    np.testing.assert_array_equal(g0, t0 - over * (t0 >= t2))
    np.testing.assert_array_equal(g2, t2 - over * (t0 < t2))
    np.testing.assert_array_equal(g0 + g1 + g2, 1000)
    assert (g1 >= 0).all()


def test_default_records_are_as_written_before_hds():
    """The FORMAT and bytes of the default records (GT:DS:GP) and of GT:DS, unchanged by the
    optional HDS: the hom-ref shortcut, a heterozygote, a typed site, trailing zeros dropped."""
    sites = pd.DataFrame({"pos": [10, 20], "id": ["rs1", "."], "ref": "A", "alt": ["C", "G"]})
    p = np.array([[0.0, 0.0, 0.3, 0.4], [1.0, 1.0, 0.12345, 0.98765]])
    typed = np.array([False, True])
    text, _ = format_records("20", sites, p, typed)
    assert text == (
        b"20\t10\trs1\tA\tC\t.\tPASS\tAF=0.175;R2=0.221;IMP\tGT:DS:GP\t0|0:0:1,0,0"
        b"\t0|1:0.7:0.42,0.46,0.12\n"
        b"20\t20\t.\tA\tG\t.\tPASS\tAF=0.7778;R2=0.826;TYPED\tGT:DS:GP\t1|1:2:0,0,1"
        b"\t0|1:1.111:0.011,0.867,0.122\n"
    )
    text, _ = format_records("20", sites, p, typed, gp=False)
    assert text.split(b"\n")[1].endswith(b"TYPED\tGT:DS\t1|1:2\t0|1:1.111")
    text, _ = format_records("20", sites, p, typed, hds=True)
    assert text.split(b"\n")[1].endswith(
        b"TYPED\tGT:DS:HDS:GP\t1|1:2:1,1:0,0,1\t0|1:1.111:0.123,0.988:0.011,0.867,0.122"
    )


def _thousandths(x: np.ndarray) -> np.ndarray:
    return np.array([f"{v / 1000:.3f}".rstrip("0").rstrip(".") for v in x.ravel()]).reshape(x.shape)


@pytest.mark.parametrize("gp", [True, False])
@pytest.mark.parametrize("hds", [False, True])
def test_records_equal_an_independent_formatting(gp, hds):
    """Every sample column of the compiled writer against the same numbers formatted in Python
    (GT, DS, HDS and GP in thousandths, trailing zeros dropped), hom-ref shortcut included; HDS
    sums to DS to within one thousandth."""
    rng = np.random.default_rng(2)
    k = rng.integers(0, STATS_SCALE + 1, (300, 10))
    k[rng.random(k.shape) < 0.5] = 0
    k[:20] = rng.choice([0, 1, 32, 33, STATS_SCALE // 2, STATS_SCALE], (20, 10))
    sites = pd.DataFrame({"pos": np.arange(1, 301), "ref": "A", "alt": "C"})
    text, _ = format_records("20", sites, k / STATS_SCALE, np.zeros(300, bool), gp=gp, hds=hds)
    rows = [ln.split("\t") for ln in text.decode().splitlines()]
    assert {r[8] for r in rows} == {"GT" + ":DS" + ":HDS" * hds + ":GP" * gp}
    gt, ds, g0, g1, g2 = genotype_codes(k)
    h = np.rint(k / STATS_SCALE * 1000).astype(np.int64)
    want = np.array(["0|0", "0|1", "1|0", "1|1"])[gt]
    want = np.char.add(np.char.add(want, ":"), _thousandths(ds))
    if hds:
        pair = np.char.add(np.char.add(_thousandths(h[:, 0::2]), ","), _thousandths(h[:, 1::2]))
        want = np.char.add(np.char.add(want, ":"), pair)
        assert np.abs(h[:, 0::2] + h[:, 1::2] - ds).max() <= HDS_SUM_OF_DS * 1000
    if gp:
        for c, g in enumerate((g0, g1, g2)):
            want = np.char.add(np.char.add(want, ":" if c == 0 else ","), _thousandths(g))
    assert [r[9:] for r in rows] == want.tolist()


@pytest.mark.parametrize("method", ["af", "retrieval"])
def test_hds_is_each_haplotypes_p_alt_and_leaves_the_rest(env, tmp_path, monkeypatch, method):
    """impute.hds on a predictor's output: the header declares HDS, bcftools reads per haplotype
    the P(ALT) the writer was given (the observed allele at typed sites) and HDS sums to DS;
    without HDS the records are those of the default run, byte for byte. (``model`` is written by
    the same path; ``copying``'s own path is tested in test_copying.)"""
    import ragimpute.impute

    default = tmp_path / "default.vcf.gz"
    run(env, env.target, default, method)
    seen = recorded_writes(monkeypatch, ragimpute.impute, "format_records")
    out = tmp_path / f"{method}.vcf.gz"
    run(env, env.target, out, method, hds=True)
    check_hds(out, seen)
    header, records = vcf_lines(out)
    default_header, default_records = vcf_lines(default)
    assert without_hds(records) == default_records
    assert not any(h.startswith("##FORMAT=<ID=HDS") for h in default_header)
    dated = ("##FORMAT=<ID=HDS", "##filedate=")  # the date changes at midnight
    undated = [h for h in default_header if not h.startswith(dated[1])]
    assert [h for h in header if not h.startswith(dated)] == undated
    _, target = vcf_lines(env.target)
    typed = {int(r[1]): [int(a) for g in r[9:] for a in g.split("|")] for r in target}
    assert all(np.array_equal(seen[x], typed[x]) for x in typed)


# -- stitching ---------------------------------------------------------------------------------------


class WindowIdPredictor:
    """P(ALT) = (window + 1) / 100 at hidden sites: shows which window wrote each site."""

    name = "window_id"
    k = 0

    def predict(self, batch):
        out = np.where(batch.tokens == MASK, (batch.window + 1) / 100, 0.0).astype(np.float32)
        return out


def test_each_site_comes_from_its_owner_window(env, tmp_path, monkeypatch):
    monkeypatch.setitem(PREDICTOR_FACTORIES, "window_id", lambda opts: WindowIdPredictor())
    out = tmp_path / "w.vcf.gz"
    run(env, env.target, out, method="window_id", options={})
    rec = imputed_records(out)
    sites = env.sites
    imp = np.array(["IMP" in info for info in rec["info"]])
    expected = 2 * (sites["window"].to_numpy() + 1) / 100
    assert sites["window"].nunique() > 3  # several overlapping windows were stitched
    assert np.allclose(rec["ds"][imp], expected[imp][:, None], atol=1e-3)


# -- target alignment --------------------------------------------------------------------------------


def swap(record: list[str]) -> list[str]:
    flip = {"0": "1", "1": "0", ".": "."}
    gts = ["|".join(flip[a] for a in g.split("|")) for g in record[9:]]
    return record[:3] + [record[4], record[3]] + record[5:9] + gts


def palindromic(record: list[str]) -> bool:
    return {record[3], record[4]} in ({"A", "T"}, {"C", "G"})


def test_swapped_alleles_and_chr_names_impute_the_same(env, clean, tmp_path):
    header, records = vcf_lines(env.target)
    header = [h.replace(f"##contig=<ID={CHROM},", f"##contig=<ID=chr{CHROM},") for h in header]
    edited = [
        (swap(r) if i % 2 and not palindromic(r) else r[:]) for i, r in enumerate(records)
    ]  # every other record in the other orientation (not A/T, C/G: those are ambiguous)
    for r in edited:
        r[0] = f"chr{CHROM}"
    target = write_bgzip(tmp_path / "chr_swapped.vcf.gz", header, edited)
    out = tmp_path / "out.vcf.gz"
    report = run(env, target, out)
    assert body(out) == body(clean[0])
    a = report["alignment"]
    assert (
        a["flipped"]
        == sum(r[3] != e[3] for r, e in zip(records, edited, strict=True))
        > len(records) // 4
    )
    assert a["chrom_renamed"] and a["target_chrom"] == "chr20"
    assert report["mask_hash"] == env.train_hash


def test_swapped_a_t_and_c_g_records_are_ambiguous_and_not_used(env, clean, tmp_path, caplog):
    """T/A against the reference's A/T: the other strand (genotypes as they are) or swapped alleles
    (genotypes 0<->1) alike. Beagle's and our readings would differ, so the record is left out,
    counted and listed, and the other swapped records are still flipped."""
    header, records = vcf_lines(env.target)
    pal = [i for i, r in enumerate(records) if palindromic(r)][:2]
    other = next(i for i, r in enumerate(records) if not palindromic(r))
    assert len(pal) == 2
    edited = [swap(r) if i in pal or i == other else r[:] for i, r in enumerate(records)]
    target = write_vcf(tmp_path / "t.vcf", header, edited)
    report = run(env, target, tmp_path / "out.vcf.gz")
    a = report["alignment"]
    assert a["flipped"] == 1 and a["matched"] == len(records) - 2
    assert a["unmatched"]["ambiguous_strand"] == 2
    listed = pd.read_csv(tmp_path / "out.vcf.gz.aligned" / "unmatched.tsv", sep="\t")
    assert sorted(listed["pos"]) == sorted(int(records[i][1]) for i in pal)
    assert set(listed["reason"]) == {"ambiguous_strand"}
    assert "strand flip and a REF/ALT swap look the same" in caplog.text
    assert report["mask_hash"] != env.train_hash  # two typed sites fewer


def test_multiallelic_and_non_snv_records_are_skipped_and_counted(env, clean, tmp_path):
    header, records = vcf_lines(env.target)
    r0 = records[3]
    multi = r0[:1] + [str(int(r0[1]) + 1), ".", "A", "C,G"] + r0[5:]
    indel = r0[:1] + [str(int(r0[1]) + 2), ".", "AT", "A"] + r0[5:]
    target = write_vcf(tmp_path / "t.vcf", header, records[:4] + [multi, indel] + records[4:])
    out = tmp_path / "out.vcf.gz"
    report = run(env, target, out)
    assert report["alignment"]["skipped"] == {"multiallelic": 1, "non_snv": 1, "no_alt": 0}
    assert body(out) == body(clean[0])


def test_lowercase_target_alleles_match_the_panel(env, clean, tmp_path):
    """A target written with lowercase bases (valid VCF) types the same sites as the uppercase one:
    nothing skipped as non-SNV, nothing unmatched, the same imputed records."""
    header, records = vcf_lines(env.target)
    lower = [r[:3] + [r[3].lower(), r[4].lower()] + r[5:] for r in records]
    target = write_vcf(tmp_path / "t.vcf", header, lower)
    out = tmp_path / "out.vcf.gz"
    report = run(env, target, out)
    assert report["alignment"]["skipped"] == clean[1]["alignment"]["skipped"]
    assert report["alignment"]["matched"] == clean[1]["alignment"]["matched"]
    assert report["mask_hash"] == clean[1]["mask_hash"]
    assert body(out) == body(clean[0])


def test_index_of_another_panel_with_the_same_layout_is_refused(env, clean, tmp_path):
    """An index built from another panel file of the same samples, sites and mask passes the mask
    and sample checks; its neighbour ids would name haplotypes of the other panel: refused, naming
    the index, the reference and the rebuild."""
    res = foreign_results(env, tmp_path)
    index = res / "index" / CHROM / env.train_hash
    assert json.loads((index / "meta.json").read_text())["samples"] == env.split_samples["train"]
    with pytest.raises(ArtifactError, match=r"built from other haplotypes.*--forcerun tokenize"):
        impute_target(res, CHROM, env.split, env.target, "retrieval", tmp_path / "o.vcf.gz",
                      options={"k": 16}, panel_vcf=env.panel, reference_splits=("train",))  # fmt: skip
    shutil.rmtree(res / "tokens")  # made again from the new windows, with the index: then it runs
    shutil.rmtree(index)
    impute_target(res, CHROM, env.split, env.target, "retrieval", tmp_path / "o.vcf.gz",
                  options={"k": 16}, panel_vcf=env.panel, reference_splits=("train",))  # fmt: skip


def test_unmatched_sites_are_counted_and_listed(env, clean, tmp_path):
    header, records = vcf_lines(env.target)
    taken = set(env.sites["pos"])
    free = next(p for p in range(int(records[5][1]) + 1, 10**7) if p not in taken)
    absent = records[5][:1] + [str(free)] + records[5][2:]
    # REF kept, ALT another base: neither orientation matches, on either strand (the two other
    # bases of a non-A/T, non-C/G record are its alleles' complements: a strand_flip)
    other = next(b for b in "ACGT" if b not in records[6][3:5])
    wrong = records[6][:4] + [other] + records[6][5:]
    target = write_vcf(tmp_path / "t.vcf", header, records[:5] + [absent, wrong] + records[7:])
    report = run(env, target, tmp_path / "out.vcf.gz")
    assert report["alignment"]["unmatched"] == {
        "not_in_reference": 1,
        "allele_mismatch": 1,
        "strand_flip": 0,
        "ambiguous_strand": 0,
        "strand_frequency": 0,
    }
    listed = (tmp_path / "out.vcf.gz.aligned" / "unmatched.tsv").read_text()
    assert str(free) in listed and "allele_mismatch" in listed
    # Dropping a typed site changes the mask: a new hash, and its own index.
    assert report["mask_hash"] != env.train_hash
    assert (env.results / "index" / CHROM / report["mask_hash"] / "meta.json").exists()


def test_a_target_that_mostly_misses_the_reference_is_warned_about(env, tmp_path, caplog):
    """Most records at positions the reference lacks (another build, typically): a warning, not only
    the INFO line of counts; half or more matching is not warned about."""
    header, records = vcf_lines(env.target)
    taken = set(env.sites["pos"])
    free = iter(p for p in range(1, 10**7) if p not in taken)
    n_keep = 3
    moved = [r[:1] + [str(next(free))] + r[2:] for r in records[n_keep:]]
    rows = sorted(records[:n_keep] + moved, key=lambda r: int(r[1]))
    caplog.set_level("WARNING", logger="ragimpute")
    run(env, write_vcf(tmp_path / "t.vcf", header, rows), tmp_path / "out.vcf.gz")
    assert f"only {n_keep} of its {len(records)} SNV records" in caplog.text
    assert "another genome build" in caplog.text
    caplog.clear()
    half = records[: len(records) // 2] + moved[len(records) // 2 - n_keep :]
    run(env, write_vcf(tmp_path / "h.vcf", header, sorted(half, key=lambda r: int(r[1]))),
        tmp_path / "h.vcf.gz")  # fmt: skip
    assert "another genome build" not in caplog.text


def test_missing_calls_are_imputed_and_very_missing_sites_untyped(env, clean, tmp_path):
    header, records = vcf_lines(env.target)
    records = [r[:] for r in records]
    n = len(records[0]) - 9
    records[10][9] = (
        ".|" + records[10][9].split("|")[1]
    )  # one allele of one sample: imputed in place
    records[20][9:] = [".|."] * n  # missing everywhere: untyped, imputed for everyone
    target = write_vcf(tmp_path / "t.vcf", header, records)
    out = tmp_path / "out.vcf.gz"
    # 1 of 12 haplotypes missing (8%) stays typed at max_missing 0.1; 100% is untyped.
    report = run(env, target, out, max_missing=0.1)
    m = report["alignment"]["missing"]
    assert m["sites_untyped_for_missingness"] == 1
    assert m["alleles_missing_at_typed_sites"] == 1
    assert report["missing_alleles_imputed_at_typed_sites"] == 1
    rec = imputed_records(out)
    i10 = int(np.flatnonzero(rec["pos"] == int(records[10][1]))[0])
    i20 = int(np.flatnonzero(rec["pos"] == int(records[20][1]))[0])
    assert "TYPED" in rec["info"][i10] and "IMP" in rec["info"][i20]
    kept = int(records[10][9].split("|")[1])
    assert rec["gt"][i10][0][1] == kept  # the observed allele of that sample is kept
    other = [tuple(int(x) for x in g.split("|")) for g in records[10][10:]]
    assert [tuple(g) for g in rec["gt"][i10][1:]] == other
    # The harmonised target (what Beagle and Minimac4 read) keeps the missing call as missing.
    _, aligned = vcf_lines(tmp_path / "out.vcf.gz.aligned" / "target.vcf.gz")
    row = next(r for r in aligned if r[1] == records[10][1])
    assert row[9].startswith(".|")
    assert not any(r[1] == records[20][1] for r in aligned)


def test_homozygous_unphased_calls_are_accepted(env, clean, tmp_path):
    header, records = vcf_lines(env.target)
    records = [r[:] for r in records]
    for r in records:
        r[9:] = [g.replace("|", "/") if g in ("0|0", "1|1") else g for g in r[9:]]
    out = tmp_path / "out.vcf.gz"
    run(env, write_vcf(tmp_path / "t.vcf", header, records), out)
    assert body(out) == body(clean[0])


# -- bad input ---------------------------------------------------------------------------------------


def edited_target(env, tmp_path, edit, name="bad.vcf"):
    header, records = vcf_lines(env.target)
    header, records = edit([h for h in header], [r[:] for r in records])
    return write_vcf(tmp_path / name, header, records)


def test_unphased_target_says_how_to_phase(env, tmp_path):
    def edit(h, r):
        j = next(j for j, g in enumerate(r[7][9:]) if g in ("0|1", "1|0"))
        r[7][9 + j] = "0/1"
        return h, r

    target = edited_target(env, tmp_path, edit)
    with pytest.raises(InputError) as e:
        run(env, target, tmp_path / "out.vcf.gz")
    msg = str(e.value)
    assert "unphased" in msg and str(target) in msg
    assert "Beagle" in msg and "SHAPEIT5" in msg and "Eagle" in msg
    assert f"{CHROM}:{vcf_lines(env.target)[1][7][1]}" in msg


def test_haploid_target_calls(env, tmp_path):
    def edit(h, r):
        r[2][9] = r[2][9].split("|")[0]
        return h, r

    with pytest.raises(InputError, match="haploid genotype"):
        run(env, edited_target(env, tmp_path, edit), tmp_path / "out.vcf.gz")


def test_unsorted_target(env, tmp_path):
    def edit(h, r):
        r[3], r[4] = r[4], r[3]
        return h, r

    with pytest.raises(InputError, match="not sorted.*bcftools sort"):
        run(env, edited_target(env, tmp_path, edit), tmp_path / "out.vcf.gz")


def test_duplicate_positions_in_target(env, tmp_path):
    def edit(h, r):
        return h, r[:5] + [r[4][:]] + r[5:]

    with pytest.raises(InputError, match="two biallelic SNV records at position"):
        run(env, edited_target(env, tmp_path, edit), tmp_path / "out.vcf.gz")


def test_a_second_record_of_other_alleles_at_a_typed_site_is_unmatched(env, clean, tmp_path):
    """Arrays carry second probes at a site with other alleles (and `bcftools norm -m-` splits
    multi-allelics into such records): Beagle drops the one the reference lacks, ours refused the
    whole target. Now it is unmatched (allele_mismatch) and the imputation is the clean one."""

    def edit(h, r):
        other = r[4][:]
        other[4] = next(b for b in "ACGT" if b not in (other[3], other[4]))
        other[9:] = ["1|1"] * len(other[9:])  # would change the site if it were used
        return h, r[:5] + [other] + r[5:]

    target = edited_target(env, tmp_path, edit)
    out = tmp_path / "out.vcf.gz"
    report = run(env, target, out)
    assert report["alignment"]["unmatched"]["allele_mismatch"] == 1
    pos = vcf_lines(env.target)[1][4][1]
    unmatched = (tmp_path / "out.vcf.gz.aligned" / "unmatched.tsv").read_text()
    assert f"\t{pos}\t" in unmatched and "allele_mismatch" in unmatched
    assert body(out) == body(clean[0])


def test_target_on_another_chromosome(env, tmp_path):
    def edit(h, r):
        h = [x.replace(f"##contig=<ID={CHROM},", "##contig=<ID=21,") for x in h]
        for x in r:
            x[0] = "21"
        return h, r

    with pytest.raises(InputError, match="no records on chromosome 20.*21"):
        run(env, edited_target(env, tmp_path, edit), tmp_path / "out.vcf.gz")


def test_target_without_overlap(env, tmp_path):
    taken = set(env.sites["pos"])

    def edit(h, r):
        for x in r:
            p = int(x[1]) + 1
            while p in taken:
                p += 1
            x[1] = str(p)
        r.sort(key=lambda x: int(x[1]))
        return h, r

    with pytest.raises(InputError, match="does not overlap the reference"):
        run(env, edited_target(env, tmp_path, edit), tmp_path / "out.vcf.gz")


def test_target_sharing_samples_with_the_reference(env, tmp_path):
    ref_sample = env.split_samples["train"][0]

    def edit(h, r):
        cols = h[-1].split("\t")
        cols[9] = ref_sample
        h[-1] = "\t".join(cols)
        return h, r

    with pytest.raises(InputError, match=f"also in the reference panel: {ref_sample}"):
        run(env, edited_target(env, tmp_path, edit), tmp_path / "out.vcf.gz")


def test_truncated_target(env, tmp_path):
    data = env.target.read_bytes()
    bad = tmp_path / "truncated.vcf.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        run(env, bad, tmp_path / "out.vcf.gz")
    assert not (tmp_path / "out.vcf.gz").exists()


def test_plain_gzip_target_is_refused_with_a_fix(env, tmp_path):
    bad = tmp_path / "gzip.vcf.gz"
    with gzip.open(bad, "wb") as f:
        f.write(gzip.decompress(env.target.read_bytes()))
    with pytest.raises(InputError, match="bgzip"):
        run(env, bad, tmp_path / "out.vcf.gz")


def test_more_neighbours_than_reference_haplotypes(env, tmp_path):
    with pytest.raises(InputError, match="baselines.retrieval.k"):
        run(env, env.target, tmp_path / "out.vcf.gz", options={"k": 10_000})


# -- command line ------------------------------------------------------------------------------------


def test_cli_impute_then_evaluate(env, tmp_path, capsys):
    out = tmp_path / "af.vcf.gz"
    args = ["impute", "--results", str(env.results), "--chrom", CHROM, "--split", str(env.split)]
    args += ["--reference", "train"]
    args += ["--target", str(env.target), "--method", "af", "--out", str(out)]
    assert cli_main(args) == 0
    assert out.exists() and (tmp_path / "af.vcf.gz.tbi").exists()
    report = json.loads((tmp_path / "af.vcf.gz.json").read_text())
    assert report["method"] == "af" and report["k"] == 0
    ev = tmp_path / "ev"
    args = ["evaluate", "--imputed", str(out), "--truth", str(env.truth), "--results"]
    args += [str(env.results), "--chrom", CHROM, "--typed", str(env.target), "--method", "af"]
    args += ["--reference", "train"]
    assert cli_main(args + ["--out", str(ev)]) == 0
    assert (ev / "bins.tsv").exists()
    # --hds adds HDS, and the evaluation, which scores DS, is the same
    hds = tmp_path / "hds" / "af.vcf.gz"
    i = args.index(str(out))
    impute_args = ["impute", "--results", str(env.results), "--chrom", CHROM, "--split"]
    impute_args += [str(env.split), "--reference", "train", "--target", str(env.target)]
    assert cli_main(impute_args + ["--method", "af", "--out", str(hds), "--hds"]) == 0
    assert "ID=HDS" in "".join(vcf_lines(hds)[0])
    assert cli_main(args[:i] + [str(hds)] + args[i + 1 :] + ["--out", str(ev / "hds")]) == 0
    assert (ev / "hds" / "bins.tsv").read_text() == (ev / "bins.tsv").read_text()
    # A user error is one clear line and exit status 1, not a traceback.
    bad = ["impute", "--results", str(env.results), "--chrom", CHROM, "--split", str(env.split)]
    bad += ["--reference", "train"]
    bad += ["--target", str(tmp_path / "missing.vcf.gz"), "--out", str(tmp_path / "x.vcf.gz")]
    assert cli_main(bad) == 1


def test_method_names_match_the_predictors():
    """The workflow learns the method names from ragimpute.methods without importing impute."""
    from ragimpute.methods import OUR_METHODS

    assert tuple(PREDICTOR_FACTORIES) == OUR_METHODS


def test_own_targets_get_the_whole_panels_allele_frequencies(env, tmp_path):
    """With the whole panel as the imputation reference (one's own targets), the ``af`` method
    answers the whole panel's frequency (brute force over every panel sample), not the train
    split's."""

    def rename(h, r):
        cols = h[-1].split("\t")
        h[-1] = "\t".join(cols[:9] + [f"own_{c}" for c in cols[9:]])
        return h, r

    target = edited_target(env, tmp_path, rename, "own.vcf")
    out = tmp_path / "af.vcf.gz"
    report = run(env, target, out, "af", options={}, reference_splits=("train", "val", "test"))
    assert report["allele_frequency_splits"] == ["train", "val", "test"]
    gts = pysam.bcftools.query("-f", "%POS[\t%GT]\n", str(env.panel))
    af = {}
    for line in gts.splitlines():
        f = line.split("\t")
        alleles = [int(x) for gt in f[1:] for x in gt.split("|")]
        af[int(f[0])] = sum(alleles) / len(alleles)
    got = imputed_records(out)
    untyped = ~np.isin(got["pos"], [int(r[1]) for r in body(target)])
    want = np.array([2 * af[int(p)] for p in got["pos"][untyped]])
    np.testing.assert_allclose(got["ds"][untyped, 0], want, atol=5e-4)
    train_af = env.sites.set_index("pos")["af"]
    assert np.abs(want - 2 * train_af.loc[got["pos"][untyped]].to_numpy()).max() > 0.01
