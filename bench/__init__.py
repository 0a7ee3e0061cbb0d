"""Benchmarks: scripts that print timings and ratios (never timed assertions)."""
