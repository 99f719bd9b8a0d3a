"""Repair text: python scripts/fill.py --checkpoint runs/bidirectional --text "th_ c_t s_t on the m_t"

The same as `charrnn fill`; `--help` lists the flags."""
import sys

from charrnn_torch.cli import run

if __name__ == "__main__":
    sys.exit(run("fill", sys.argv[1:], "python scripts/fill.py"))
