"""The character-level tanh RNN, written by hand.

Shapes use one alphabet everywhere: B batch, T time steps, V vocabulary,
H hidden units, L layers. Weights are in the tutorial's column-vector
orientation, so ``W_xh @ x_t`` reads exactly as the maths:

    h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)
    y_t = W_hy h_t + b_y

Read this file side by side with ``reference.py``, its numpy twin.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import IMPLS
from .fused import rnn_recurrence


class RNNCell(nn.Module):
    """One tanh layer. Layer 0 reads character ids, layers above read h of the layer below."""

    def __init__(self, input_size, hidden_size, onehot_input):
        super().__init__()
        self.onehot_input = onehot_input
        self.W_xh = nn.Parameter(torch.empty(hidden_size, input_size))  # (H, V) or (H, H)
        self.W_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))  # (H, H)
        self.b_h = nn.Parameter(torch.empty(hidden_size))  # (H,)

    def input_projection(self, x):
        """W_xh x for a batch; x is ids (...,) for layer 0, else (..., H). Returns (..., H)."""
        if self.onehot_input:
            # x is one-hot, so W_xh x is column x of W_xh: a gather is the same maths
            # as the matrix product, without building the (V, B) one-hot matrix.
            return F.embedding(x, self.W_xh.t())
        return x @ self.W_xh.t()

    def pre_activation(self, x):
        """W_xh x + b_h for many steps at once, as one fresh tensor: (N,) ids or (N, H) -> (N, H)."""
        if self.onehot_input:
            # W_xh x is column x of W_xh, so this is a gather, with b_h added to the (V, H) table
            # W_xh^T + b_h for free. For many ids the table is made row-major first, so each
            # gathered row is one contiguous copy (4x faster at T*B = 8192 than gathering from
            # W_xh^T's column-major strides). That transpose costs ~40 us at V=65, H=512, more
            # than a whole gather of a few ids (sampling), which instead takes columns of W_xh
            # and transposes only those. index_select, not F.embedding: its backward is one
            # scatter-add, about half the time of embedding's dense backward here.
            if x.numel() >= self.W_xh.shape[1]:
                return (self.W_xh.t().contiguous() + self.b_h).index_select(0, x)
            return (self.W_xh.index_select(1, x).t() + self.b_h).contiguous()
        return torch.addmm(self.b_h, x, self.W_xh.t())

    def forward(self, x_t, h_prev):
        # x_t: (B,) ids or (B, H); h_prev: (B, H) -> h_t: (B, H)
        # Row-vector form of tanh(W_xh x + W_hh h + b_h): batch rows times W^T.
        return torch.tanh(self.input_projection(x_t) + h_prev @ self.W_hh.t() + self.b_h)


class CharRNN(nn.Module):
    """``forward(x, h0=None) -> (logits, h)`` with x (B, T) ids, h0 and h (L, B, H), logits (B, T, V).

    ``impl`` picks how the same maths runs: ``loop`` is the readable reference
    unroll below; ``fused`` hoists the input and output projections out of the
    time loop and runs the recurrence in a hand-written autograd Function
    (``fused.py``). Both pass the same tests against the numpy reference.
    """

    def __init__(self, vocab_size, hidden_size, num_layers=1, dropout=0.0, impl="loop"):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; expected one of {', '.join(IMPLS)}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.impl = impl
        self.cells = nn.ModuleList(
            RNNCell(vocab_size if l == 0 else hidden_size, hidden_size, onehot_input=(l == 0))
            for l in range(num_layers)
        )
        self.W_hy = nn.Parameter(torch.empty(vocab_size, hidden_size))  # (V, H)
        self.b_y = nn.Parameter(torch.empty(vocab_size))  # (V,)
        self.reset_parameters()

    def model_args(self):
        """The constructor arguments, as plain data for checkpoints."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, dropout=self.dropout, impl=self.impl)

    @torch.no_grad()
    def reset_parameters(self):
        """Weights ~ U(-1/sqrt(H), 1/sqrt(H)), biases zero.

        The tutorial's fixed N(0, 0.01) is fine at H=100 but leaves a large H
        with a vanishing signal; 1/sqrt(H) keeps the pre-activation variance of
        W_hh h near constant for any H (the same scale nn.RNN uses), and zero
        biases are the tutorial's.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            if p.dim() == 2:
                p.uniform_(-bound, bound)
            else:
                p.zero_()

    def init_hidden(self, batch_size, device=None, dtype=None):
        p = self.W_hy
        return torch.zeros(self.num_layers, batch_size, self.hidden_size,
                           device=device or p.device, dtype=dtype or p.dtype)

    def forward(self, x, h0=None):
        # x: (B, T) ids; h0: (L, B, H) or None
        if h0 is None:
            h0 = self.init_hidden(x.shape[0])
        if self.impl == "fused":
            return self._forward_fused(x, h0)
        top, h = self._forward_loop(x, h0)
        logits = top @ self.W_hy.t() + self.b_y  # (B, T, H) -> (B, T, V)
        return logits, h

    def _forward_loop(self, x, h0):
        B, T = x.shape
        h = list(h0.unbind(0))  # L tensors of (B, H)
        outputs = []
        for t in range(T):
            inp = x[:, t]  # (B,) ids
            for l, cell in enumerate(self.cells):
                h[l] = cell(inp, h[l])
                inp = self._between_layers(h[l], l)
            outputs.append(inp)
        return torch.stack(outputs, dim=1), torch.stack(h)  # (B, T, H), (L, B, H)

    def _forward_fused(self, x, h0):
        # Time-major rows (T*B, H): each step's B rows are contiguous for the in-place GEMMs.
        T, B = x.shape[1], x.shape[0]
        inp = x.t().reshape(T * B)  # ids, time-major
        finals = []
        for l, cell in enumerate(self.cells):
            if l < self.num_layers - 1:
                out = rnn_recurrence(cell.pre_activation(inp), cell.W_hh, h0[l])  # (T*B, H)
                inp = self._between_layers(out, l)
            else:  # the top layer also runs the output projection, one GEMM over all T*B rows
                out, logits = rnn_recurrence(cell.pre_activation(inp), cell.W_hh, h0[l],
                                             self.W_hy, self.b_y)  # (T*B, H), (T*B, V)
            finals.append(out[-B:])  # h_T: the last step's B rows
        return logits.view(T, B, -1).transpose(0, 1), torch.stack(finals)  # (B, T, V), (L, B, H)

    def _between_layers(self, h, l):
        # Dropout only feeds the layer above, as in nn.RNN: the recurrent path
        # and the output projection see the undropped state.
        if l < self.num_layers - 1 and self.dropout > 0:
            return F.dropout(h, self.dropout, self.training)
        return h


def cross_entropy(logits, targets, reduction="mean"):
    """The training loss: mean (or summed) nats per character of logits (B, T, V) against
    targets (B, T). bf16 logits from autocast are scored in fp32."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if logits.dim() == 3 and not logits.is_contiguous() and logits.transpose(0, 1).is_contiguous():
        # impl=fused returns a time-major buffer seen as (B, T, V). Scoring it time-major (the
        # same terms, summed in another order) reads it in place; flattening it batch-major
        # would copy it forward and copy its gradient back.
        logits, targets = logits.transpose(0, 1), targets.t()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)
