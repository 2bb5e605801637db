"""The embedded demo panel: a seeded coalescent simulation with human-scale parameters.

A new user can run the whole pipeline with no download. The panel is phased and mostly biallelic; the
Jukes-Cantor mutation model leaves a few multi-allelic sites in it, which exercise the skip counting
of the windowing stage as real panels do.

Three histories: one population that grew (the default); ``admixed``: the American admixture model
of Browning et al. (2018, stdpopsim's AmericanAdmixture_4B18): African, European and East Asian
populations, and an admixed population founded 12 generations ago from them (1/6, 1/3, 1/2). With
``admixed`` the reference samples come from the three source populations and the held-out targets
are admixed (``populations.tsv`` says who is who; the split stage puts every ADMIX sample in test);
or ``out_of_africa``: the three-population model of Gutenkunst et al. (2009, stdpopsim's
OutOfAfrica_3G09), YRI, CEU and CHB, the panel's samples split evenly between them (as 1000 Genomes
samples continents).

A target cohort (``cohort_samples`` > 0) is simulated with the panel, from the same history (the
panel's populations, evenly; the admixed population under ``admixed``) and kept out of it: a
genotyped cohort of any size, not a split of the panel. It is written as ``cohort.vcf.gz`` (phased
genotypes at the array sites) and ``cohort_truth.vcf.gz`` (every panel site, for the first
``cohort_truth_samples`` of them, or all), beside the panel; ``cohort.json`` counts what was written.

Recombination is uniform (``recombination_rate``) unless ``hotspots`` > 0: then each chromosome gets
that many narrow hotspots (``hotspot_width_bp`` wide, ``hotspot_intensity`` times the background
rate), one placed at random in each of as many equal stretches. Either way the simulated map is
written as ``genetic_map.map`` (PLINK: chrom id cM bp, Beagle's ``map=`` format) beside the panel.

The held-out targets can be made what a genotyping array delivers (``ArrayNoise``, applied by the
``demo_targets`` stage): unphased genotypes (``0/1``), genotype errors and missing calls.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msprime
import numpy as np
import pandas as pd
import pysam

from . import __version__
from .atomic import atomic_path, scratch_dir, write_json, write_tsv
from .logs import log


@dataclass
class DemoSpec:
    seed: int = 42
    n_samples: int = 300
    chromosomes: list[str] = field(default_factory=lambda: ["20"])
    sequence_length: int = 3_000_000
    # A human-like history: an ancestral size, then exponential growth to a larger present size,
    # which gives the excess of rare variants seen in real panels.
    ancestral_ne: float = 10_000
    present_ne: float = 40_000
    growth_generations: float = 400
    mutation_rate: float = 1.25e-8
    recombination_rate: float = 1.0e-8
    # The genotyping "array": common sites only, thinned to about one per spacing.
    array_spacing_bp: int = 5_000
    array_min_maf: float = 0.05
    sample_prefix: str = "SIM"
    # The admixed history: n_samples split evenly between AFR, EUR and ASIA (the reference) plus
    # admixed_samples ADMIX individuals (the targets). The growth parameters above are then unused.
    admixed: bool = False
    admixed_samples: int = 30
    # Recombination hotspots per chromosome (0: uniform recombination_rate), their width and their
    # rate as a multiple of recombination_rate (the background).
    hotspots: int = 0
    hotspot_width_bp: int = 2_000
    hotspot_intensity: float = 40.0
    # The out-of-Africa history (Gutenkunst et al. 2009): n_samples split evenly between YRI, CEU and
    # CHB. The growth parameters above are then unused.
    out_of_africa: bool = False
    # A target cohort simulated with the panel and kept out of it (0: none): cohort.vcf.gz at the
    # array sites, cohort_truth.vcf.gz at every panel site for the first cohort_truth_samples (0: all).
    cohort_samples: int = 0
    cohort_truth_samples: int = 0


@dataclass
class ArrayNoise:
    """What a genotyping array does to the held-out targets' typed genotypes (seeded)."""

    unphased: bool = False  # written unphased: 0/0, 0/1, 1/1
    genotype_error: float = 0.0  # per genotype: called as one of the two other genotypes
    missing_rate: float = 0.0  # per genotype: ./. (after the errors)
    seed: int = 42

    def active(self) -> bool:
        return self.unphased or self.genotype_error > 0 or self.missing_rate > 0

    def to_dict(self) -> dict:
        return asdict(self)


