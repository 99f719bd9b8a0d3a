"""Validation loss against wall-clock minutes, for runs side by side: a PNG.

    python scripts/plot_runs.py runs/shakespeare runs/shakespeare_lstm runs/shakespeare_gru --out cells.png
"""
import sys

from charrnn_torch.cli import plot_main

if __name__ == "__main__":
    sys.exit(plot_main(sys.argv[1:]))
