"""A tabix index (.tbi) built while a bgzipped VCF is written, as ``bcftools view --write-index``
does: the records' coordinates are read from the text on its way to the compressor, so that the file
is not decompressed and parsed a second time to index it (``pysam.tabix_index`` took 0.5-0.7 s per
200 MB of imputed text, 1,000 targets on a 5 Mb chromosome).

The index is the one htslib writes for ``tabix -p vcf`` (the tabix format: SAM/BAM specification,
section 5.2, and htslib's ``hts_idx_push``, ``hts_idx_finish`` and ``compress_binning``): the same
bins, chunks, linear index and per-contig record counts. Only the order of the bins in the file
differs (htslib writes them in its hash table's order); readers do not depend on it. The tests compare
both indexes and the records that region queries return through them.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .bgzf import BgzfWriter

MIN_SHIFT, LEVELS = 14, 5  # tabix: 16 kb leaf bins, 5 levels
N_BINS = ((1 << 18) - 1) // 7  # 37449
META_BIN = N_BINS + 1  # per-contig offsets and record counts
MIN_MARKER_DIST = 0x10000  # htslib's HTS_MIN_MARKER_DIST: smaller bins merge into their parent
# htslib's tbx_conf_vcf: preset VCF (2), CHROM column 1, POS column 2, no end column (REF's length
# gives it), meta lines start with '#', no lines skipped
VCF_CONF = (2, 1, 2, 0, ord("#"), 0)
SCAN_BYTES = 1 << 20  # smaller writes are gathered, so that a file written line by line scans fast


HEAD = 64  # bytes of a line read at once for CHROM, POS, ID and REF; longer heads are rare
LINES = 16384  # lines parsed at a time (HEAD bytes each and their temporaries)
_COLS = np.arange(HEAD)


def _newlines(buf: np.ndarray) -> np.ndarray:
    """Offsets of the newline bytes of buf."""
    step = 1 << 24  # the comparison's temporary stays small
    return np.concatenate(
        [np.flatnonzero(buf[a : a + step] == 10) + a for a in range(0, len(buf), step)] or [[]]
    ).astype(np.int64)


def _records(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """For the lines buf[starts[i]:ends[i]] (newline excluded) that are records (not '#' lines):
    their line numbers, POS, REF lengths and whether CHROM may differ from the previous record's
    (the caller compares the names there). Vectorised over the first ``HEAD`` bytes of each line;
    a line whose first four fields are longer is parsed on its own."""
    rows, pos, ref_len, maybe_new = [], [], [], []
    prev = None  # the previous record's head and CHROM length
    for a in range(0, len(starts), LINES):
        s, e = starts[a : a + LINES], ends[a : a + LINES]
        head = buf[np.minimum(s[:, None] + _COLS, len(buf) - 1)]
        inside = _COLS < (e - s)[:, None]
        rec = inside[:, 0] & (head[:, 0] != 35)  # '#'
        left = (head == 9) & inside
        tabs = np.empty((len(s), 4), np.int64)
        found = rec.copy()
        for k in range(4):
            tabs[:, k] = np.argmax(left, axis=1)
            found &= left[np.arange(len(s)), tabs[:, k]]
            left &= _COLS > tabs[:, k][:, None]
        t0, t1, t2, t3 = tabs.T
        n_digits = t1 - t0 - 1
        in_pos = (_COLS > t0[:, None]) & (_COLS < t1[:, None])
        digit = head.astype(np.int64) - 48
        power = np.where(in_pos, t1[:, None] - 1 - _COLS, 0)
        p = np.where(in_pos, digit * 10 ** np.minimum(power, 18), 0).sum(axis=1)
        ok = (
            found
            & (n_digits >= 1)
            & (n_digits <= 18)
            & ~(in_pos & ((digit < 0) | (digit > 9))).any(axis=1)
            & (t3 > t2 + 1)
        )
        p, r_len = np.where(ok, p, 0), t3 - t2 - 1
        for i in np.flatnonzero(rec & ~ok):  # the long heads (and bad lines: ValueError)
            p[i], r_len[i] = _parse_head(buf, int(s[i]), int(e[i]))
        keep = np.flatnonzero(rec)
        if not len(keep):
            continue
        h, c = head[keep], np.where(ok[keep], t0[keep], -1)  # -1: CHROM not in the head
        prev_h = np.vstack([prev[0][None] if prev else h[:1], h[:-1]])
        prev_c = np.r_[prev[1] if prev else -2, c[:-1]]
        differs = ((h != prev_h) & (_COLS < c[:, None])).any(axis=1)
        maybe_new.append((c < 0) | (c != prev_c) | differs)
        prev = (h[-1], c[-1])
        rows.append(keep + a)
        pos.append(p[keep])
        ref_len.append(r_len[keep])
    if not rows:
        return (np.zeros(0, np.int64),) * 3 + (np.zeros(0, bool),)
    return tuple(np.concatenate(x) for x in (rows, pos, ref_len, maybe_new))


def _parse_head(buf: np.ndarray, s: int, e: int) -> tuple[int, int]:
    """POS and the length of REF of one record line."""
    fields = buf[s:e].tobytes().split(b"\t", 4)
    try:
        if len(fields) < 5 or not fields[3] or not fields[1].isdigit():
            raise ValueError
        return int(fields[1]), len(fields[3])
    except ValueError:
        line = buf[s : min(e, s + 80)].tobytes().decode(errors="replace")
        raise ValueError(f"a record without a readable POS or REF: {line!r}") from None


def _parent(b: int) -> int:
    return (b - 1) >> 3


def _level_first(level: int) -> int:
    """The first bin of ``level`` (0: the whole contig; 5: 16 kb leaves from bin 4681)."""
    return ((1 << (3 * level)) - 1) // 7


def reg2bin(beg: np.ndarray, end: np.ndarray) -> np.ndarray:
    """htslib's ``hts_reg2bin`` for tabix (0-based half-open intervals), vectorised: the deepest
    level whose one bin holds the whole interval."""
    beg = np.asarray(beg, np.int64)
    last = np.asarray(end, np.int64) - 1
    out = np.zeros(beg.shape, np.int64)
    done = np.zeros(beg.shape, bool)
    for level in range(LEVELS, 0, -1):
        shift = MIN_SHIFT + 3 * (LEVELS - level)
        here = ~done & (beg >> shift == last >> shift)
        out[here] = _level_first(level) + (beg[here] >> shift)
        done |= here
    return out


class TabixIndexer:
    """``add(text)`` as the VCF's uncompressed bytes are written, then ``save(tbi, writer)`` with the
    closed ``BgzfWriter`` that compressed them (its block offsets turn byte offsets into virtual
    offsets). Records must be sorted by position within a contig and a contig's records together;
    otherwise ``add`` raises, as tabix refuses such a file."""

    def __init__(self, name: str | os.PathLike) -> None:
        self._name = str(name)  # for errors
        self._seen = 0  # uncompressed bytes scanned (complete lines)
        # bytes not yet scanned: small writes, and a line whose end has not been written yet
        self._pending: list[bytes] = []
        self._pending_len = 0
        self.names: list[str] = []
        self._parts: list[tuple[np.ndarray, ...]] = []  # (tid, beg, end, start, stop) per scan
        self._last: tuple[int, int] = (-1, -1)  # tid and beg of the last record

    def add(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= SCAN_BYTES:
            self._scan()

    def _scan(self) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending, self._pending_len = [], 0
        buf = np.frombuffer(data, np.uint8)
        nl = _newlines(buf)
        done = int(nl[-1]) + 1 if len(nl) else 0
        if done < len(data):  # an unfinished line waits for the rest of it
            self._pending, self._pending_len = [data[done:]], len(data) - done
        if not len(nl):
            return
        starts = np.r_[0, nl[:-1] + 1]
        try:
            rec, pos, ref_len, maybe_new = _records(buf, starts, nl)
        except ValueError as err:
            raise ValueError(f"{self._name}: {err}") from None
        if len(rec):
            self._add_records(data, starts[rec], nl[rec] + 1, pos, ref_len, maybe_new)
        self._seen += done

    def _add_records(self, data, start, stop, pos, ref_len, maybe_new) -> None:
        maybe_new[0] = True  # compared below with the previous scan's contig
        runs = np.flatnonzero(maybe_new)
        run_tid = np.empty(len(runs), np.int64)
        current = self._last[0]
        for r, i in enumerate(runs):
            s = int(start[i])
            chrom = data[s : data.index(b"\t", s)].decode()
            if current >= 0 and chrom == self.names[current]:
                pass
            elif chrom in self.names:
                raise ValueError(f"{self._name}: the records of {chrom} are not together")
            else:
                current = len(self.names)
                self.names.append(chrom)
            run_tid[r] = current
        tid = np.repeat(run_tid, np.diff(np.r_[runs, len(start)]))
        beg = pos - 1
        # positions go down only where a new contig starts (and not against the previous scan's)
        prev_beg = np.r_[self._last[1] if self._last[0] == tid[0] else -1, beg[:-1]]
        prev_tid = np.r_[tid[0], tid[:-1]]
        down = np.flatnonzero((beg < prev_beg) & (tid == prev_tid))
        if len(down):
            i = int(down[0])
            raise ValueError(
                f"{self._name}: records out of order: {self.names[tid[i]]}:{pos[i]} follows "
                f"position {prev_beg[i] + 1}"
            )
        self._parts.append((tid, beg, beg + ref_len, start + self._seen, stop + self._seen))
        self._last = (int(tid[-1]), int(beg[-1]))

    def save(self, tbi: str | os.PathLike, writer: BgzfWriter) -> None:
        """Write the index (BGZF-compressed, as tabix writes it) of the file ``writer`` closed."""
        if self._pending_len:
            self._pending.append(b"\n")  # a last line without its newline is still a record
            self._scan()
        empty = [np.zeros(0, np.int64)] * 5
        tid, beg, end, start, stop = [
            np.concatenate(c) for c in zip(*self._parts, strict=True)
        ] or empty
        v_start = writer.virtual_offsets(start)
        v_stop = writer.virtual_offsets(np.minimum(stop, writer.size))
        out = [b"TBI\x01", struct.pack("<i", len(self.names)), struct.pack("<6i", *VCF_CONF)]
        names = b"".join(n.encode() + b"\0" for n in self.names)
        out.append(struct.pack("<i", len(names)) + names)
        for t in range(len(self.names)):
            sel = slice(*np.searchsorted(tid, [t, t + 1]))
            out.append(_contig_index(beg[sel], end[sel], v_start[sel], v_stop[sel]))
        out.append(struct.pack("<Q", 0))  # records without coordinates
        f = BgzfWriter(tbi)
        try:
            f.write(b"".join(out))
        finally:
            f.close()


def _contig_index(beg, end, v_start, v_stop) -> bytes:
    """The binning and linear index of one contig's records (sorted by beg), as htslib builds them."""
    bins = reg2bin(beg, end)
    # a chunk per run of records in one bin (htslib starts a chunk whenever the bin changes)
    first = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    last = np.r_[first[1:], len(bins)] - 1
    chunks: dict[int, list[tuple[int, int]]] = {}
    for a, b in zip(first, last, strict=True):
        chunks.setdefault(int(bins[a]), []).append((int(v_start[a]), int(v_stop[b])))
    # compress_binning: a bin whose chunks span less than 64 KiB of compressed file moves into its
    # parent, if the parent has chunks of its own; deepest level first
    for level in range(LEVELS, 0, -1):
        for b in sorted(k for k in chunks if k >= _level_first(level)):
            c = chunks[b] = sorted(chunks[b])
            if (c[-1][1] >> 16) - (c[0][0] >> 16) < MIN_MARKER_DIST and _parent(b) in chunks:
                chunks[_parent(b)].extend(chunks.pop(b))
    for b, c in chunks.items():  # chunks that begin in the block where the previous one ends merge
        c.sort()
        merged = [c[0]]
        for u, v in c[1:]:
            if merged[-1][1] >> 16 >= u >> 16:
                merged[-1] = (merged[-1][0], max(merged[-1][1], v))
            else:
                merged.append((u, v))
        chunks[b] = merged
    chunks[META_BIN] = [(int(v_start[0]), int(v_stop[-1])), (len(beg), 0)]
    # linear index: per 16 kb window, the first record that overlaps it; a window without one takes
    # the next window's (htslib since 1.10; the last window always has one)
    w_first, w_last = beg >> MIN_SHIFT, (np.maximum(end, beg + 1) - 1) >> MIN_SHIFT
    n_win = int(w_last.max()) + 1
    earliest = np.full(n_win, len(beg), np.int64)  # record index; len(beg): none
    windows, at = np.unique(w_first, return_index=True)  # records are sorted: the first is earliest
    earliest[windows] = at
    for i in np.flatnonzero(w_last > w_first):  # records over several windows (rare: long REF)
        earliest[w_first[i] : w_last[i] + 1] = np.minimum(earliest[w_first[i] : w_last[i] + 1], i)
    held = np.where(earliest < len(beg), np.arange(n_win), n_win - 1)
    linear = v_start[earliest[np.minimum.accumulate(held[::-1])[::-1]]]
    out = [struct.pack("<i", len(chunks))]
    for b, c in chunks.items():
        out.append(struct.pack("<Ii", b, len(c)) + np.asarray(c, "<u8").tobytes())
    out.append(struct.pack("<i", n_win) + linear.astype("<u8").tobytes())
    return b"".join(out)