def add_array_noise(alleles: np.ndarray, noise: ArrayNoise, chrom: str) -> tuple[np.ndarray, dict]:
    """Genotype errors and missing calls on (sites, 2 * samples) phased alleles; returns the new
    alleles (-1 = missing) and the counts drawn. A wrong genotype is one of the other two, equally
    likely (a wrong heterozygote's alleles in random order). Seeded by ``noise.seed`` and ``chrom``."""
    out = np.asarray(alleles, dtype=np.int8).copy()
    n_genotypes = out.size // 2
    drawn = {"genotypes": int(n_genotypes), "genotype_errors": 0, "missing_calls": 0}
    if noise.genotype_error <= 0 and noise.missing_rate <= 0:
        return out, drawn
    rng = np.random.default_rng(np.random.SeedSequence([noise.seed, zlib.crc32(chrom.encode())]))
    a0, a1 = out[:, 0::2], out[:, 1::2]
    shape = a0.shape
    wrong = rng.random(shape) < noise.genotype_error
    new = (a0 + a1 + rng.integers(1, 3, size=shape)) % 3
    first = rng.integers(0, 2, size=shape)
    b0 = np.where(new == 2, 1, np.where(new == 1, first, 0)).astype(np.int8)
    b1 = np.where(new == 2, 1, np.where(new == 1, 1 - first, 0)).astype(np.int8)
    a0[wrong], a1[wrong] = b0[wrong], b1[wrong]
    missing = rng.random(shape) < noise.missing_rate
    a0[missing], a1[missing] = -1, -1
    out[:, 0::2], out[:, 1::2] = a0, a1
    drawn["genotype_errors"] = int((wrong & ~missing).sum())
    drawn["missing_calls"] = int(missing.sum())
    return out, drawn


ADMIXED_TARGETS = "ADMIX"


def _american_admixture() -> msprime.Demography:
    """Browning et al. 2018 (AmericanAdmixture_4B18): sizes, growth, migration and admixture."""
    d = msprime.Demography()
    # AFR and EUR are sampled today although they are ancestral in the splits below
    d.add_population(name="AFR", initial_size=14474, initially_active=True)
    d.add_population(name="EUR", initial_size=34039, growth_rate=0.0038, initially_active=True)
    d.add_population(name="ASIA", initial_size=45852, growth_rate=0.0048)
    d.add_population(name="ADMIX", initial_size=54664, growth_rate=0.05)
    d.set_symmetric_migration_rate(["AFR", "EUR"], 2.5e-5)
    d.set_symmetric_migration_rate(["AFR", "ASIA"], 7.8e-6)
    d.set_symmetric_migration_rate(["EUR", "ASIA"], 3.11e-5)
    d.add_admixture(
        time=12,
        derived="ADMIX",
        ancestral=["AFR", "EUR", "ASIA"],
        proportions=[1 / 6, 2 / 6, 3 / 6],
    )
    d.add_population_split(time=920, derived=["ASIA"], ancestral="EUR")
    d.add_population_parameters_change(time=920, initial_size=1861, growth_rate=0, population="EUR")
    d.add_migration_rate_change(time=920, rate=0)
    d.add_symmetric_migration_rate_change(time=920, populations=["AFR", "EUR"], rate=1.5e-4)
    d.add_population_split(time=2040, derived=["EUR"], ancestral="AFR")
    d.add_migration_rate_change(time=2040, rate=0)
    d.add_population_parameters_change(time=5920, initial_size=7310, population="AFR")
    d.sort_events()
    return d


