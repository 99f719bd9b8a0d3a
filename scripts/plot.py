"""Validation loss against minutes of training, runs side by side: python scripts/plot.py RUN... --out runs/runs.png

The same as `charrnn plot`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("plot", sys.argv[1:], "python scripts/plot.py"))
