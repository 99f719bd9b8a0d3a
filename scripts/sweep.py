"""Grid sweep: python scripts/sweep.py --config shakespeare.yaml --grid train.lr=1e-3,3e-3 model.hidden_size=256,512

The same as `charrnn sweep`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("sweep", sys.argv[1:], "python scripts/sweep.py"))
