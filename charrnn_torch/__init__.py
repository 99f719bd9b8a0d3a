"""charrnn_torch: a hand-written character-level tanh RNN, proven against a numpy BPTT."""
from .model import CharRNN

__all__ = ["CharRNN"]
__version__ = "0.1.0"
