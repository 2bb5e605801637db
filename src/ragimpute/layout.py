"""Where every artifact of a run lives under its results directory: the one place that spells the
layout, used by the workflow's rules, the CLI and the stages.

Per-unit artifacts sit under ``<stage>/<unit>/``: a unit is a chromosome (``20``) or, with
``chunks.length`` set, a chunk of one (``20.c003``, see ``ragimpute.chunks``). The imputed VCF of a
chunked chromosome is ligated from its chunks' VCFs into ``impute/<chrom>/<method>.vcf.gz``, where an
unchunked chromosome's is written directly. In the workflow, arguments may be wildcard patterns
(``layout.sites("{unit}")``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    root: str

    def __call__(self, *parts: str) -> str:
        return os.path.join(str(self.root), *parts)

    # -- the panel, split into units ----------------------------------------------------------------

    def demo(self, name: str) -> str:
        return self("demo", name)

    def split(self, name: str = "samples.tsv") -> str:
        return self("split", name)

    def windows(self, unit: str, name: str | None = None) -> str:
        """``windows/<unit>/`` or a file in it (sites.parquet, windows.parquet, windows.json, ...)."""
        return self("windows", unit) if name is None else self("windows", unit, name)

    def sites(self, unit: str) -> str:
        return self.windows(unit, "sites.parquet")

    def haplotypes(self, unit: str, split: str) -> str:
        return self("windows", unit, "haplotypes", f"{split}.parquet")

    # -- masks and what is keyed on them ------------------------------------------------------------

    def mask_store(self, unit: str) -> str:
        return self("masks", unit)

    def current_masks(self, unit: str) -> str:
        return self("masks", unit, "current.json")

    def mask(self, unit: str, mask_hash: str) -> str:
        return self("masks", unit, mask_hash, "mask.parquet")

    def tokens(self, unit: str, mask_hash: str, split: str) -> str:
        return self("tokens", unit, mask_hash, f"{split}.parquet")

    def index_root(self, unit: str) -> str:
        return self("index", unit)

    def index(self, unit: str, mask_hash: str) -> str:
        return self("index", unit, mask_hash)

    def retrieval(self, unit: str, mask_hash: str, split: str) -> str:
        return self("retrieval", unit, mask_hash, f"{split}.parquet")

    def prior(self, unit: str, mask_hash: str, split: str) -> str:
        return self("prior", unit, mask_hash, f"{split}.parquet")

    def states_root(self, unit: str) -> str:
        return self("states", unit)

    def states(self, unit: str, mask_hash: str) -> str:
        return self("states", unit, mask_hash)

    # -- training -----------------------------------------------------------------------------------

    def model(self, name: str = "model.pt") -> str:
        return self("model", name)

    def model_state(self) -> str:
        return self("model_state")

    # -- targets, imputation, evaluation ------------------------------------------------------------

    def targets(self, unit: str, name: str) -> str:
        """``targets/<unit>/<name>``: reference.vcf.gz, target.vcf.gz, truth.vcf.gz,
        genetic_map.map, aligned/..., phased/..."""
        return self("targets", unit, name)

    def aligned(self, unit: str, name: str = "target.vcf.gz") -> str:
        return self("targets", unit, "aligned", name)

    def phased(self, unit: str, name: str = "target.vcf.gz") -> str:
        return self("targets", unit, "phased", name)

    def imputed(self, unit: str, method: str, suffix: str = ".vcf.gz") -> str:
        """``impute/<unit>/<method>.vcf.gz`` (``suffix`` .vcf.gz.tbi, .json for the others)."""
        return self("impute", unit, f"{method}{suffix}")

    def batch(self, unit: str, method: str, batch: str, suffix: str = ".vcf.gz") -> str:
        """One batch of target samples: ``impute/<unit>/batches/<method>.<batch><suffix>``."""
        return self("impute", unit, "batches", f"{method}.{batch}{suffix}")

    def evaluation(self, unit: str, method: str, name: str) -> str:
        return self("evaluation", unit, method, name)

    def comparison(self, name: str = "comparison.tsv") -> str:
        return self("evaluation", name)

    # -- every rule's log and Snakemake benchmark ---------------------------------------------------

    def log(self, path: str) -> str:
        return self("logs", path)

    def bench(self, path: str) -> str:
        return self("benchmarks", path)
