"""Proves the gradients-through-time numbers (insight/gradients.py): ∂ℓ_T/∂h_t (and ∂ℓ_T/∂c_t for
the LSTM) equal the numpy reference's BPTT deltas, the dh (and dc) it carries back through time,
to 1e-9 in float64 for the three cells at 1 and 2 layers (on CUDA too, where there is one); the per-step factor equals the spectral
norm of the state-to-state Jacobian computed in full; the spectral radii are numpy's; the model at
step 0 is the one the trainer starts from; and a run logs the curve, its scalars and the fraction
of clipped steps to TensorBoard, and the page's insight.json holds the curves trained and at init.
Sizes are distinct: V=11, H=7, B=3, T=5."""
import json

import numpy as np
import pytest
import torch

from charrnn_torch import CharRNN
from charrnn_torch.cli import main
from charrnn_torch.insight import gradients
from charrnn_torch.model import reference
from charrnn_torch.model.cells import CELLS
from charrnn_torch.training import checkpoint, runs
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import Trainer, train
from conftest import read_scalars, rel_err, tiny_overrides

V, H, B, T = 11, 7, 3, 5


def make_model(cell, L):
    torch.manual_seed(0)
    model = CharRNN(V, H, L, cell=cell).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_loss_gradients_are_the_reference_bptt_deltas(cell, L, device):
    model = make_model(cell, L)
    x, y = batch()
    found, loss = gradients.loss_gradients(model.to(device), x.to(device), y.to(device))
    found = {name: g.cpu() for name, g in found.items()}
    model.cpu()
    params = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    zeros = np.zeros((L, B, H))
    deltas = {}
    r_loss, *_ = reference.loss_and_grads(params, x.numpy(), y.numpy(), (zeros, zeros.copy()) if cell == "lstm" else zeros,
                                          loss_steps=[T - 1], deltas=deltas)
    assert sorted(found) == sorted(deltas) == sorted(model.state_names)
    assert abs(loss.item() - r_loss) <= 1e-12 * abs(r_loss)
    for name in deltas:
        assert found[name].shape == deltas[name].shape == (L, T, B, H)
        assert rel_err(found[name].numpy(), deltas[name]) <= 1e-9, name
    assert np.abs(deltas["h"][:, 0]).max() > 0  # the first step is reached at all


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_the_per_step_factor_is_the_jacobians_spectral_norm(cell):
    model = make_model(cell, 2)
    x, _ = batch()
    got = gradients.step_jacobian_norms(model, x, steps=300)  # (L, B, T-1)
    trace = model.trace(x)
    n = len(model.state_names)
    for l in range(2):
        for b in range(B):
            for t in range(1, T):
                inp = x[b, t][None] if l == 0 else trace["h"][l - 1][b, t][None]
                prev = torch.cat([trace[s][l][b, t - 1] for s in model.state_names])[None]

                def step(flat):
                    parts = flat.split(H, -1)
                    new = model.cells[l](inp, parts if n == 2 else parts[0], model.cells[l].W_hh)
                    return torch.cat(new, -1) if n == 2 else new

                J = torch.autograd.functional.jacobian(step, prev)[0, :, 0]
                assert got[l, b, t - 1].item() == pytest.approx(torch.linalg.matrix_norm(J, 2).item(), rel=1e-8)


def test_spectral_radii_are_numpys():
    model = make_model("lstm", 2)
    radii = gradients.spectral_radii(model)
    W = model.cells[1].W_hh.detach().numpy()
    assert list(radii[1]) == list(model.cells[0].gate_names)
    assert radii[1]["forget"] == pytest.approx(np.abs(np.linalg.eigvals(W[H:2 * H])).max(), rel=1e-12)


def test_the_curves_are_by_distance():
    model = make_model("gru", 2)
    x, y = batch()
    ids = torch.cat([x, y[:, -1:]], 1)  # windows of T + 1 characters
    found = gradients.curves(model, ids)
    direct, _ = gradients.loss_gradients(model, ids[:, :-1], ids[:, 1:])
    norms = direct["h"].norm(dim=-1).mean(-1)  # (L, T) by step
    assert found["distance"] == list(range(T))
    assert rel_err(np.array(found["grad"]["h"]), norms.flip(-1).numpy()) <= 1e-12  # distance 0: the last step


def test_step_zero_is_the_trainers_model(tmp_path, corpus_file):
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{"model.cell": "lstm", "train.max_steps": 3}))
    start = {k: v.clone() for k, v in Trainer(cfg, progress=False, log=lambda *a: None).model.state_dict().items()}
    torch.manual_seed(123)
    before = torch.rand(3)
    train(cfg, force=True, progress=False, log=lambda *a: None)
    model, _, ckpt = checkpoint.load_model(tmp_path / "r")
    torch.manual_seed(123)
    fresh = runs.initial_model(ckpt, model)
    assert torch.equal(torch.rand(3), before)  # the process's random state is left as it was
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in start.items())
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in start.items())  # trained


def test_a_run_logs_the_curve_and_the_clipped_fraction(tmp_path, corpus_file):
    for clip, expect in (("1e-4", 1.0), ("0", 0.0)):
        out = tmp_path / f"clip{clip}"
        cfg = build_config({}, tiny_overrides(corpus_file, out, **{"train.grad_clip": clip, "train.max_steps": 10}))
        train(cfg, progress=False, log=lambda *a: None)
        acc, scalars = read_scalars(out)
        assert [v for _, v in scalars["grad_clipped_fraction"]] == [expect, expect]
    assert "gradients/norm_by_distance" in acc.Tags()["images"]
    assert 0 < scalars["gradients/dh_layer0_at_10_over_1"][-1][1]


def test_the_page_data_holds_both_curves(tmp_path, corpus_file):
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{"train.max_steps": 10, "model.num_layers": 2}))
    train(cfg, progress=False, log=lambda *a: None)
    assert main(["visualize", "--checkpoint", str(tmp_path / "r"), "--out", str(tmp_path / "viz"), "--max-chars", "500"]) == 0
    g = json.loads((tmp_path / "viz" / "insight.json").read_text())["gradients"]
    assert g["window"] == 200 and g["windows"] == 2
    for when in ("trained", "init"):
        assert len(g[when]["grad"]["h"]) == 2 and len(g[when]["grad"]["h"][0]) == 200
        assert len(g[when]["jacobian"]) == 2 and list(g[when]["spectral_radius"][0]) == ["W_hh"]
    assert g["trained"]["grad"] != g["init"]["grad"]
    assert "Gradients through time" in (tmp_path / "viz" / "index.html").read_text()
