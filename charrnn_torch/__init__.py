"""charrnn_torch: character-level RNNs (tanh, LSTM, GRU) written by hand, proven against a numpy BPTT."""
from .model.cells import CharRNN

__all__ = ["CharRNN"]
__version__ = "0.1.0"
