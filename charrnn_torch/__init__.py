"""charrnn_torch: character-level RNNs (tanh, LSTM, GRU) written by hand, proven against a numpy BPTT.

The Python API (api.py): ``load`` a trained model and ``sample``, ``score`` or ``trace`` with it;
``train`` from a config, as the ``charrnn`` command does.
"""
import os

# OpenMP's idle threads spin while they wait for the next parallel region (libgomp: 300,000 turns):
# on a CPU shared with another process they take the time that process needs, and the run slows by
# far more than its fair share. Threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) keep the fair
# share but slow a run alone; a short spin first keeps both (data/results/performance-cpu.md).
# OpenMP reads it once, when torch loads: so here, before the first torch import of every way in
# (the charrnn command, python -m charrnn_torch, scripts/, import charrnn_torch). A user's own
# OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
SPIN_COUNT = "1000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)

from .api import Model, load, train  # noqa: E402
from .errors import RunFailed, UserError  # noqa: E402
from .model.cells import CharRNN  # noqa: E402
from .sampling.sample import Sampling  # noqa: E402

__all__ = ["CharRNN", "Model", "RunFailed", "Sampling", "UserError", "load", "train"]
__version__ = "0.1.0"
