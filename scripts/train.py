"""Train a char-RNN: python scripts/train.py --config shakespeare.yaml [key=value ...]

The same as `charrnn train`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:], "python scripts/train.py"))
