"""The character-level RNN, written by hand: the tanh cell, and the LSTM and GRU beside it.

Shapes use one alphabet everywhere: B batch, T time steps, V vocabulary,
H hidden units, L layers, G gates (1 for the tanh cell, 4 LSTM, 3 GRU). Weights
are in the tutorial's column-vector orientation, so ``W_xh @ x_t`` reads exactly
as the maths:

    h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)
    y_t = W_hy h_t + b_y

Read this file side by side with ``reference.py``, its numpy twin.
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compiled import module as compiled_module
from .fused import gru_recurrence, lstm_recurrence, rnn_recurrence

# The one list of implementations; config.py validates against it (and CELLS, below).
IMPLS = ("loop", "fused", "fused_cpp")  # loop: the readable unroll; fused: the same maths with hand-written
# BPTT; fused_cpp: fused, with each cell's loop over time compiled (compiled.py), opt-in


class Cell(nn.Module):
    """What every cell shares: W_xh (G·H, V or H), W_hh (G·H, H) and b_h (G·H,), the G gates'
    rows stacked in torch's order, so that each step is one GEMM for all of them. Layer 0
    reads character ids, layers above read h of the layer below."""

    gates = 1  # G: rows of W_xh, W_hh and b_h, in units of H
    state_names = ("h",)  # what the state holds per layer, in order
    gate_names = ()  # what gate_values returns (the tanh cell has no gates)
    saturating = ()  # the sigmoid gates, whose saturation visualize.py plots

    def __init__(self, input_size, hidden_size, onehot_input):
        super().__init__()
        self.onehot_input = onehot_input
        self.hidden_size = hidden_size
        G = self.gates * hidden_size
        self.W_xh = nn.Parameter(torch.empty(G, input_size))  # (G·H, V) or (G·H, H)
        self.W_hh = nn.Parameter(torch.empty(G, hidden_size))  # (G·H, H)
        self.b_h = nn.Parameter(torch.empty(G))  # (G·H,)

    def gate_values(self, x_t, h_prev, W_hh):
        return ()

    def reset_biases(self):
        """Called after CharRNN zeroes every bias: a cell that wants another start sets it here."""

    def input_projection(self, x):
        """W_xh x for a batch; x is ids (...,) for layer 0, else (..., H). Returns (..., G·H)."""
        if self.onehot_input:
            # x is one-hot, so W_xh x is column x of W_xh: a gather is the same maths
            # as the matrix product, without building the (V, B) one-hot matrix.
            return F.embedding(x, self.W_xh.t())
        return x @ self.W_xh.t()

    def pre_activation(self, x):
        """W_xh x + b_h for many steps at once, as one fresh tensor: (N,) ids or (N, H) -> (N, G·H)."""
        if self.onehot_input:
            # W_xh x is column x of W_xh, so this is a gather, with b_h added to the (V, G·H) table
            # W_xh^T + b_h for free. For many ids the table is made row-major first, so each
            # gathered row is one contiguous copy, not a strided read of W_xh^T's columns. For a
            # few ids (sampling) that transpose costs more than the gather, so only their columns
            # of W_xh are taken and transposed. index_select, not F.embedding: its backward is one
            # scatter-add, not embedding's dense backward (timings: performance-cpu.md).
            if x.numel() >= self.W_xh.shape[1]:
                return (self.W_xh.t().contiguous() + self.b_h).index_select(0, x)
            return (self.W_xh.index_select(1, x).t() + self.b_h).contiguous()
        return torch.addmm(self.b_h, x, self.W_xh.t())


class RNNCell(Cell):
    """The tutorial's tanh cell: h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h). Its state is h."""

    def recurrence(self, pre, h0, head, W_hh, compiled=False):
        """impl fused: all T steps from pre = W_xh x + b_h (T*B, G·H) -> (h (T*B, H), h_T, logits or None).
        W_hh is the cell's own, or a DropConnect-masked copy of it (CharRNN.forward). compiled (impl
        fused_cpp) asks for the compiled kernels."""
        return rnn_recurrence(pre, W_hh, h0, *head, compiled=compiled)

    def forward(self, x_t, h_prev, W_hh):
        # x_t: (B,) ids or (B, H); h_prev: (B, H) -> h_t: (B, H)
        # Row-vector form of tanh(W_xh x + W_hh h + b_h): batch rows times W^T.
        return torch.tanh(self.input_projection(x_t) + h_prev @ W_hh.t() + self.b_h)


