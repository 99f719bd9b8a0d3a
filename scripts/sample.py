"""Generate from a checkpoint: python scripts/sample.py --checkpoint runs/shakespeare --prime "ROMEO:" """
import sys

from charrnn_torch.cli import sample_main

if __name__ == "__main__":
    sys.exit(sample_main(sys.argv[1:]))
