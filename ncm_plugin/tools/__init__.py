"""The command line: one module per command (installed as ncm-* console
scripts, wrapped by scripts/*.py), config checking, the ablation driver and
the benchmarks in bench/."""
