"""Benchmarks: measured, never asserted. Run with `make bench`."""
