"""Retrieval-augmented genotype imputation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ragimpute")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"
