"""python -m charrnn_torch COMMAND ...: the charrnn command without installing it."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m charrnn_torch"))