class LSTMCell(Cell):
    """The LSTM, gates stacked as nn.LSTM's (i, f, g, o), so nn.LSTM's weights copy in unchanged
    (its two biases summed into b_h). Its state is (h, c):

        i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_xh x_t + W_hh h_{t-1} + b_h)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    The forget gate's bias starts at 1, not 0 (Jozefowicz, Zaremba & Sutskever 2015, "An Empirical
    Exploration of Recurrent Network Architectures"): at 0 the gate starts half shut, and the cell
    forgets what it would need to learn long dependencies before it can learn them.
    """

    gates = 4
    state_names = ("h", "c")
    gate_names = ("input", "forget", "candidate", "output")  # what gate_values returns, in order
    saturating = ("input", "forget", "output")  # the sigmoid gates

    def recurrence(self, pre, state0, head, W_hh, compiled=False):
        return lstm_recurrence(pre, W_hh, *state0, *head, compiled=compiled)

    def reset_biases(self):
        H = self.hidden_size
        self.b_h[H:2 * H].fill_(1.0)

    def gate_values(self, x_t, h_prev, W_hh):
        # x_t: (B,) ids or (B, H); h_prev: (B, H) -> i, f, g, o, each (B, H)
        a = self.input_projection(x_t) + h_prev @ W_hh.t() + self.b_h  # (B, 4H)
        i, f, g, o = a.chunk(4, dim=1)
        return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)

    def forward(self, x_t, state, W_hh):
        # x_t: (B,) ids or (B, H); state: (h, c), each (B, H) -> (h_t, c_t)
        h_prev, c_prev = state
        i, f, g, o = self.gate_values(x_t, h_prev, W_hh)
        c = f * c_prev + i * g
        return o * torch.tanh(c), c


class GRUCell(Cell):
    """The GRU as nn.GRU defines it, gates stacked as (r, z, n). Its state is h:

        r = sigmoid(W_xr x + W_hr h + b_r),  z = sigmoid(W_xz x + W_hz h + b_z)
        n = tanh(W_xn x + b_xn + r * (W_hn h + b_hn))
        h_t = (1 - z) * n + z * h_{t-1}

    b_h holds b_r and b_z (nn.GRU's input and hidden biases of r and z, summed) and b_xn;
    b_hn stays apart, since r multiplies it.
    """

    gates = 3
    gate_names = ("reset", "update", "candidate")
    saturating = ("reset", "update")

    def __init__(self, input_size, hidden_size, onehot_input):
        super().__init__(input_size, hidden_size, onehot_input)
        self.b_hn = nn.Parameter(torch.empty(hidden_size))  # (H,)

    def recurrence(self, pre, h0, head, W_hh, compiled=False):
        return gru_recurrence(pre, W_hh, self.b_hn, h0, *head, compiled=compiled)

    def gate_values(self, x_t, h_prev, W_hh):
        # x_t: (B,) ids or (B, H); h_prev: (B, H) -> r, z, n, each (B, H)
        xr, xz, xn = (self.input_projection(x_t) + self.b_h).chunk(3, dim=1)
        hr, hz, hn = (h_prev @ W_hh.t()).chunk(3, dim=1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        return r, z, torch.tanh(xn + r * (hn + self.b_hn))

    def forward(self, x_t, h_prev, W_hh):
        # x_t: (B,) ids or (B, H); h_prev: (B, H) -> h_t: (B, H)
        r, z, n = self.gate_values(x_t, h_prev, W_hh)
        return (1 - z) * n + z * h_prev


CELL_CLASSES = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}  # rnn: the tutorial's tanh cell
CELLS = tuple(CELL_CLASSES)


