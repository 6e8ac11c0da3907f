"""Benchmarks of `ncm-bench` (scripts/bench_ncm.py): step overhead (step.py),
scaling, test-time throughput and dataset conversion."""
