"""One step of a fused model for a few streams with nothing allocated per step: what sampling
runs once per character.

At T = 1, ``model(ids[:, None], state)`` costs far more in Python than in arithmetic: the gather,
the autograd Function, the views and a dozen fresh tensors around two small GEMMs. A Stepper makes
every buffer once and runs the fused forward's own step functions (fused.py) and the same aten
calls, on the same shapes, into them. So its logits and states are bit for bit those of
``model(ids[:, None], state)`` (tests/test_stepper.py), and a seed samples the same text either way.
"""
import torch

from .cells import CharRNN
from .compiled import kernels_for
from .fused import gru_step, lstm_step, tanh_step
from .packed_gemm import accumulate_matmul


def supports(model):
    """Whether a Stepper runs this model: a CharRNN (not some module around one) of impl fused or
    fused_cpp (impl loop's T = 1 step is other aten calls, so other bits), read left to right."""
    return isinstance(model, CharRNN) and model.impl != "loop" and not model.bidirectional


class _Layer:
    """One layer's step, into buffers of its own: its pre-activations (the tanh cell's become its h in
    place, as in the fused forward), and its new h (and c, tanh(c) for the LSTM)."""

    def __init__(self, cell, N, like, compiled):
        H = cell.hidden_size
        self.cell, self.gates = cell, cell.gates
        self.a = like.new_empty(N, cell.W_hh.shape[0])
        self.h = self.a if cell.gates == 1 else like.new_empty(N, H)
        self.c, self.tc = (like.new_empty(N, H), like.new_empty(N, H)) if cell.gates == 4 else (None, None)
        if cell.onehot_input:
            # W_xh x + b_h for an id is a row of this (V, G·H) table: the same sum the model's gather makes
            self.table = (cell.W_xh.t() + cell.b_h).contiguous()
        self.add_h_W_hh_t = accumulate_matmul(cell.W_hh, N, transpose=True, calls=1)  # the model's T = 1 GEMM
        if cell.gates == 3:  # the GRU's W_hh h stays apart, on top of (0, 0, b_hn)
            self.ah0 = torch.zeros_like(self.a)
            self.ah0[:, 2 * H:] = cell.b_hn
            self.ah = torch.empty_like(self.a)
        self.kernels = kernels_for(self.a) if compiled and self.c is not None else None

    def operands(self, h_state, c_state=None):
        """What sample_loop.cpp's Layer reads: this step's buffers and weights, by name."""
        cell = self.cell
        return {"gates": self.gates, "table": getattr(self, "table", None), "W_xh_t": cell.W_xh.t(), "b_h": cell.b_h,
                "W_hh_t": cell.W_hh.t(), "a": self.a, "h": self.h, "c": self.c, "tc": self.tc,
                "ah0": getattr(self, "ah0", None), "ah": getattr(self, "ah", None), "h_state": h_state,
                "c_state": c_state}

    def step(self, x, h_prev, c_prev=None):
        """x: (N,) ids for layer 0, else the layer below's h (N, H) -> this layer's new h (N, H)."""
        cell, a = self.cell, self.a
        if cell.onehot_input:
            torch.index_select(self.table, 0, x, out=a)
        else:
            torch.addmm(cell.b_h, x, cell.W_xh.t(), out=a)
        if self.gates == 1:
            tanh_step(a, h_prev, self.add_h_W_hh_t)
        elif self.gates == 4:
            step = lstm_step if self.kernels is None else self.kernels.forward_step
            step(self.add_h_W_hh_t(a, h_prev), c_prev, self.c, self.tc, self.h)
        else:
            self.ah.copy_(self.ah0)
            gru_step(a, self.add_h_W_hh_t(self.ah, h_prev), h_prev, self.h)
        return self.h


class Stepper:
    """``stepper(ids)`` is ``model(ids[:, None], state)`` for a model that ``supports``, from the
    state given to it and on: ids (N,) -> logits (N, V), a buffer the next call overwrites. The
    model's weights must not change while it steps.

    Same bits need the same operands: shapes, strides and, for BLAS, alignment too (MKL's GEMM can
    round another way for another alignment). So the state lives as the model returns it, stacked
    (L, N, H), layer l's h read from there as the model reads it, and every layer's results go into
    fresh buffers of their own, as the model's do."""

    @torch.no_grad()
    def __init__(self, model, state):
        """state: the model's state for N streams, (L, N, H), or (h, c) of them for the LSTM."""
        if not supports(model):
            raise ValueError(f"a Stepper runs impl fused or fused_cpp, left to right, not {model.impl}"
                             f"{' bidirectional' if model.bidirectional else ''}")
        self.states = [s.clone(memory_format=torch.contiguous_format)
                       for s in (state if isinstance(state, tuple) else (state,))]
        N, like = self.states[0].shape[1], self.states[0]
        self.compiled = model.impl == "fused_cpp"
        self.layers = [_Layer(cell, N, like, self.compiled) for cell in model.cells]
        self.layer_states = list(zip(*(s.unbind(0) for s in self.states)))  # layer l's (h[, c]) views, made once
        self.W_hy_t, self.b_y = model.W_hy.t(), model.b_y
        self.logits = like.new_empty(N, model.vocab_size)

    @torch.no_grad()
    def __call__(self, ids):
        x = ids
        for layer, state in zip(self.layers, self.layer_states):
            x = layer.step(x, *state)
            state[0].copy_(x)
            if layer.c is not None:
                state[1].copy_(layer.c)
        return torch.addmm(self.b_y, x, self.W_hy_t, out=self.logits)

    def compiled_loop(self, sampling, work, probs, cdf):
        """sample_ids' per-character loop for these streams as sample_loop.cpp's SampleLoop, drawing
        as sampling says into filter_probs' and pick's buffers, from self.logits on; None where it does
        not run: not impl fused_cpp, off the CPU, a step GEMM other than addmm (the one sample_loop.cpp
        calls), or no compiled module (compiled.py)."""
        kernels = kernels_for(self.logits) if self.compiled else None
        if kernels is None or any(layer.add_h_W_hh_t.kernel != "addmm" for layer in self.layers):
            return None
        layers = [layer.operands(*state) for layer, state in zip(self.layers, self.layer_states)]
        return kernels.SampleLoop(layers, self.W_hy_t, self.b_y, self.logits, sampling.temperature, sampling.top_k,
                                  sampling.top_p, sampling.greedy, work, probs, cdf)

    def state(self):
        """The current state as the model returns it: (L, N, H), or (h, c) of them (copies)."""
        return self.states[0].clone() if len(self.states) == 1 else tuple(s.clone() for s in self.states)
