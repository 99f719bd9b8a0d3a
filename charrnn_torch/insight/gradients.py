"""Gradients through time: how far back the loss reaches, the tutorial's lesson on why plain RNNs
are hard to train, measured on a model.

For windows of text x_0..x_T and ℓ_T, the loss at the window's last character (predicted from
h_{T-1}), this computes, per layer:

- ||∂ℓ_T/∂h_t|| against the distance T-1-t (0: the state that makes the prediction), and for the
  LSTM ||∂ℓ_T/∂c_t``||, each averaged over the windows: the products of Jacobians that make
  gradients vanish or explode;
- the per-step factor: the spectral norm of the state-to-state Jacobian ∂s_t/∂s_{t-1} (s = h, or
  (h, c) for the LSTM, the input from below held fixed), found by power iteration on JᵀJ
  (POWER_STEPS of them: a lower bound on the spectral norm that converges to it), averaged over
  the windows' steps;
- the spectral radius of each H×H block of W_hh (one block per gate).

The gradients are autograd's through the model's own loop unroll (CharRNN.states_through_time);
tests/test_insight_gradients.py proves them equal to the numpy reference's BPTT deltas.
"""
import numpy as np
import torch
import torch.nn.functional as F

WINDOW = 200  # characters of context per window
WINDOWS = 8  # windows averaged over
POWER_STEPS = 20  # power iterations for each Jacobian's spectral norm
DISTANCES = (10, 50, 100)  # where TensorBoard's scalars read the curve, relative to distance 1


