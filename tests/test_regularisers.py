"""Proves the regularisers (model.dropout between layers, model.dropout_output, variational
(locked) masks, model.weight_drop on W_hh) are the maths they claim, for each cell and impl:

- with the masks fixed (drawn once and handed to both), the loss, logits, final state and every
  gradient (the initial state's too) equal the numpy reference's in float64 to <= 1e-9 (1e-12 for
  the forward), per-step and locked masks alike, the reference itself checked against central
  differences;
- drawn masks are what the rates say: locked masks are the same at every step, one DropConnect
  mask per forward, scaled by 1/(1-p), and nothing is drawn (no random numbers used) when only
  model.dropout is on, so existing configs and checkpoints behave as before;
- evaluation, sampling and scoring drop nothing: a model with every rate at 0.5 scores and samples
  exactly as the same weights with no dropout;
- the config keys are checked, and a run with every regulariser trains (test_reliability.py proves it
  resumes bit for bit).

Sizes are small and distinct (V=11, H=7, B=3, T=5). Run: pytest tests/test_regularisers.py
"""
import numpy as np
import pytest
import torch

from charrnn_torch import CharRNN
from charrnn_torch.model import reference
from charrnn_torch.training.config import build_config
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.errors import UserError
from charrnn_torch.model.cells import CELLS, IMPLS, Masks, cross_entropy, map_state
from charrnn_torch.sampling.sample import Sampling, generate, score
from charrnn_torch.training.trainer import train
from conftest import central_differences, rel_err, tiny_overrides

V, H, B, T, L = 11, 7, 3, 5, 2
G = {"rnn": 1, "lstm": 4, "gru": 3}


def _model(cell, impl, **rates):
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl=impl, cell=cell, **rates).double().build_kernels()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)  # larger than the default init, so every term matters
    return model


def _masks(cell, locked, seed=3, p=0.4):
    """Fixed masks, as numpy (for the reference) and as Masks (for the model)."""
    rng = np.random.default_rng(seed)
    steps = 1 if locked else T

    def draw(shape):
        return (rng.random(shape) >= p) / (1 - p)

    arrays = {"between": [draw((B, steps, H)) for _ in range(L - 1)], "output": draw((B, steps, H)),
              "W_hh": [draw((G[cell] * H, H)) for _ in range(L)]}
    as_torch = Masks(between=[torch.from_numpy(m) for m in arrays["between"]],
                     output=torch.from_numpy(arrays["output"]), W_hh=[torch.from_numpy(m) for m in arrays["W_hh"]])
    return arrays, as_torch


