"""Tools around runs: the benchmarks (bench.py, data_bench.py), grid sweeps (sweep.py) and plots (plots.py)."""
