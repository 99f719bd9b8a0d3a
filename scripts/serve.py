"""Serve a model over HTTP on this machine: python scripts/serve.py --checkpoint runs/shakespeare

The same as `charrnn serve`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("serve", sys.argv[1:], "python scripts/serve.py"))
