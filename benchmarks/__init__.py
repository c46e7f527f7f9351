"""Benchmarks (``make bench``): each prints its figures and all are written to results.json."""