def _batch_and_state(cell, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    h = torch.randn(L, B, H, dtype=torch.float64, generator=g) * 0.5
    state = (h, torch.randn(L, B, H, dtype=torch.float64, generator=g) * 0.5) if cell == "lstm" else h
    return x, y, state


def _pairs(a, b):
    return list(zip(a, b)) if isinstance(a, tuple) else [(a, b)]


@pytest.mark.parametrize("locked", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_with_fixed_masks_equal_the_reference(cell, impl, locked):
    model = _model(cell, impl, dropout=0.4, dropout_output=0.4, weight_drop=0.4, variational=locked)
    params = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    arrays, masks = _masks(cell, locked)
    x, y, state0 = _batch_and_state(cell)
    h0 = map_state(lambda s: s.clone().requires_grad_(), state0)
    logits, h = model(x, h0, masks=masks)
    loss = cross_entropy(logits, y, reduction="sum")
    loss.backward()
    r_loss, r_grads, r_dh0, r_h, r_logits = reference.loss_and_grads(
        params, x.numpy(), y.numpy(), map_state(lambda s: s.numpy(), state0), arrays)
    assert abs(loss.item() - r_loss) <= 1e-12 * abs(r_loss)
    assert rel_err(logits.detach().numpy(), r_logits) <= 1e-12
    assert all(rel_err(a.detach().numpy(), b) <= 1e-12 for a, b in _pairs(h, r_h))
    for name, p in model.named_parameters():
        assert rel_err(p.grad.numpy(), r_grads[name]) <= 1e-9, name
    assert all(rel_err(a.grad.numpy(), b) <= 1e-9 for a, b in _pairs(h0, r_dh0))


@pytest.mark.parametrize("cell", CELLS)
def test_reference_with_masks_equals_central_differences(cell):
    model = _model(cell, "loop")
    params = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    arrays, _ = _masks(cell, locked=False)
    x, y, state0 = _batch_and_state(cell)
    state0 = map_state(lambda s: s.numpy(), state0)
    _, grads, _, _, _ = reference.loss_and_grads(params, x.numpy(), y.numpy(), state0, arrays)
    for name in ("cells.0.W_hh", "cells.1.W_xh", "cells.1.W_hh", "W_hy"):
        fd = central_differences(lambda: reference.loss_and_grads(params, x.numpy(), y.numpy(), state0, arrays)[0],
                                 params[name])
        assert rel_err(grads[name], fd) <= 1e-6, name


@pytest.mark.parametrize("cell", CELLS)
def test_drawn_masks_follow_the_rates(cell):
    torch.manual_seed(0)
    model = CharRNN(V, H, 3, cell=cell, dropout=0.3, dropout_output=0.5, weight_drop=0.25, variational=True)
    masks = model.draw_masks(64, T)
    assert [m.shape for m in masks.between] == [(64, 1, H)] * 2 and masks.output.shape == (64, 1, H)
    assert [m.shape for m in masks.W_hh] == [(G[cell] * H, H)] * 3
    for m, p in [*[(m, 0.3) for m in masks.between], (masks.output, 0.5), *[(m, 0.25) for m in masks.W_hh]]:
        assert all(v == 0 or abs(v - 1 / (1 - p)) < 1e-6 for v in m.unique().tolist())
    kept = torch.cat([m.flatten() for m in masks.W_hh]).ne(0).double().mean()
    assert abs(kept - 0.75) < 0.05
    model.variational = False
    assert model.draw_masks(4, T).output.shape == (4, T, H)  # per step: a mask for every step


def test_nothing_is_drawn_when_only_dropout_is_on():
    model = CharRNN(V, H, 2, dropout=0.3)
    before = torch.get_rng_state()
    assert model.draw_masks(B, T) is None
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("cell", CELLS)
def test_evaluation_sampling_and_scoring_drop_nothing(cell):
    vocab = Vocab.from_text("abcdefghij\n")
    plain = CharRNN(len(vocab), H, L, cell=cell, impl="fused").double()
    noisy = CharRNN(len(vocab), H, L, cell=cell, impl="fused", dropout=0.5, dropout_output=0.5, weight_drop=0.5,
                    variational=True).double()
    noisy.load_state_dict(plain.state_dict())
    noisy.train()  # sampling and scoring must switch it to eval themselves
    text = "abcabcjihgf\nabc" * 3
    assert score(noisy, vocab, text)["total_nats"] == score(plain, vocab, text)["total_nats"]
    seeded = Sampling(seed=5)
    assert generate(noisy, vocab, "a", 60, seeded) == generate(plain, vocab, "a", 60, seeded)
    assert noisy.training  # and back to training afterwards
    noisy.eval()
    x = torch.randint(0, len(vocab), (B, T))
    assert torch.equal(noisy(x)[0], plain(x)[0])


@pytest.mark.parametrize("key", ["model.dropout_output", "model.weight_drop"])
@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_rates_are_checked(key, value):
    with pytest.raises(UserError, match=rf"{key}: must be in \[0, 1\)"):
        build_config({}, [f"{key}={value}"])


def test_a_run_with_every_regulariser_trains(tmp_path, corpus_file):
    over = {"model.num_layers": 2, "model.dropout": 0.2, "model.dropout_output": 0.2, "model.weight_drop": 0.2,
            "model.variational_dropout": "true", "train.max_steps": 20, "train.weight_decay": 0.01,
            "train.optimizer": "adamw"}
    summary = train(build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **over)), progress=False,
                    log=lambda *a: None)
    losses = [v for _, v in summary["train_log"]]
    assert losses[-1] < losses[0]
