"""Proves that model.bidirectional computes its cloze maths exactly: logits_t = W_hy h_fwd[t-1] +
W_hy_bwd h_bwd[t+1] + b_y, zero states past the window's ends, scored against x itself.

The numpy reference of both directions is checked against finite differences; every impl's autograd
is checked against it in float64 (forward to 1e-12, gradients to 1e-9), with and without fixed
dropout masks, for the three cells at 1 and 2 layers, on the CPU and (where there is one) on CUDA. Also: the backward stack's weights are its
own and its init leaves the forward stack's as a left-to-right model's; h0 is refused; the config
refuses, in one line, what a bidirectional model cannot take; training scores x itself and logs
loss/val_cloze, never loss/val. (Exact resume: tests/test_reliability.py's "bidirectional" mode.)
Sizes are distinct: V=11, H=7, B=3, T=5.
"""
import numpy as np
import pytest
import torch

from charrnn_torch import CharRNN
from charrnn_torch.cli import main
from charrnn_torch.model import reference
from charrnn_torch.model.cells import CELLS, IMPLS, Masks, cross_entropy
from charrnn_torch.training.config import BIDIRECTIONAL_NEEDS, build_config
from charrnn_torch.training.trainer import train
from conftest import central_differences, read_scalars, rel_err, tiny_overrides

V, H, B, T = 11, 7, 3, 5
G = {"rnn": 1, "lstm": 4, "gru": 3}


def make_model(cell, L, impl="loop", std=0.5, **rates):
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl=impl, cell=cell, bidirectional=True, **rates).double().build_kernels()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)  # larger than the default init, so every term matters
    return model


def numpy_params(model):
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def batch(seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def fixed_masks(cell, L, p=0.4, seed=3):
    """Different masks for each direction, as numpy (the reference) and as Masks (the model)."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        return (rng.random(shape) >= p) / (1 - p)

    def one():
        return {"between": [draw((B, T, H)) for _ in range(L - 1)], "output": draw((B, T, H)),
                "W_hh": [draw((G[cell] * H, H)) for _ in range(L)]}

    def as_masks(d):
        return Masks(between=[torch.from_numpy(m) for m in d["between"]], output=torch.from_numpy(d["output"]),
                     W_hh=[torch.from_numpy(m) for m in d["W_hh"]])

    fwd, bwd = one(), one()
    masks = as_masks(fwd)
    masks.bwd = as_masks(bwd)
    return dict(fwd, bwd=bwd), masks


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_names_match_the_reference(cell):
    model = CharRNN(V, H, 2, cell=cell, bidirectional=True)
    assert sorted(n for n, _ in model.named_parameters()) == sorted(reference.param_names(2, cell, True))
    assert model.cells_bwd[1].W_hh.shape == (G[cell] * H, H) and model.W_hy_bwd.shape == (V, H)


def test_the_forward_stack_starts_as_a_left_to_right_model():
    torch.manual_seed(5)
    bi = CharRNN(V, H, 2, cell="lstm", bidirectional=True)
    torch.manual_seed(5)
    uni = CharRNN(V, H, 2, cell="lstm")
    assert all(torch.equal(bi.state_dict()[k], v) for k, v in uni.state_dict().items())
    assert not torch.equal(bi.cells_bwd[0].W_hh, bi.cells[0].W_hh)  # weights of its own


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_against_finite_differences(cell, L):
    params = numpy_params(make_model(cell, L))
    x = batch().numpy()
    _, grads, _ = reference.bidirectional_loss_and_grads(params, x)
    checked = ["cells.0.W_hh", "cells_bwd.0.W_hh", "cells_bwd.0.W_xh", f"cells_bwd.{L - 1}.b_h", "W_hy",
               "W_hy_bwd", "b_y"]
    for name in checked:
        fd = central_differences(lambda: reference.bidirectional_loss_and_grads(params, x)[0], params[name])
        assert rel_err(grads[name], fd) <= 1e-6, name


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_autograd_matches_the_reference(cell, L, impl, device):
    model = make_model(cell, L, impl)
    params, x = numpy_params(model), batch()
    logits, _ = model.to(device)(x.to(device))
    loss = cross_entropy(logits, x.to(device), reduction="sum")
    loss.backward()
    r_loss, r_grads, r_logits = reference.bidirectional_loss_and_grads(params, x.numpy())
    assert rel_err(logits.detach().cpu().numpy(), r_logits) <= 1e-12
    assert abs(loss.item() - r_loss) <= 1e-12 * abs(r_loss)
    assert sorted(r_grads) == sorted(params)
    for name, p in model.named_parameters():
        assert rel_err(p.grad.cpu().numpy(), r_grads[name]) <= 1e-9, name


@pytest.mark.parametrize("impl", ["loop", "fused"])
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_with_fixed_masks_match_the_reference(cell, impl):
    model = make_model(cell, 2, impl, dropout=0.4, dropout_output=0.4, weight_drop=0.4)
    params, x = numpy_params(model), batch()
    arrays, masks = fixed_masks(cell, 2)
    logits, _ = model(x, masks=masks)
    cross_entropy(logits, x, reduction="sum").backward()
    _, r_grads, r_logits = reference.bidirectional_loss_and_grads(params, x.numpy(), arrays)
    assert rel_err(logits.detach().numpy(), r_logits) <= 1e-12
    for name, p in model.named_parameters():
        assert rel_err(p.grad.numpy(), r_grads[name]) <= 1e-9, name


def test_each_prediction_sees_both_sides_but_not_its_own_character():
    model = make_model("gru", 2, "fused").eval()
    x = batch()
    changed = x.clone()
    changed[:, 2] = (x[:, 2] + 1) % V
    a, b = model(x)[0], model(changed)[0]
    assert torch.equal(a[:, 2], b[:, 2])  # the character itself is hidden from its own prediction
    assert not torch.allclose(a[:, 1], b[:, 1]) and not torch.allclose(a[:, 3], b[:, 3])  # both sides see it


def test_a_given_state_is_refused():
    model = make_model("rnn", 1)
    with pytest.raises(ValueError, match="zero states"):
        model(batch(), model.init_hidden(B))


@pytest.mark.parametrize("key", BIDIRECTIONAL_NEEDS)
def test_options_it_cannot_take_are_one_error_line(key, tmp_path, corpus_file, capsys):
    wrong = {"train.stateful": "true", "train.dynamic_eval": "true", "train.cuda_graphs": "auto"}[key]
    fine = {k: str(v).lower() for k, (v, _) in BIDIRECTIONAL_NEEDS.items()}
    overrides = {**fine, key: wrong}
    code = main(["train", "--config", "tutorial.yaml", "--no-progress", f"data.path={corpus_file}",
                 f"out_dir={tmp_path / 'r'}", "model.bidirectional=true", *[f"{k}={v}" for k, v in overrides.items()]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: model.bidirectional=true needs {key}=")
    assert not (tmp_path / "r").exists()


def test_training_scores_x_and_logs_the_cloze_loss(tmp_path, corpus_file):
    out = tmp_path / "bi"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{
        "model.bidirectional": "true", "train.stateful": "false", "model.cell": "gru", "train.max_steps": 20}))
    lines = []
    s = train(cfg, progress=False, log=lines.append)
    _, scalars = read_scalars(out)
    assert "loss/val_cloze" in scalars and "loss/val" not in scalars and "bpc/val" not in scalars
    assert scalars["loss/val_cloze"][-1][1] == pytest.approx(s["val_loss"])
    assert any("val cloze loss" in line for line in lines)
    assert s["val_loss"] < np.log(len(set(corpus_file.read_text())))  # it learned something from both sides
