"""Throughput benchmarks (`cseg bench ...`); tests never assert on wall time."""
