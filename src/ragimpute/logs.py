"""Logging set-up shared by the CLI and the Snakemake scripts, and a progress reporter."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ragimpute")


def setup_logging(
    log_file: str | None = None, level: int = logging.INFO, append: bool = False
) -> None:
    """Log to stderr, and to ``log_file`` when given (Snakemake's ``log:``; ``append``: after what
    is there, as a process spawned by the one that made it)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        if not append:
            open(log_file, "w").close()
        # always opened to append (O_APPEND): processes spawned by this one log to the same file,
        # and a handler writing at its own offset would overwrite their lines
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    # faiss's loader reports at INFO every optimised build it looked for and did not find
    logging.getLogger("faiss").setLevel(logging.WARNING)


class Progress:
    """Periodic log line with count, rate and ETA, for long loops.

    Prints at most every ``every_s`` seconds (and once at the end) so that cluster logs stay short.
    """

    def __init__(self, total: int, what: str, unit: str = "items", every_s: float = 10.0):
        self.total = max(int(total), 0)
        self.what = what
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = self.t0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(now)

    def close(self) -> float:
        now = time.perf_counter()
        self._emit(now, final=True)
        return now - self.t0

    def _emit(self, now: float, final: bool = False) -> None:
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        if final:
            log.info(
                "%s: %d %s in %.1f s (%.1f %s/s)",
                self.what,
                self.done,
                self.unit,
                elapsed,
                rate,
                self.unit,
            )
            return
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        log.info(
            "%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %.0f s",
            self.what,
            self.done,
            self.total,
            self.unit,
            pct,
            rate,
            self.unit,
            left,
        )
