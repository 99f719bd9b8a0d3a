"""Generate from a checkpoint: python scripts/sample.py --checkpoint runs/shakespeare --prime "ROMEO:"

The same as `charrnn sample`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("sample", sys.argv[1:], "python scripts/sample.py"))
