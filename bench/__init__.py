"""Benchmarks of xwhep (not tests: no thresholds). See docs/BENCHMARKS.md and ``python -m bench.run``."""
