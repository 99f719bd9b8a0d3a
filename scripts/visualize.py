"""See inside a trained model: python scripts/visualize.py --checkpoint runs/shakespeare --out viz/"""
import sys

from charrnn_torch.cli import visualize_main

if __name__ == "__main__":
    sys.exit(visualize_main(sys.argv[1:]))
