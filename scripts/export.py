"""Export a trained model: python scripts/export.py --checkpoint runs/shakespeare --format html --out runs/playground.html

The same as `charrnn export`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("export", sys.argv[1:], "python scripts/export.py"))