def windows(ids, length=WINDOW, count=WINDOWS):
    """Up to count non-overlapping windows of length + 1 ids from ids (N,): (W, length + 1); shorter
    windows when the text is short."""
    length = min(length, len(ids) - 1)
    if length < 2:
        raise ValueError("gradients through time need a text of at least 3 characters")
    n = max(1, min(count, (len(ids) - 1) // length))
    return torch.stack([ids[i * length:i * length + length + 1] for i in range(n)])


def loss_gradients(model, x, y):
    """{name: (L, T, B, H)} of ∂ℓ_T/∂state_t for x, y (B, T), ℓ_T the loss at the last step summed
    over the batch (each row's gradient is its own), and ℓ_T itself."""
    with torch.enable_grad():
        logits, states = model.states_through_time(x)
        loss = F.cross_entropy(logits[:, -1], y[:, -1], reduction="sum")
        names = list(states)
        flat = [s for name in names for layer in states[name] for s in layer]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    L, T = model.num_layers, x.shape[1]
    grads = [torch.zeros_like(s) if g is None else g for s, g in zip(flat, grads)]
    out = {name: torch.stack(grads[k * L * T:(k + 1) * L * T]).view(L, T, *x.shape[:1], -1)
           for k, name in enumerate(names)}
    return {name: g.detach() for name, g in out.items()}, loss.detach()


def step_jacobian_norms(model, x, steps=POWER_STEPS):
    """(L, B, T-1): the spectral norm of ∂s_t/∂s_{t-1} at each step t >= 1 of x (B, T), by power
    iteration; s = h, or (h, c) for the LSTM, the input from below held fixed."""
    trace = model.trace(x)  # {name: (L, B, T, H)}
    B, T = x.shape
    out = []
    for l, cell in enumerate(model.cells):
        inp = x[:, 1:].reshape(-1) if l == 0 else trace["h"][l - 1][:, 1:].reshape(B * (T - 1), -1)
        prev = tuple(trace[name][l][:, :-1].reshape(B * (T - 1), -1) for name in model.state_names)

        def step(*state, cell=cell, inp=inp):
            new = cell(inp, state if len(state) == 2 else state[0], cell.W_hh)
            return new if isinstance(new, tuple) else (new,)

        out.append(spectral_norms(step, prev, steps).view(B, T - 1))
    return torch.stack(out)


def spectral_norms(fn, point, steps):
    """Per row, the largest singular value of fn's Jacobian at point (a tuple of (N, ·) tensors; fn
    maps each row on its own), by power iteration on JᵀJ from a fixed start."""
    g = torch.Generator(device=point[0].device).manual_seed(0)
    v = tuple(torch.randn(p.shape, generator=g, dtype=p.dtype, device=p.device) for p in point)
    with torch.enable_grad():
        _, pullback = torch.func.vjp(fn, *point)
        for i in range(steps + 1):
            size = torch.sqrt(sum((a * a).sum(-1) for a in v)).clamp_min(1e-300)[:, None]
            v = tuple(a / size for a in v)
            _, u = torch.func.jvp(fn, point, v)  # J v
            if i < steps:
                v = pullback(u)  # Jᵀ J v
    return torch.sqrt(sum((a * a).sum(-1) for a in u)).detach()


def spectral_radii(model):
    """Per layer, {block name: spectral radius of that gate's H×H block of W_hh}."""
    cell0, H = model.cells[0], model.hidden_size
    names = cell0.gate_names or ("W_hh",)
    return [{name: float(torch.linalg.eigvals(cell.W_hh[g * H:(g + 1) * H].detach().double().cpu()).abs().max())
             for g, name in enumerate(names)} for cell in model.cells]


def curves(model, ids, jacobians=True):
    """Everything above for windows ids (W, T+1), as plain data: {"distance": [0..T-1], "grad":
    {name: L lists, the mean ||∂ℓ_T/∂name_t|| at each distance}, "jacobian": L means of the per-step
    spectral norm (None without jacobians), "spectral_radius": per layer {gate: radius}, "loss"}."""
    x, y = ids[:, :-1], ids[:, 1:]
    grads, loss = loss_gradients(model, x, y)
    mean_norm = {name: g.double().norm(dim=-1).mean(-1).flip(-1) for name, g in grads.items()}  # (L, T) by distance
    jac = step_jacobian_norms(model, x).double().mean((1, 2)).tolist() if jacobians else None
    return {"distance": list(range(x.shape[1])), "grad": {k: v.tolist() for k, v in mean_norm.items()},
            "jacobian": jac, "spectral_radius": spectral_radii(model), "loss": float(loss) / len(ids)}


def report(trained, initial, ids, length=WINDOW, count=WINDOWS):
    """The page's and insight.json's section: the curves of the trained model and of the same
    architecture at step 0 (initial), on the same windows of ids (N,)."""
    w = windows(ids, length, count).to(trained.W_hy.device)
    return {"windows": w.shape[0], "window": w.shape[1] - 1, "power_steps": POWER_STEPS,
            "trained": curves(trained, w), "init": curves(initial, w.to(initial.W_hy.device))}


def relative_scalars(found, distances=DISTANCES):
    """TensorBoard's few numbers: per layer and state, the mean gradient norm at each distance
    relative to distance 1 (where the window reaches that far)."""
    out = {}
    for name, layers in found["grad"].items():
        for l, curve in enumerate(layers):
            for d in distances:
                if d < len(curve) and curve[1] > 0:
                    out[f"gradients/d{name}_layer{l}_at_{d}_over_1"] = curve[d] / curve[1]
    return out


COLOURS = ((214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189))


def curve_image(found, height=160, width=400):
    """The curves as TensorBoard's image: (3, height, width) uint8, log10 of the gradient norm (rows)
    against distance (columns), one colour per layer (h solid; the LSTM's c lighter)."""
    img = np.full((3, height, width), 255, np.uint8)
    lines = [(np.log10(np.maximum(np.asarray(c), 1e-30)), COLOURS[l % 4], name == "c")
             for name, layers in found["grad"].items() for l, c in enumerate(layers)]
    lo, hi = min(v.min() for v, _, _ in lines), max(v.max() for v, _, _ in lines)
    span = max(hi - lo, 1e-9)
    for values, colour, light in lines:
        cols = np.linspace(0, len(values) - 1, width)
        rows = (height - 1) * (1 - (np.interp(cols, np.arange(len(values)), values) - lo) / span)
        shade = [min(255, c + 100) if light else c for c in colour]
        for ch in range(3):
            img[ch, np.round(rows).astype(int), np.arange(width)] = shade[ch]
    return img