def _out_of_africa() -> msprime.Demography:
    """Gutenkunst et al. 2009 (OutOfAfrica_3G09): YRI, CEU and CHB; generation time 25 years."""
    t_af, t_b, t_eu_as = 220e3 / 25, 140e3 / 25, 21.2e3 / 25
    r_eu, r_as = 0.004, 0.0055
    d = msprime.Demography()
    d.add_population(name="YRI", initial_size=12300)
    d.add_population(name="CEU", initial_size=1000 / np.exp(-r_eu * t_eu_as), growth_rate=r_eu)
    d.add_population(name="CHB", initial_size=510 / np.exp(-r_as * t_eu_as), growth_rate=r_as)
    d.add_population(name="OOA", initial_size=2100)  # the ancestors of CEU and CHB
    d.add_population(name="AMH", initial_size=12300)  # anatomically modern humans
    d.add_population(name="ANC", initial_size=7300)
    d.set_symmetric_migration_rate(["YRI", "CEU"], 3e-5)
    d.set_symmetric_migration_rate(["YRI", "CHB"], 1.9e-5)
    d.set_symmetric_migration_rate(["CEU", "CHB"], 9.6e-5)
    d.add_population_split(time=t_eu_as, derived=["CEU", "CHB"], ancestral="OOA")
    d.add_symmetric_migration_rate_change(time=t_eu_as, populations=["YRI", "OOA"], rate=25e-5)
    d.add_population_split(time=t_b, derived=["YRI", "OOA"], ancestral="AMH")
    d.add_population_split(time=t_af, derived=["AMH"], ancestral="ANC")
    d.sort_events()
    return d


def _even(n: int, populations: list[str]) -> dict[str, int]:
    k = len(populations)
    return {p: n // k + (i < n % k) for i, p in enumerate(populations)}


def sample_counts(spec: DemoSpec) -> dict[str, int]:
    """Individuals simulated per population, in the order they appear in the panel."""
    if spec.out_of_africa:
        return _even(spec.n_samples, ["YRI", "CEU", "CHB"])
    if not spec.admixed:
        return {"pop": spec.n_samples}
    each = _even(spec.n_samples, ["AFR", "EUR", "ASIA"])
    return {**each, ADMIXED_TARGETS: spec.admixed_samples}


def cohort_counts(spec: DemoSpec) -> dict[str, int]:
    """The target cohort's individuals per population: the panel's populations evenly, or the
    admixed population under ``admixed`` (whose targets are admixed)."""
    if spec.cohort_samples <= 0:
        return {}
    if spec.admixed:
        return {ADMIXED_TARGETS: spec.cohort_samples}
    return _even(spec.cohort_samples, list(sample_counts(spec)))


def _demography(spec: DemoSpec) -> msprime.Demography:
    if spec.admixed and spec.out_of_africa:
        raise ValueError("demo: admixed and out_of_africa are two histories; choose one")
    if spec.admixed:
        return _american_admixture()
    if spec.out_of_africa:
        return _out_of_africa()
    demography = msprime.Demography()
    rate = float(np.log(spec.present_ne / spec.ancestral_ne) / spec.growth_generations)
    demography.add_population(name="pop", initial_size=spec.present_ne, growth_rate=rate)
    demography.add_population_parameters_change(
        time=spec.growth_generations,
        initial_size=spec.ancestral_ne,
        growth_rate=0,
        population="pop",
    )
    return demography


def recombination_map(spec: DemoSpec, chrom_index: int) -> msprime.RateMap:
    """The chromosome's recombination map: uniform, or with ``spec.hotspots`` hotspots, one at a
    random place in each of as many equal stretches (seeded by ``spec.seed`` and the index)."""
    length = spec.sequence_length
    rate = spec.recombination_rate
    if spec.hotspots <= 0:
        return msprime.RateMap(position=[0, length], rate=[rate])
    stretch = length / spec.hotspots
    width = spec.hotspot_width_bp
    if width >= stretch:
        raise ValueError(
            f"demo: {spec.hotspots} hotspots of {width} bp do not fit in {length} bp; "
            "use fewer or narrower hotspots"
        )
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, chrom_index, 1]))
    starts = np.floor(
        np.arange(spec.hotspots) * stretch + rng.random(spec.hotspots) * (stretch - width)
    )
    position = [0.0]
    rates = []
    for a in starts.astype(np.int64):
        if a > position[-1]:  # background up to the hotspot (none when it starts at 0)
            position.append(float(a))
            rates.append(rate)
        position.append(float(a + width))
        rates.append(rate * spec.hotspot_intensity)
    if position[-1] < length:
        position.append(float(length))
        rates.append(rate)
    return msprime.RateMap(position=position, rate=rates)


