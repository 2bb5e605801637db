"""matplotlib set-up shared by the stages that draw: a headless backend and atomic PNG writes."""

from __future__ import annotations

import os

from .atomic import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: cluster nodes have no display. Imported on first use
    so that stages which draw nothing do not pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically (temp file + rename), then free it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
