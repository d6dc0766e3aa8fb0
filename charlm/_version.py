"""The version of charlm: one place, imported by the package and by what records versions."""

__version__ = "0.2.0"
