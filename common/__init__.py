"""Shared code for every xwhep tier: wire schemas, enums, rights arithmetic, URIs, errors."""

__version__ = "0.1.0"
