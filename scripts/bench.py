"""Training throughput of every implementation, side by side in one run.

    python scripts/bench.py                       # CPU: tutorial and cpu shapes
    python scripts/bench.py --device cuda         # GPU: gpu and gpu-L3 shapes, fp32, TF32 and bf16
    python scripts/bench.py --shapes smoke --precisions fp32,tf32,bf16 --repeats 1   # a seconds-long dry run
    python scripts/bench.py --shapes tutorial --json out.json
    python scripts/bench.py --corpus-mb 100,1000  # the corpus: start-up, cache build speed, peak RSS
"""
import sys

from charrnn_torch.cli import bench_main

if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))
