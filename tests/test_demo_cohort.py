"""The scale demo's pieces: the out-of-Africa history and a target cohort simulated with the panel."""

import numpy as np
import pysam
import pytest

from ragimpute.demo import DemoSpec, cohort_counts, make_demo, sample_counts, simulate_chromosome


def genotypes(path):
    """{pos: (ref, alts, (samples, 2) alleles)} and the sample names of a phased VCF."""
    with pysam.VariantFile(str(path)) as f:
        names = list(f.header.samples)
        out = {
            r.pos: (r.ref, r.alts, np.array([r.samples[s]["GT"] for s in names])) for r in f.fetch()
        }
    return out, names


@pytest.fixture(scope="module")
def cohort_demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    spec = DemoSpec(seed=4, n_samples=12, sequence_length=300_000, out_of_africa=True,
                    cohort_samples=9, cohort_truth_samples=4, array_spacing_bp=3000)  # fmt: skip
    info = make_demo(spec, d / "panel.vcf.gz", d / "array.tsv")
    return spec, d, info


def test_the_cohort_is_simulated_with_the_panel_and_kept_out_of_it(cohort_demo):
    spec, d, info = cohort_demo
    panel, panel_names = genotypes(d / "panel.vcf.gz")
    cohort, cohort_names = genotypes(d / "cohort.vcf.gz")
    truth, truth_names = genotypes(d / "cohort_truth.vcf.gz")
    assert len(panel_names) == 12 and len(cohort_names) == 9 and truth_names == cohort_names[:4]
    assert not set(panel_names) & set(cohort_names)
    assert info["cohort"]["populations"] == {"YRI": 3, "CEU": 3, "CHB": 3}
    # the cohort's typed sites are the array's, its truth sites the panel's, less those left out
    array = set(np.loadtxt(d / "array.tsv", skiprows=1, usecols=1, dtype=int).tolist())
    assert set(cohort) == array
    left_out = info["cohort"]["sites_left_out"]
    assert set(truth) <= set(panel) and len(panel) - len(truth) == left_out
    for pos in cohort:  # one simulation: the cohort's typed genotypes are its true ones
        assert cohort[pos][:2] == panel[pos][:2]
        np.testing.assert_array_equal(cohort[pos][2][:4], truth[pos][2])

    # the genotypes are those of the simulation, the panel's individuals first
    ts = simulate_chromosome(spec, 0)
    cohort_nodes = ts.samples()[24:]
    for var in ts.variants():
        pos = int(var.site.position) + 1
        if pos not in truth:
            continue
        ref, alts, gt = truth[pos]
        alleles = (ref, *alts) if alts else (ref,)
        want = np.array(var.alleles)[var.genotypes[np.isin(ts.samples(), cohort_nodes[:8])]]
        np.testing.assert_array_equal(np.array(alleles)[gt.ravel()], want)


def test_without_a_cohort_the_panel_is_unchanged(tmp_path):
    """The cohort's switch off: the same simulation call as before it existed (same panel bytes)."""
    spec = DemoSpec(seed=4, n_samples=8, sequence_length=100_000)
    make_demo(spec, tmp_path / "a/panel.vcf.gz", tmp_path / "a/array.tsv")
    assert not (tmp_path / "a/cohort.vcf.gz").exists()
    ts = simulate_chromosome(spec, 0)
    panel, _ = genotypes(tmp_path / "a/panel.vcf.gz")
    assert len(panel) == ts.num_sites


def test_histories_and_their_samples():
    assert sample_counts(DemoSpec(n_samples=10, out_of_africa=True)) == {
        "YRI": 4,
        "CEU": 3,
        "CHB": 3,
    }
    assert cohort_counts(DemoSpec(n_samples=10)) == {}
    assert cohort_counts(DemoSpec(cohort_samples=5)) == {"pop": 5}
    assert cohort_counts(DemoSpec(admixed=True, cohort_samples=5)) == {"ADMIX": 5}
    with pytest.raises(ValueError, match="choose one"):
        simulate_chromosome(DemoSpec(admixed=True, out_of_africa=True, sequence_length=10_000), 0)