def map_state(fn, state):
    """fn applied to a state: a tensor (rnn, gru), a tuple (h, c) of them (lstm), or None."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(fn(s) for s in state)
    return fn(state)


@contextlib.contextmanager
def evaluating(model):
    """model.eval() for the block (no dropout), then the mode it had before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class Masks:
    """The dropout masks of one training forward, each already scaled by 1/(1-p); None where that
    dropout is off. A mask over time is (B, T, H), or (B, 1, H) when locked: the same at every
    step of the window (variational dropout, Gal & Ghahramani 2016).

    between: L-1 masks on layer l's h where it feeds layer l+1. None: model.dropout's own fresh
    mask at every step (F.dropout), as nn.RNN's dropout does. output: on the top layer's h before
    W_hy (char-rnn's dropout). W_hh: L masks (G·H, H), DropConnect on each layer's W_hh, one per
    forward (AWD-LSTM's weight drop). bwd: a bidirectional model's backward stack's own Masks, whose
    step t is that stack's t-th step (it reads x_{T-1-t}). CharRNN.draw_masks draws them; the
    gradient proofs give the same masks to the model and to the numpy reference."""
    between: list = None
    output: torch.Tensor = None
    W_hh: list = None
    bwd: "Masks" = None


def _draw_mask(shape, p, like):
    """Keep with probability 1 - p, scaled by 1/(1-p); None when p is 0."""
    if p == 0:
        return None
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - p).div_(1 - p)


def _step_mask(mask, t):
    """A (B, T|1, H) mask at step t: (B, H)."""
    return None if mask is None else mask[:, t if mask.shape[1] > 1 else 0]


def _time_major(mask, T, B):
    """A (B, T|1, H) mask as the fused impl's time-major rows (T*B, H)."""
    return None if mask is None else mask.transpose(0, 1).expand(T, B, -1).reshape(T * B, -1)


def _output(state):
    """What a layer passes up and out: h, also when the state is (h, c)."""
    return state[0] if isinstance(state, tuple) else state


def _per_layer(state):
    """(L, B, H), or (h, c) of them -> L states of one layer: (B, H), or (h, c) of them."""
    return list(zip(*(s.unbind(0) for s in state))) if isinstance(state, tuple) else list(state.unbind(0))


def _stacked(states):
    """The inverse of _per_layer."""
    if isinstance(states[0], tuple):
        return tuple(torch.stack(s) for s in zip(*states))
    return torch.stack(states)


