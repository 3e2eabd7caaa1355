"""The version of prunekit (one place; ``prunekit.__version__`` and the reports read it)."""

__version__ = "0.1.0"
