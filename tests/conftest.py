import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture
def tiny_text():
    """A small corpus with a fixed, small vocabulary: cheap to train on in a test."""
    line = "the quick brown fox jumps over the lazy dog. "
    return "".join(line[i:] + line[:i] + "\n" for i in range(40)) * 10


def run_script(name, *args, cwd=None, env=None, timeout=300):
    import subprocess
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=full_env,
                          timeout=timeout)