def plink_map_rows(rate_map: msprime.RateMap, chrom: str) -> pd.DataFrame:
    """The map as PLINK rows (chrom, id, cM, bp): a point at every rate change. msprime position x
    is VCF position x + 1, so the cM at VCF position x + 1 is the map's cumulative mass at x."""
    pos = np.asarray(rate_map.position, dtype=np.float64)
    cm = 100.0 * np.asarray(rate_map.get_cumulative_mass(pos), dtype=np.float64)
    return pd.DataFrame(
        {"chrom": chrom, "id": ".", "cm": cm, "bp": pos.astype(np.int64) + 1},
    )


def simulate_chromosome(spec: DemoSpec, chrom_index: int):
    """One independent chromosome; seeds derive from ``spec.seed`` and the chromosome's index."""
    seeds = np.random.SeedSequence([spec.seed, chrom_index]).generate_state(2)
    recombination = (
        recombination_map(spec, chrom_index) if spec.hotspots > 0 else spec.recombination_rate
    )
    samples = sample_counts(spec)
    if spec.cohort_samples > 0:  # the panel's individuals first, then the cohort's
        samples = [
            msprime.SampleSet(n, population=p)
            for counts in (sample_counts(spec), cohort_counts(spec))
            for p, n in counts.items()
            if n
        ]
    ts = msprime.sim_ancestry(
        samples=samples,
        ploidy=2,
        demography=_demography(spec),
        sequence_length=spec.sequence_length,
        recombination_rate=recombination,
        random_seed=int(seeds[0]),
    )
    return msprime.sim_mutations(ts, rate=spec.mutation_rate, random_seed=int(seeds[1]))


class _PanelHeader:
    """A file-like sink for ``ts.write_vcf``: the body passes through to ``out``; the header is kept
    for the first chromosome only, with ``contigs`` (every chromosome's) and ``provenance`` before its
    ``#CHROM`` line, as one VCF of several chromosomes needs."""

    def __init__(self, out, first: bool, contigs, provenance: str):
        self.out, self.first, self.contigs, self.provenance = out, first, contigs, provenance
        self._head: list[str] = []
        self._body = False

    def write(self, text: str) -> None:
        if self._body:
            self.out.write(text)
            return
        self._head.append(text)
        head = "".join(self._head)
        at = head.find("#CHROM")
        end = head.find("\n", at) if at >= 0 else -1
        if end < 0:
            return
        self._body = True
        lines = head[: end + 1].splitlines(keepends=True)
        if self.first:
            contig = next(ln for ln in lines if ln.startswith("##contig"))
            keep = [ln for ln in lines[:-1] if not ln.startswith("##contig")]
            self.out.write("".join([*keep, *self.contigs(contig), self.provenance, lines[-1]]))
        self.out.write(head[end + 1 :])


