"""The version of ssl-bench (one place; the package and provenance records read it)."""

__version__ = "0.1.0"
