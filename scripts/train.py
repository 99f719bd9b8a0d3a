"""Train a char-RNN: python scripts/train.py --config shakespeare.yaml [key=value ...]"""
import sys

from charrnn_torch.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
