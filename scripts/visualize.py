"""See inside a trained model: python scripts/visualize.py --checkpoint runs/shakespeare --out viz/

The same as `charrnn visualize`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("visualize", sys.argv[1:], "python scripts/visualize.py"))
