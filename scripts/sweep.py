"""Grid sweep: python scripts/sweep.py --config shakespeare.yaml --grid train.lr=1e-3,3e-3 model.hidden_size=256,512"""
import sys

from charrnn_torch.cli import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main(sys.argv[1:]))
