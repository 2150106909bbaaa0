"""Benchmarks of the gateway (``./run.sh bench``): streams held, conversion speed, memory, processes.

Not part of the unit tests: only ``--smoke`` runs in CI (tests/test_bench_smoke.py), and it
asserts that the bench runs and that every text came out exact, never a timing.
"""
