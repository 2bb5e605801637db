"""Expand a Minimac3 ``.m3vcf.gz`` reference panel to a phased bgzipped VCF (GT only).

The public test data of the Michigan Imputation Server hold 1000 Genomes phase 1 chrX PAR1 (2,184
haplotypes, 39,198 markers with indels) only as an m3vcf, the format Minimac3 and Minimac4 read: the
panel is cut into blocks, each block lists, per haplotype, which of its unique haplotypes ("reps")
it carries, and each marker line gives the allele of every rep. Consecutive blocks share their
boundary marker, which is written once. Used by ``bench_real.py`` for a real panel with indels:

    python benchmarks/m3vcf_to_vcf.py X.PAR1.1000g.Phase1.v3.With.Parameter.Estimates.m3vcf.gz par1.vcf.gz
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import pysam


def samples_of(haplotype_columns: list[str]) -> list[str]:
    """``S_HAP_1 S_HAP_2 ...`` -> ``S ...``; the panel must be diploid throughout."""
    names = [c.rsplit("_HAP_", 1)[0] for c in haplotype_columns]
    if names[0::2] != names[1::2] or len(names) % 2:
        raise SystemExit(
            "the m3vcf's haplotype columns are not pairs <sample>_HAP_1, <sample>_HAP_2"
        )
    return names[0::2]


def convert(m3vcf: Path, out: Path) -> int:
    """Write ``out`` (bgzipped, tabix-indexed); the number of records written."""
    plain = out.with_suffix("")
    last_key, written, reps = None, 0, None
    with gzip.open(m3vcf, "rt") as src, open(plain, "w") as dst:
        dst.write("##fileformat=VCFv4.2\n")
        dst.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        for line in src:
            if line.startswith("##"):
                continue
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#CHROM"):
                samples = samples_of(fields[9:])
                dst.write("\t".join([*fields[:9], *samples]) + "\n")
                continue
            if fields[2].startswith("<BLOCK"):
                reps = np.array(fields[9:], dtype=np.int64)
                continue
            key = (fields[0], fields[1], fields[3], fields[4])
            if key == last_key:  # a block's first marker is the previous block's last
                continue
            last_key = key
            # a marker line has no FORMAT column: its 9th field is the reps' alleles, one digit each
            alleles = np.frombuffer(fields[8].encode(), dtype=np.uint8)[reps] - ord("0")
            pairs = alleles.reshape(-1, 2)
            gts = "\t".join(f"{a}|{b}" for a, b in pairs.tolist())
            dst.write("\t".join([*fields[:5], ".", "PASS", ".", "GT", gts]) + "\n")
            written += 1
    pysam.tabix_compress(str(plain), str(out), force=True)
    pysam.tabix_index(str(out), preset="vcf", force=True)
    plain.unlink()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("m3vcf", type=Path)
    ap.add_argument("out", type=Path, help="output .vcf.gz")
    args = ap.parse_args()
    print(f"wrote {convert(args.m3vcf, args.out)} records to {args.out}")


if __name__ == "__main__":
    main()