def _contig_lines(chromosomes: list[str]):
    """Every chromosome's ``##contig`` line, made from the first one's (they share their length)."""

    def lines(first: str) -> list[str]:
        return [first.replace(f"ID={chromosomes[0]},", f"ID={c},", 1) for c in chromosomes]

    return lines


def _write_chromosome_vcf(f, ts, chrom: str, names: list[str], first: bool, header) -> None:
    ts.write_vcf(
        _PanelHeader(f, first, *header),
        contig_id=chrom,
        individual_names=names,
        # msprime positions start at 0; VCF's at 1.
        position_transform=lambda p: np.asarray(p).astype(np.int64) + 1,
    )


def thin_common_sites(pos: np.ndarray, maf: np.ndarray, spacing: int, min_maf: float) -> np.ndarray:
    """Indices of the sites of MAF at least ``min_maf``, greedily thinned along ``pos`` to at least
    ``spacing`` bp apart: the sites an array keeps (the demo's, and the benchmarks' panels)."""
    keep, last = [], -np.inf
    for i in np.flatnonzero(np.asarray(maf) >= min_maf):
        if pos[i] - last >= spacing:
            keep.append(i)
            last = pos[i]
    return np.asarray(keep, dtype=np.int64)


def array_sites(ts, chrom: str, spec: DemoSpec) -> pd.DataFrame:
    """Common biallelic SNVs, greedily thinned to at least ``array_spacing_bp`` apart."""
    rows, maf = [], []
    for var in ts.variants():
        if len(var.alleles) != 2 or any(a is None or len(a) != 1 for a in var.alleles):
            continue
        af = float(np.mean(var.genotypes))
        rows.append((chrom, int(var.site.position) + 1, var.alleles[0], var.alleles[1]))
        maf.append(min(af, 1 - af))
    sites = pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])
    keep = thin_common_sites(sites["pos"].to_numpy(), np.asarray(maf), spec.array_spacing_bp,
                             spec.array_min_maf)  # fmt: skip
    return sites.iloc[keep].reset_index(drop=True)


def make_demo(spec: DemoSpec, vcf_out: str | os.PathLike, array_out: str | os.PathLike) -> dict:
    """Simulate every chromosome, write a bgzipped + tabix-indexed VCF and the array manifest (and,
    with ``cohort_samples``, the target cohort). The VCF is streamed to disk chromosome by chromosome:
    a panel of any size is never held as text."""
    counts = sample_counts(spec)
    populations = [p for p, n in counts.items() for _ in range(n)]
    names = [f"{spec.sample_prefix}{i:04d}" for i in range(len(populations))]
    vcf_out = Path(vcf_out)
    provenance = (
        f"##ragimpute_demo=<version={__version__},seed={spec.seed},msprime={msprime.__version__}>\n"
    )
    header = (_contig_lines([str(c) for c in spec.chromosomes]), provenance)
    arrays, maps, stats = [], [], {}
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(scratch_dir(vcf_out))
        cohort = None
        if spec.cohort_samples > 0:
            scratch = stack.enter_context(scratch_dir(vcf_out.parent / COHORT_VCF))
            cohort = _CohortWriter(spec, vcf_out.parent, scratch, len(names), provenance)
        with open(Path(d) / "panel.vcf", "w") as f:
            for i, chrom in enumerate(spec.chromosomes):
                chrom = str(chrom)
                rate_map = recombination_map(spec, i)
                maps.append(plink_map_rows(rate_map, chrom))
                ts = simulate_chromosome(spec, i)
                panel = ts if cohort is None else _panel_only(ts, len(names))
                _write_chromosome_vcf(f, panel, chrom, names, i == 0, header)
                arr = array_sites(panel, chrom, spec)
                arrays.append(arr)
                stats[chrom] = {
                    "sites": panel.num_sites,
                    "mutations": panel.num_mutations,
                    "array_sites": len(arr),
                    "map_cm": round(float(maps[-1]["cm"].iloc[-1]), 6),
                    "hotspots": max(spec.hotspots, 0),
                }
                if cohort is not None:
                    stats[chrom]["cohort"] = cohort.add(ts, panel, chrom, arr)
                log.info(
                    "chromosome %s: %d sites, %d array sites", chrom, panel.num_sites, len(arr)
                )
        _bgzip_and_index(Path(d) / "panel.vcf", vcf_out)
        if cohort is not None:
            cohort.close()
    write_tsv(array_out, pd.concat(arrays, ignore_index=True))
    write_plink_map_rows(Path(vcf_out).parent / "genetic_map.map", pd.concat(maps))
    write_tsv(
        Path(vcf_out).parent / "populations.tsv",
        pd.DataFrame({"sample": names, "population": populations}),
    )
    info = {
        "populations": counts,
        "spec": asdict(spec),
        "chromosomes": stats,
        "ragimpute": __version__,
        "msprime": msprime.__version__,
    }
    if cohort is not None:
        info["cohort"] = cohort.summary()
    write_json(Path(vcf_out).parent / "demo.json", info)
    return info


