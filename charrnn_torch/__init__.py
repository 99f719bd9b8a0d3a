"""charrnn_torch: character-level RNNs (tanh, LSTM, GRU) written by hand, proven against a numpy BPTT.

The Python API (api.py): ``load`` a trained model and ``sample``, ``score`` or ``trace`` with it;
``train`` from a config, as the ``charrnn`` command does.
"""
import os

# OpenMP's idle threads spin (the ACTIVE policy) while they wait for the next parallel region: on
# a CPU shared with another process they take the time that process needs, and the run slows by
# far more than its fair share (data/results/performance-cpu.md). PASSIVE threads sleep instead.
# OpenMP reads the variable once, when torch loads it: so here, before the first torch import of
# every way in (the charrnn command, python -m charrnn_torch, scripts/, import charrnn_torch).
# A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .api import Model, load, train  # noqa: E402
from .errors import RunFailed, UserError  # noqa: E402
from .model.cells import CharRNN  # noqa: E402
from .sampling.sample import Sampling  # noqa: E402

__all__ = ["CharRNN", "Model", "RunFailed", "Sampling", "UserError", "load", "train"]
__version__ = "0.1.0"
