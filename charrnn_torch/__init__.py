"""charrnn_torch: character-level RNNs (tanh, LSTM, GRU) written by hand, proven against a numpy BPTT.

The Python API (api.py): ``load`` a trained model and ``sample``, ``score`` or ``trace`` with it;
``train`` from a config, as the ``charrnn`` command does.
"""
from .api import Model, load, train
from .errors import RunFailed, UserError
from .model.cells import CharRNN
from .sampling.sample import Sampling

__all__ = ["CharRNN", "Model", "RunFailed", "Sampling", "UserError", "load", "train"]