def _bgzip_and_index(plain: Path, out: Path) -> None:
    """bgzip + tabix-index a VCF file; the data file lands first, then its (newer) index."""
    with atomic_path(out, suffix=".vcf.gz") as gz:
        pysam.tabix_compress(str(plain), str(gz), force=True)
        pysam.tabix_index(str(gz), preset="vcf", force=True)
        os.replace(str(gz) + ".tbi", plain.with_suffix(".tbi"))
    os.replace(plain.with_suffix(".tbi"), str(out) + ".tbi")


def _panel_only(ts, n_panel: int):
    """The panel's part of a simulation of panel and cohort: its individuals (the first ``n_panel``)
    and the sites that vary among them or that they all carry."""
    return ts.simplify(samples=ts.samples()[: 2 * n_panel], filter_populations=False)


COHORT_VCF, COHORT_TRUTH_VCF = "cohort.vcf.gz", "cohort_truth.vcf.gz"


class _CohortWriter:
    """The cohort's VCFs, streamed chromosome by chromosome: its phased genotypes at the array sites
    (``cohort.vcf.gz``) and, for the first ``cohort_truth_samples``, at every panel site
    (``cohort_truth.vcf.gz``), with the panel's REF and ALT. A site where a cohort haplotype carries an
    allele the panel lacks is left out of both (counted)."""

    BLOCK = 2000  # sites formatted at a time

    def __init__(self, spec: DemoSpec, out_dir: Path, scratch: Path, n_panel: int, provenance: str):
        self.spec, self.out_dir, self.n_panel = spec, Path(out_dir), n_panel
        n = spec.cohort_samples
        self.n_truth = min(n, spec.cohort_truth_samples) if spec.cohort_truth_samples > 0 else n
        self.names = [f"{spec.sample_prefix}C{i:05d}" for i in range(n)]
        self.populations = [p for p, k in cohort_counts(spec).items() for _ in range(k)]
        self._scratch = Path(scratch)
        contigs = "".join(
            f"##contig=<ID={c},length={int(spec.sequence_length)}>\n" for c in spec.chromosomes
        )
        head = (
            "##fileformat=VCFv4.2\n##source=ragimpute demo cohort\n"
            '##FILTER=<ID=PASS,Description="All filters passed">\n'
            '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
            + contigs
            + provenance
            + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t"
        )
        self._files = {}
        for name, samples in (
            (COHORT_VCF, self.names),
            (COHORT_TRUTH_VCF, self.names[: self.n_truth]),
        ):
            f = pysam.BGZFile(str(self._scratch / name), "wb")
            f.write((head + "\t".join(samples) + "\n").encode())
            self._files[name] = f
        self.counts = {"typed_sites": 0, "truth_sites": 0, "sites_left_out": 0}

    def add(self, ts, panel, chrom: str, array: pd.DataFrame) -> dict:
        """Write one chromosome (``ts``: panel and cohort; ``panel``: the panel's part of it)."""
        before = dict(self.counts)
        cohort = ts.samples()[2 * self.n_panel :]
        typed = set(array["pos"].tolist())
        panel_sites = panel.variants(samples=panel.samples()[:1])  # the panel's alleles per site
        site = next(panel_sites, None)
        rows: list[tuple] = []
        for var in ts.variants(samples=cohort):
            if site is None or var.site.position != site.site.position:
                continue  # a site of the cohort only: the panel cannot impute it
            alleles = site.alleles
            site = next(panel_sites, None)
            index = np.array([alleles.index(a) if a in alleles else -1 for a in var.alleles])
            g = index[var.genotypes]
            if (g < 0).any():
                self.counts["sites_left_out"] += 1
                continue
            pos = int(var.site.position) + 1
            rows.append((pos, alleles[0], ",".join(alleles[1:]) or ".", g.astype(np.uint8)))
            if len(rows) == self.BLOCK:
                self._write(chrom, rows, typed)
                rows = []
        self._write(chrom, rows, typed)
        return {k: self.counts[k] - before[k] for k in self.counts}

    def _write(self, chrom: str, rows: list[tuple], typed: set[int]) -> None:
        if not rows:
            return
        text = _genotype_text(np.stack([r[3] for r in rows]))
        n_truth = 4 * self.n_truth  # bytes of the first n_truth samples' genotypes
        for (pos, ref, alt, _), line in zip(rows, text, strict=True):
            prefix = f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t.\tPASS\t.\tGT\t".encode()
            if pos in typed:
                self._files[COHORT_VCF].write(prefix + line.tobytes())
                self.counts["typed_sites"] += 1
            if self.n_truth:
                self._files[COHORT_TRUTH_VCF].write(prefix + line[: n_truth - 1].tobytes() + b"\n")
                self.counts["truth_sites"] += 1

    def close(self) -> None:
        """Compress the last blocks, index, and move both VCFs (then their indexes) into place."""
        for name, f in self._files.items():
            f.close()
            pysam.tabix_index(str(self._scratch / name), preset="vcf", force=True)
        for name in self._files:
            os.replace(self._scratch / name, self.out_dir / name)
            os.replace(self._scratch / f"{name}.tbi", self.out_dir / f"{name}.tbi")
        write_tsv(
            self.out_dir / "cohort_populations.tsv",
            pd.DataFrame({"sample": self.names, "population": self.populations}),
        )
        write_json(self.out_dir / "cohort.json", self.summary())

    def summary(self) -> dict:
        return {
            "samples": len(self.names),
            "truth_samples": self.n_truth,
            "populations": cohort_counts(self.spec),
            "vcf": COHORT_VCF,
            "truth_vcf": COHORT_TRUTH_VCF,
            **self.counts,
        }


def _genotype_text(g: np.ndarray) -> np.ndarray:
    """(sites, 2 * samples) allele indices -> (sites, 4 * samples) bytes ``a|b\t...a|b\n``."""
    m, h = g.shape
    out = np.empty((m, h // 2, 4), dtype=np.uint8)
    out[:, :, 0] = g[:, 0::2] + ord("0")
    out[:, :, 1] = ord("|")
    out[:, :, 2] = g[:, 1::2] + ord("0")
    out[:, :, 3] = ord("\t")
    out[:, -1, 3] = ord("\n")
    return out.reshape(m, -1)


def write_plink_map_rows(path: str | os.PathLike, rows: pd.DataFrame) -> None:
    """PLINK ``.map`` text (no header): chrom id cM bp."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for c, i, g, b in rows[["chrom", "id", "cm", "bp"]].itertuples(index=False):
                f.write(f"{c}\t{i}\t{g:.8f}\t{int(b)}\n")
