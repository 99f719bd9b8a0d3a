"""Training throughput of every implementation, side by side: python scripts/bench.py [--device cuda]

The same as `charrnn bench`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("bench", sys.argv[1:], "python scripts/bench.py"))
