"""Proves the hand-written LSTM and GRU cells compute their maths exactly, as test_gradients.py
proves the tanh cell: the numpy reference (written from the equations, not from model.py) is
checked against central finite differences; every impl's autograd against the reference, to
1e-9 relative for every parameter and the initial state (h0, and c0 for the LSTM), at L = 1 and 2,
T = 1 and 17, B = 1 and 3, for every impl (loop, fused's hand-written BPTT, and fused_cpp's
compiled LSTM step kernels, whose whole loop runs compiled at T = 17; also when only the final
state or only the logits carry a gradient);
gradcheck; the forward against nn.LSTM / nn.GRU given the same weights (1e-12); the carried
state against one long unroll; and the LSTM's forget-gate bias at 1. gradcheck runs in its fast
mode (a random projection u^T J v of the whole Jacobian, numerically and by autograd): the
entry-by-entry proof is the reference's, at 1e-9, above.

Sizes are small and distinct (V=11, H=7, B=3, T=5) so a transposed dimension fails loudly.
Run: pytest tests/test_gated_cells.py
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charrnn_torch import CharRNN
from charrnn_torch.model import reference
from charrnn_torch.model.cells import IMPLS, cross_entropy, map_state
from conftest import central_differences, rel_err

V, H, B, T = 11, 7, 3, 5
CELLS = ["lstm", "gru"]
GATED_IMPLS = list(IMPLS)


def make_model(cell, L=1, impl="loop", std=0.5, seed=0):
    torch.manual_seed(seed)
    model = CharRNN(V, H, num_layers=L, impl=impl, cell=cell).double().build_kernels()
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std)
    return model


def make_batch(B_=B, T_=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B_, T_), generator=g), torch.randint(0, V, (B_, T_), generator=g)


def random_state(cell, L, B_, seed=2):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L, B_, H, dtype=torch.float64, generator=g) * 0.5
    return (h, torch.randn(L, B_, H, dtype=torch.float64, generator=g) * 0.5) if cell == "lstm" else h


def numpy_params(model):
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def as_numpy(state):
    return map_state(lambda s: s.detach().numpy(), state)


def parts(state):
    """A state as a list of arrays: [h] or [h, c]."""
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_names_and_shapes(cell):
    G = {"lstm": 4, "gru": 3}[cell]
    model = CharRNN(V, H, num_layers=2, cell=cell)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    want = {"cells.0.W_xh": (G * H, V), "cells.0.W_hh": (G * H, H), "cells.0.b_h": (G * H,),
            "cells.1.W_xh": (G * H, H), "cells.1.W_hh": (G * H, H), "cells.1.b_h": (G * H,),
            "W_hy": (V, H), "b_y": (V,)}
    if cell == "gru":
        want.update({"cells.0.b_hn": (H,), "cells.1.b_hn": (H,)})
    assert shapes == want
    assert sorted(shapes) == sorted(reference.param_names(2, cell))


def test_lstm_forget_gate_bias_starts_at_one():
    model = CharRNN(V, H, num_layers=2, cell="lstm")
    for cell in model.cells:
        b = cell.b_h.detach()
        assert torch.equal(b[H:2 * H], torch.ones(H)) and not b[:H].any() and not b[2 * H:].any()
    gru = CharRNN(V, H, cell="gru")
    assert not any(p.any() for n, p in gru.named_parameters() if p.dim() == 1)


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_against_finite_differences(cell, L):
    rng = np.random.default_rng(3)
    params = reference.init_params(V, H, L, rng=rng, scale=0.5, cell=cell)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state0 = tuple(rng.standard_normal((L, B, H)) * 0.5 for _ in range(2 if cell == "lstm" else 1))
    state0 = state0 if cell == "lstm" else state0[0]
    _, grads, dstate0, _, _ = reference.loss_and_grads(params, x, y, state0)

    def numeric(array):
        return central_differences(lambda: reference.loss_and_grads(params, x, y, state0)[0], array)

    for name, p in params.items():
        assert rel_err(grads[name], numeric(p)) <= 1e-6, name
    for d, s in zip(parts(dstate0), parts(state0)):
        assert rel_err(d, numeric(s)) <= 1e-6


CASES = [  # (T, B, state0 given, L)
    (1, 1, False, 1),
    (17, 3, True, 1),
    (5, 1, True, 2),
    (17, 3, False, 2),
    (1, 3, True, 2),
]


@pytest.mark.parametrize("impl", GATED_IMPLS)
@pytest.mark.parametrize("T_,B_,given,L", CASES)
@pytest.mark.parametrize("cell", CELLS)
def test_autograd_matches_reference(cell, T_, B_, given, L, impl):
    model = make_model(cell, L, impl)
    x, y = make_batch(B_, T_)
    state0 = random_state(cell, L, B_) if given else None
    leaves = map_state(lambda s: s.clone().requires_grad_(), state0)
    logits, state = model(x, leaves)
    loss = cross_entropy(logits, y, reduction="sum")  # the training loss, as the trainer scores it
    loss.backward()

    zero = random_state(cell, L, B_)
    np_state0 = as_numpy(state0) if given else map_state(lambda s: np.zeros_like(s.numpy()), zero)
    r_loss, r_grads, r_dstate0, r_state, r_logits = reference.loss_and_grads(
        numpy_params(model), x.numpy(), y.numpy(), np_state0)
    assert abs(loss.item() - r_loss) <= 1e-12 * abs(r_loss)
    assert rel_err(logits.detach().numpy(), r_logits) <= 1e-12
    for got, want in zip(parts(as_numpy(state)), parts(r_state)):
        assert rel_err(got, want) <= 1e-12
    for name, p in model.named_parameters():
        assert rel_err(p.grad.numpy(), r_grads[name]) <= 1e-9, name
    if given:
        for leaf, want in zip(parts(leaves), parts(r_dstate0)):
            assert rel_err(leaf.grad.numpy(), want) <= 1e-9


@pytest.mark.parametrize("impl", GATED_IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell, impl):
    model = make_model(cell, L=2, impl=impl)
    x, _ = make_batch()
    state0 = map_state(lambda s: s.requires_grad_(), random_state(cell, 2, B))
    names = [n for n, _ in model.named_parameters()]
    n_state = len(parts(state0))

    def f(*inputs):
        state, ps = inputs[:n_state], inputs[n_state:]
        state = tuple(state) if cell == "lstm" else state[0]
        logits, out = torch.func.functional_call(model, dict(zip(names, ps)), (x, state))
        return (logits, *parts(out))

    inputs = (*parts(state0), *[p.detach().clone().requires_grad_() for p in model.parameters()])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def torch_module_copy(model):
    """nn.LSTM / nn.GRU with the model's weights; its one-hot input is an identity nn.Embedding."""
    L, cell = model.num_layers, model.cell
    rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(V, H, num_layers=L, batch_first=True).double()
    with torch.no_grad():
        for l, c in enumerate(model.cells):
            getattr(rnn, f"weight_ih_l{l}").copy_(c.W_xh)
            getattr(rnn, f"weight_hh_l{l}").copy_(c.W_hh)
            getattr(rnn, f"bias_ih_l{l}").copy_(c.b_h)
            bias_hh = getattr(rnn, f"bias_hh_l{l}")
            bias_hh.zero_()
            if cell == "gru":
                bias_hh[2 * H:].copy_(c.b_hn)  # the one hidden-side bias that r multiplies
    return rnn


