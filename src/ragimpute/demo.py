"""The embedded demo panel: a seeded coalescent simulation with human-scale parameters.

A new user can run the whole pipeline with no download. The panel is phased and mostly biallelic; the
Jukes-Cantor mutation model leaves a few multi-allelic sites in it, which exercise the skip counting
of the windowing stage as real panels do.

Two histories: one population that grew (the default), or ``admixed``: the American admixture model
of Browning et al. (2018, stdpopsim's AmericanAdmixture_4B18): African, European and East Asian
populations, and an admixed population founded 12 generations ago from them (1/6, 1/3, 1/2). With
``admixed`` the reference samples come from the three source populations and the held-out targets
are admixed (``populations.tsv`` says who is who; the split stage puts every ADMIX sample in test).

Recombination is uniform (``recombination_rate``) unless ``hotspots`` > 0: then each chromosome gets
that many narrow hotspots (``hotspot_width_bp`` wide, ``hotspot_intensity`` times the background
rate), one placed at random in each of as many equal stretches. Either way the simulated map is
written as ``genetic_map.map`` (PLINK: chrom id cM bp, Beagle's ``map=`` format) beside the panel.

The held-out targets can be made what a genotyping array delivers (``ArrayNoise``, applied by the
``demo_targets`` stage): unphased genotypes (``0/1``), genotype errors and missing calls.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msprime
import numpy as np
import pandas as pd

from . import __version__
from .atomic import write_json, write_tsv
from .logs import log
from .vcf_write import write_bgzip_vcf


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


def sample_counts(spec: DemoSpec) -> dict[str, int]:
    """Individuals simulated per population, in the order they appear in the panel."""
    if not spec.admixed:
        return {"pop": spec.n_samples}
    each = [spec.n_samples // 3 + (i < spec.n_samples % 3) for i in range(3)]
    return {"AFR": each[0], "EUR": each[1], "ASIA": each[2], ADMIXED_TARGETS: spec.admixed_samples}


def _demography(spec: DemoSpec) -> msprime.Demography:
    if spec.admixed:
        return _american_admixture()
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
    ts = msprime.sim_ancestry(
        samples=sample_counts(spec),
        ploidy=2,
        demography=_demography(spec),
        sequence_length=spec.sequence_length,
        recombination_rate=recombination,
        random_seed=int(seeds[0]),
    )
    return msprime.sim_mutations(ts, rate=spec.mutation_rate, random_seed=int(seeds[1]))


def _vcf_text(ts, chrom: str, names: list[str]) -> str:
    buf = io.StringIO()
    ts.write_vcf(
        buf,
        contig_id=chrom,
        individual_names=names,
        # msprime positions start at 0; VCF's at 1.
        position_transform=lambda p: np.asarray(p).astype(np.int64) + 1,
    )
    return buf.getvalue()


def array_sites(ts, chrom: str, spec: DemoSpec) -> pd.DataFrame:
    """Common biallelic SNVs, greedily thinned to at least ``array_spacing_bp`` apart."""
    rows = []
    last = -np.inf
    for var in ts.variants():
        if len(var.alleles) != 2 or any(a is None or len(a) != 1 for a in var.alleles):
            continue
        af = float(np.mean(var.genotypes))
        if min(af, 1 - af) < spec.array_min_maf:
            continue
        pos = int(var.site.position) + 1
        if pos - last < spec.array_spacing_bp:
            continue
        last = pos
        rows.append((chrom, pos, var.alleles[0], var.alleles[1]))
    return pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])


def make_demo(spec: DemoSpec, vcf_out: str | os.PathLike, array_out: str | os.PathLike) -> dict:
    """Simulate every chromosome, write a bgzipped + tabix-indexed VCF and the array manifest."""
    counts = sample_counts(spec)
    populations = [p for p, n in counts.items() for _ in range(n)]
    names = [f"{spec.sample_prefix}{i:04d}" for i in range(len(populations))]
    header: list[str] = []
    contigs: list[str] = []
    body: list[str] = []
    arrays = []
    maps = []
    stats = {}
    for i, chrom in enumerate(spec.chromosomes):
        rate_map = recombination_map(spec, i)
        maps.append(plink_map_rows(rate_map, chrom))
        ts = simulate_chromosome(spec, i)
        text = _vcf_text(ts, chrom, names)
        lines = text.splitlines(keepends=True)
        head = [ln for ln in lines if ln.startswith("#")]
        contigs += [ln for ln in head if ln.startswith("##contig")]
        if not header:
            header = [ln for ln in head if not ln.startswith("##contig")]
        body += [ln for ln in lines if not ln.startswith("#")]
        arr = array_sites(ts, chrom, spec)
        arrays.append(arr)
        stats[chrom] = {
            "sites": ts.num_sites,
            "mutations": ts.num_mutations,
            "array_sites": len(arr),
            "map_cm": round(float(maps[-1]["cm"].iloc[-1]), 6),
            "hotspots": max(spec.hotspots, 0),
        }
        log.info("chromosome %s: %d sites, %d array sites", chrom, ts.num_sites, len(arr))
    provenance = (
        f"##ragimpute_demo=<version={__version__},seed={spec.seed},msprime={msprime.__version__}>\n"
    )
    text = "".join(header[:-1] + contigs + [provenance, header[-1]] + body)

    vcf_out = Path(vcf_out)
    write_bgzip_vcf(text, vcf_out)
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
    write_json(Path(vcf_out).parent / "demo.json", info)
    return info


def write_plink_map_rows(path: str | os.PathLike, rows: pd.DataFrame) -> None:
    """PLINK ``.map`` text (no header): chrom id cM bp."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for c, i, g, b in rows[["chrom", "id", "cm", "bp"]].itertuples(index=False):
                f.write(f"{c}\t{i}\t{g:.8f}\t{int(b)}\n")
