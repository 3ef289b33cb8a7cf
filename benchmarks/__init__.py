"""Benchmarks for issue #5: `make bench` (full) and `make bench-quick` (small, run in CI)."""
