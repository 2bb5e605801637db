"""The retrieve stage: top-K reference haplotypes for every query haplotype window, as Parquet."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import PARQUET_WRITE, atomic_path
from .index import HaplotypeIndex, query_block
from .logs import Progress, log
from .tokens import TokenTable
from .windows import DIGEST_KEY


def retrieve(
    tokens_path: str | os.PathLike,
    index_dir: str | os.PathLike,
    k: int,
    out_path: str | os.PathLike,
    threads: int = 1,
) -> dict:
    """One row per (window, sample, hap): ``neighbours`` (index ids) and ``distances``, nearest first;
    one Parquet row group per window, written as it is searched, so that neither this stage nor
    training (which reads a window's row group when a batch needs it) holds the whole table."""
    faiss.omp_set_num_threads(max(1, threads))
    table = TokenTable(tokens_path)
    index = HaplotypeIndex(index_dir)
    index.check(table.mask_hash)
    samples = np.repeat(np.asarray(table.samples, dtype=object), 2)
    haps = np.tile(np.array([0, 1], dtype=np.int8), len(table.samples))
    top1 = []
    meta = {
        "mask_hash": table.mask_hash,
        "index": str(index_dir),
        "index_kind": index.kind,
        "k": k,
        "split": table.split,
        # the haplotypes the neighbour ids name: training checks them against its reference
        DIGEST_KEY: index.meta.get(DIGEST_KEY),
    }
    schema = pa.schema(
        [
            ("window", pa.int32()),
            ("sample", pa.string()),
            ("hap", pa.int8()),
            ("neighbours", pa.list_(pa.field("element", pa.int32()), k)),
            ("distances", pa.list_(pa.field("element", pa.float32()), k)),
        ]
    ).with_metadata({key: str(v) for key, v in meta.items() if v is not None})
    progress = Progress(table.n_windows, f"retrieve {table.split}", "windows")
    with atomic_path(out_path, suffix=".parquet") as tmp:
        with pq.ParquetWriter(tmp, schema, **PARQUET_WRITE) as writer:
            for w in range(table.n_windows):
                ids, dist = index.search(query_block(table, w), k)
                n = len(ids)
                part = pa.table(
                    {
                        "window": pa.array(np.full(n, w, dtype=np.int32)),
                        "sample": pa.array(samples, pa.string()),
                        "hap": pa.array(haps),
                        "neighbours": pa.FixedSizeListArray.from_arrays(
                            pa.array(ids.ravel().astype(np.int32)), k
                        ),
                        "distances": pa.FixedSizeListArray.from_arrays(
                            pa.array(dist.ravel().astype(np.float32)), k
                        ),
                    },
                    schema=schema,
                )
                writer.write_table(part, row_group_size=max(n, 1))
                top1.append(dist[:, 0])
                progress.update()
    progress.close()
    stats = {"mean_top1_distance": float(np.mean(np.concatenate(top1))), "k": k}
    log.info(
        "retrieval %s/%s: k=%d, mean distance to nearest %.2f",
        table.mask_hash,
        table.split,
        k,
        stats["mean_top1_distance"],
    )
    return stats