class CharRNN(nn.Module):
    """``forward(x, h0=None) -> (logits, state)`` with x (B, T) ids and logits (B, T, V). The state
    is h (L, B, H) for the tanh cell and the GRU, like nn.RNN's and nn.GRU's h_n, and a tuple
    (h, c) of two (L, B, H) tensors for the LSTM, like nn.LSTM's.

    ``cell`` is rnn (the tutorial's tanh cell), lstm or gru. ``impl`` picks how the same maths
    runs: ``loop`` is the readable reference unroll below; ``fused`` hoists the input and output
    projections out of the time loop and runs the recurrence in a hand-written autograd Function
    for each cell (``fused.py``); ``fused_cpp`` is ``fused`` with each cell's loop over time compiled
    where a C++ toolchain builds it (``compiled.py``), built by an explicit
    ``build_kernels()`` before the first forward, so that a first build is never inside a run's
    time budget. All pass the same tests against the numpy reference.

    ``bidirectional`` adds a second stack of the same cell, ``cells_bwd`` (its layers' ``W_xh``,
    ``W_hh``, ``b_h`` named as the forward stack's), that reads each window from its end to its
    start, and its own output weights ``W_hy_bwd`` (V, H); ``W_hy`` is then the forward stack's
    W_hy_fwd. Such a model predicts each character from both sides (a cloze model, not a language
    model): ``logits_t = W_hy h_fwd[t-1] + W_hy_bwd h_bwd[t+1] + b_y``, both states zero past the
    window's ends, trained against x itself. It starts every window from zero states (h0 must be
    None), and the state it returns is the forward stack's, for the contract's sake.
    """

    def __init__(self, vocab_size, hidden_size, num_layers=1, dropout=0.0, impl="loop", cell="rnn",
                 dropout_output=0.0, variational=False, weight_drop=0.0, bidirectional=False):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; expected one of {', '.join(IMPLS)}")
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout  # on each layer's h where it feeds the layer above
        self.dropout_output = dropout_output  # on the top layer's h before W_hy
        self.variational = variational  # one mask per window for both, not one per step
        self.weight_drop = weight_drop  # DropConnect on W_hh, one mask per forward
        self.impl = impl
        self.cell = cell
        self.kernels_built = impl != "fused_cpp"
        self.cells = nn.ModuleList(
            CELL_CLASSES[cell](vocab_size if l == 0 else hidden_size, hidden_size, onehot_input=(l == 0))
            for l in range(num_layers)
        )
        self.W_hy = nn.Parameter(torch.empty(vocab_size, hidden_size))  # (V, H)
        self.b_y = nn.Parameter(torch.empty(vocab_size))  # (V,)
        self.bidirectional = bidirectional
        if bidirectional:
            self.cells_bwd = nn.ModuleList(
                CELL_CLASSES[cell](vocab_size if l == 0 else hidden_size, hidden_size, onehot_input=(l == 0))
                for l in range(num_layers))
            self.W_hy_bwd = nn.Parameter(torch.empty(vocab_size, hidden_size))  # (V, H)
        self.reset_parameters()

    def build_kernels(self):
        """Build (or load) impl fused_cpp's compiled kernels now, once per process: a first build takes
        about a minute, and a failed one falls back to fused's maths with one warning. A no-op for the
        other impls. Returns the model."""
        if not self.kernels_built:
            compiled_module()
            self.kernels_built = True
        return self

    @property
    def state_names(self):
        """What the state holds per layer: ("h",), or ("h", "c") for the LSTM."""
        return self.cells[0].state_names

    def model_args(self):
        """The constructor arguments, as plain data for checkpoints."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                    dropout=self.dropout, impl=self.impl, cell=self.cell, dropout_output=self.dropout_output,
                    variational=self.variational, weight_drop=self.weight_drop, bidirectional=self.bidirectional)

    def stacks(self):
        """The stacks of cells: the forward one, and a bidirectional model's backward one."""
        return [self.cells, self.cells_bwd] if self.bidirectional else [self.cells]

    @torch.no_grad()
    def reset_parameters(self):
        """Weights ~ U(-1/sqrt(H), 1/sqrt(H)), biases zero (the LSTM's forget gate: 1).

        The tutorial's fixed N(0, 0.01) is fine at H=100 but leaves a large H
        with a vanishing signal; 1/sqrt(H) keeps the pre-activation variance of
        W_hh h near constant for any H (the same scale nn.RNN uses), and zero
        biases are the tutorial's.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        # The backward stack's weights are drawn last, so that a bidirectional model's forward stack
        # starts as the left-to-right model of the same seed does.
        for _, p in sorted(self.named_parameters(), key=lambda item: "_bwd" in item[0]):
            if p.dim() == 2:
                p.uniform_(-bound, bound)
            else:
                p.zero_()
        for cells in self.stacks():
            for cell in cells:
                cell.reset_biases()

    def init_hidden(self, batch_size, device=None, dtype=None):
        """The zero state: (L, B, H), or (h, c) of two for the LSTM."""
        p = self.W_hy
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size,
                            device=device or p.device, dtype=dtype or p.dtype)
        return (zeros, zeros.clone()) if len(self.state_names) == 2 else zeros

    def forward(self, x, h0=None, masks=None):
        # x: (B, T) ids; h0: (L, B, H), (h0, c0) for the LSTM, or None; masks: Masks, or None to
        # draw them when training (evaluation, sampling and scoring never drop anything)
        h0_given = h0 is not None
        if h0 is None:
            h0 = self.init_hidden(x.shape[0])
        if masks is None and self.training:
            masks = self.draw_masks(*x.shape)
        if not self.kernels_built:
            raise RuntimeError("impl fused_cpp: call model.build_kernels() before the first forward")
        if self.bidirectional:
            return self._forward_bidirectional(x, h0_given, masks)
        if self.impl != "loop":
            return self._forward_fused(x, h0, masks)
        top, h = self._forward_loop(x, h0, masks)
        logits = top @ self.W_hy.t() + self.b_y  # (B, T, H) -> (B, T, V)
        return logits, h

    def draw_masks(self, B, T):
        """Fresh Masks for a training window, from the model's rates; None when only model.dropout
        (drawn per step by F.dropout, as it always was) or nothing is on. A bidirectional model's
        backward stack gets its own (Masks.bwd)."""
        if not (self.variational or self.dropout_output or self.weight_drop):
            return None
        steps, H, like = 1 if self.variational else T, self.hidden_size, self.W_hy
        drawn = []
        for cells in self.stacks():
            between = [_draw_mask((B, steps, H), self.dropout, like) for _ in range(self.num_layers - 1)]
            drawn.append(Masks(between=between if self.variational else None,
                               output=_draw_mask((B, steps, H), self.dropout_output, like),
                               W_hh=[_draw_mask(cell.W_hh.shape, self.weight_drop, like) for cell in cells]))
        if self.bidirectional:
            drawn[0].bwd = drawn[1]
        return drawn[0]

    def recurrent_weights(self, masks, cells=None):
        """Each layer's W_hh of cells (default: the forward stack) for this forward: its own, or its
        DropConnect-masked copy."""
        cells = self.cells if cells is None else cells
        drop = masks.W_hh if masks is not None and masks.W_hh is not None else [None] * self.num_layers
        return [cell.W_hh if m is None else cell.W_hh * m for cell, m in zip(cells, drop)]

    @torch.no_grad()
    def trace(self, x, h0=None):
        """The loop unroll in eval mode, keeping every layer's state and gates at every step, for
        looking inside: x (B, T) ids -> {name: (L, B, T, H)}, with "h" ("h" and "c" for the LSTM)
        and one entry per gate of the cell's gate_names."""
        record = {}

        def keep(l, names, values):
            for name, value in zip(names, values):
                record.setdefault(name, [[] for _ in self.cells])[l].append(value)

        with evaluating(self):
            self._forward_loop(x, self.init_hidden(x.shape[0]) if h0 is None else h0, record=keep)
        return {name: torch.stack([torch.stack(steps, 1) for steps in layers]) for name, layers in record.items()}

    def states_through_time(self, x, h0=None):
        """The loop unroll in eval mode with autograd left on: (logits (B, T, V), {"h": L lists of T
        states (B, H), and "c" for the LSTM}), each state a node of the graph, so that gradients
        with respect to it can be taken (insight/gradients.py). The forward stack's states."""
        states = {name: [[] for _ in self.cells] for name in self.state_names}

        def keep(l, names, values):
            for name, value in zip(names, values):
                if name in states:
                    states[name][l].append(value)

        with evaluating(self):
            top, _ = self._forward_loop(x, self.init_hidden(x.shape[0]) if h0 is None else h0, record=keep)
        return top @ self.W_hy.t() + self.b_y, states

    def _forward_loop(self, x, state0, masks=None, record=None, cells=None):
        # record(layer, names, values), if given, sees each layer's gates and new state at each step.
        # cells: the stack to run (default the forward one).
        B, T = x.shape
        cells = self.cells if cells is None else cells
        W_hh, between = self.recurrent_weights(masks, cells), self._between_masks(masks)
        states = _per_layer(state0)  # h (B, H), or (h, c) for the LSTM, of each layer
        outputs = []
        for t in range(T):
            inp = x[:, t]  # (B,) ids
            for l, cell in enumerate(cells):
                if record is not None:
                    record(l, cell.gate_names, cell.gate_values(inp, _output(states[l]), W_hh[l]))
                states[l] = cell(inp, states[l], W_hh[l])
                if record is not None:
                    record(l, cell.state_names, states[l] if isinstance(states[l], tuple) else (states[l],))
                inp = self._between_layers(_output(states[l]), l, _step_mask(between[l], t))
            outputs.append(inp)
        top = torch.stack(outputs, dim=1)  # (B, T, H)
        if masks is not None and masks.output is not None:
            top = top * masks.output
        return top, _stacked(states)  # (B, T, H), (L, B, H) or (h, c) of them

    def _forward_fused(self, x, state0, masks=None):
        # Time-major rows (T*B, ·): each step's B rows are contiguous for the in-place GEMMs.
        T, B = x.shape[1], x.shape[0]
        out_mask = _time_major(masks.output if masks is not None else None, T, B)
        # the top layer also runs the output projection, one GEMM over all T*B rows (unless its h is
        # dropped first)
        top, finals, logits = self._stack_fused(self.cells, x, state0, masks, head=out_mask is None)
        if out_mask is not None:
            logits = torch.addmm(self.b_y, top * out_mask, self.W_hy.t())
        return logits.view(T, B, -1).transpose(0, 1), _stacked(finals)  # (B, T, V), (L, B, H) or (h, c)

    def _stack_fused(self, cells, x, state0, masks, head):
        """One stack of cells over x (B, T), fused: (its top layer's h (T*B, H) time-major, before
        the output dropout; each layer's final state; the logits (T*B, V) when head, else None)."""
        T, B = x.shape[1], x.shape[0]
        W_hh, between = self.recurrent_weights(masks, cells), self._between_masks(masks)
        compiled = self.impl == "fused_cpp"
        inp = x.t().reshape(T * B)  # ids, time-major
        finals, logits = [], None
        for l, (cell, s0) in enumerate(zip(cells, _per_layer(state0))):
            top_head = (self.W_hy, self.b_y) if head and l == self.num_layers - 1 else ()
            pre = cell.pre_activation(inp)  # (T*B, G·H)
            out, final, logits = cell.recurrence(pre, s0, top_head, W_hh[l], compiled)  # (T*B, H), ·, (T*B, V)
            finals.append(final)
            inp = self._between_layers(out, l, _time_major(between[l], T, B))
        return inp, finals, logits

    def _forward_bidirectional(self, x, h0_given, masks):
        """logits_t = W_hy h_fwd[t-1] + W_hy_bwd h_bwd[t+1] + b_y, each state zero past the window's
        ends: the forward stack reads x in order, the backward stack reads it flipped."""
        if h0_given:
            raise ValueError("a bidirectional model starts every window from zero states: h0 must be None")
        B, T = x.shape
        tops, finals = [], None
        for cells, m in zip(self.stacks(), (masks, masks.bwd if masks is not None else None)):
            seq, zero = x if cells is self.cells else x.flip(1), self.init_hidden(B)
            if self.impl == "loop":
                top, final = self._forward_loop(seq, zero, m, cells=cells)  # (B, T, H), output dropout applied
            else:
                top, final, _ = self._stack_fused(cells, seq, zero, m, head=False)
                out_mask = _time_major(m.output if m is not None else None, T, B)
                top = (top if out_mask is None else top * out_mask).view(T, B, -1).transpose(0, 1)
                final = _stacked(final)
            tops.append(top if cells is self.cells else top.flip(1))
            finals = final if finals is None else finals
        zeros = tops[0].new_zeros(B, 1, self.hidden_size)
        before = torch.cat([zeros, tops[0][:, :-1]], 1)  # h_fwd[t-1]
        after = torch.cat([tops[1][:, 1:], zeros], 1)  # h_bwd[t+1]
        logits = before @ self.W_hy.t() + after @ self.W_hy_bwd.t() + self.b_y  # (B, T, V)
        return logits, finals

    def _between_masks(self, masks):
        """L masks over time (the top layer's None): layer l's mask where it feeds layer l+1."""
        given = masks.between if masks is not None and masks.between is not None else []
        return [*given, *[None] * (self.num_layers - len(given))]

    def _between_layers(self, h, l, mask=None):
        # Dropout only feeds the layer above, as in nn.RNN: the recurrent path sees the undropped
        # state (the output projection sees it too unless dropout_output is on).
        if l == self.num_layers - 1:
            return h
        if mask is not None:
            return h * mask
        if self.dropout > 0:
            return F.dropout(h, self.dropout, self.training)
        return h


def build_model(model_cfg, vocab_size, dtype=torch.float32):
    """The CharRNN a config's model section describes (any object with its fields: this module
    does not import the config layer)."""
    return CharRNN(vocab_size, model_cfg.hidden_size, model_cfg.num_layers, model_cfg.dropout, impl=model_cfg.impl,
                   cell=model_cfg.cell, dropout_output=model_cfg.dropout_output,
                   variational=model_cfg.variational_dropout, weight_drop=model_cfg.weight_drop,
                   bidirectional=model_cfg.bidirectional).to(dtype)


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
