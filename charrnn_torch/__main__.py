"""python -m charrnn_torch {train,sample,sweep} ...: the console scripts without installing them."""
import sys

from .cli import sample_main, sweep_main, train_main

COMMANDS = {"train": train_main, "sample": sample_main, "sweep": sweep_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m charrnn_torch {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