@pytest.mark.parametrize("impl", GATED_IMPLS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_torch_module(cell, L, impl):
    model = make_model(cell, L, impl)
    rnn = torch_module_copy(model)
    x, _ = make_batch(T_=9)
    state0 = random_state(cell, L, B)
    logits, state = model(x, state0)
    out, state_ref = rnn(F.one_hot(x, V).double(), state0)
    torch.testing.assert_close(logits, out @ model.W_hy.t() + model.b_y, rtol=1e-12, atol=1e-12)
    for got, want in zip(parts(state), parts(state_ref)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", GATED_IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_equals_one_long_unroll(cell, impl):
    # To rounding, as for the tanh cell: the split computes GEMMs of other shapes.
    model = make_model(cell, L=2, impl=impl)
    x, _ = make_batch(T_=12)
    full, s_full = model(x)
    first, s1 = model(x[:, :5])
    second, s2 = model(x[:, 5:], s1)
    assert rel_err(torch.cat([first, second], 1).detach(), full.detach()) <= 1e-12
    for a, b in zip(parts(s2), parts(s_full)):
        assert rel_err(a.detach(), b.detach()) <= 1e-12


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_fused_gradients_through_either_output(cell, L):
    # fused's backward has a branch for each output that carries a gradient (the final state,
    # the logits, or both); compare each with the loop impl's plain autograd.
    x, _ = make_batch(T_=6)
    g = torch.Generator().manual_seed(4)
    r_logits = torch.randn(B, 6, V, dtype=torch.float64, generator=g)
    r_state = [torch.randn(L, B, H, dtype=torch.float64, generator=g) for _ in parts(random_state(cell, L, B))]
    for through in ("state", "logits", "both"):
        grads = {}
        for impl in GATED_IMPLS:
            model = make_model(cell, L, impl)
            leaves = map_state(lambda s: s.clone().requires_grad_(), random_state(cell, L, B, seed=5))
            logits, state = model(x, leaves)
            loss = 0
            if through in ("logits", "both"):
                loss = loss + (logits * r_logits).sum()
            if through in ("state", "both"):
                loss = loss + sum((s * r).sum() for s, r in zip(parts(state), r_state))
            loss.backward()
            grads[impl] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                           for p in model.parameters()] + [leaf.grad.clone() for leaf in parts(leaves)]
        for impl in GATED_IMPLS[1:]:
            for a, b in zip(grads["loop"], grads[impl]):
                assert rel_err(a.numpy(), b.numpy()) <= 1e-9, (through, impl)
