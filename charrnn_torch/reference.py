"""The numpy reference: the tutorial's char-RNN forward, BPTT, sampler and Adagrad step.

numpy only (no torch), written to be read beside ``model.py``: the same
names (``cells.{l}.W_xh``, ``W_hy`` ...), the same row-vector batch layout
(B, T, V, H, L), the same loop order. It generalises the tutorial's single
stream and single layer to a batch B >= 1 and L >= 1 layers; with B=1, L=1 it
is the tutorial's ``lossFun`` line for line.
"""
import numpy as np


def param_names(num_layers):
    names = []
    for l in range(num_layers):
        names += [f"cells.{l}.W_xh", f"cells.{l}.W_hh", f"cells.{l}.b_h"]
    return names + ["W_hy", "b_y"]


def num_layers_of(params):
    return sum(1 for k in params if k.endswith(".W_hh"))


def init_params(vocab_size, hidden_size, num_layers=1, rng=None, scale=0.01):
    """The tutorial's init: weights N(0, scale^2), biases zero."""
    rng = rng if rng is not None else np.random.default_rng(0)
    V, H = vocab_size, hidden_size
    params = {}
    for l in range(num_layers):
        params[f"cells.{l}.W_xh"] = rng.standard_normal((H, V if l == 0 else H)) * scale
        params[f"cells.{l}.W_hh"] = rng.standard_normal((H, H)) * scale
        params[f"cells.{l}.b_h"] = np.zeros(H)
    params["W_hy"] = rng.standard_normal((V, H)) * scale
    params["b_y"] = np.zeros(V)
    return params


def softmax(y):
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def forward(params, x, h0):
    """x: (B, T) ids; h0: (L, B, H). Returns logits (B, T, V) and hs[l][t] = h_t of layer l (B, H)."""
    L = num_layers_of(params)
    B, T = x.shape
    h = [h0[l] for l in range(L)]
    hs = [[None] * T for _ in range(L)]
    top = []
    for t in range(T):
        inp = x[:, t]  # (B,) ids
        for l in range(L):
            W_xh, W_hh, b_h = (params[f"cells.{l}.{n}"] for n in ("W_xh", "W_hh", "b_h"))
            # one-hot x_t: W_xh x_t is column x_t of W_xh
            xproj = W_xh.T[inp] if l == 0 else inp @ W_xh.T
            h[l] = np.tanh(xproj + h[l] @ W_hh.T + b_h)
            hs[l][t] = h[l]
            inp = h[l]
        top.append(inp)
    top = np.stack(top, axis=1)  # (B, T, H)
    logits = top @ params["W_hy"].T + params["b_y"]  # (B, T, V)
    return logits, hs


def loss_and_grads(params, x, targets, h0):
    """The tutorial's lossFun, batched and stacked.

    loss = sum over b, t of -log p_t[target] (a sum, as in the tutorial, not a mean).
    Returns (loss, grads, dh0, h_last, logits); h_last (L, B, H) chains into the
    next chunk as the tutorial's hprev does.
    """
    L = num_layers_of(params)
    B, T = x.shape
    logits, hs = forward(params, x, h0)
    V = logits.shape[-1]
    H = h0.shape[-1]
    p = softmax(logits)  # (B, T, V)
    b_idx, t_idx = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    loss = -np.log(p[b_idx, t_idx, targets]).sum()

    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dy = p.copy()
    dy[b_idx, t_idx, targets] -= 1  # backprop into y: softmax minus one-hot
    top = np.stack(hs[L - 1], axis=1)  # (B, T, H)
    grads["W_hy"] = dy.reshape(-1, V).T @ top.reshape(-1, H)
    grads["b_y"] = dy.sum(axis=(0, 1))
    dtop = dy @ params["W_hy"]  # (B, T, H)

    dhnext = [np.zeros((B, H)) for _ in range(L)]
    for t in reversed(range(T)):
        dinp = dtop[:, t]  # gradient reaching layer l's h_t from above
        for l in reversed(range(L)):
            W_xh, W_hh = params[f"cells.{l}.W_xh"], params[f"cells.{l}.W_hh"]
            dh = dinp + dhnext[l]
            dhraw = (1 - hs[l][t] ** 2) * dh  # backprop through tanh
            hprev = hs[l][t - 1] if t > 0 else h0[l]
            grads[f"cells.{l}.b_h"] += dhraw.sum(axis=0)
            grads[f"cells.{l}.W_hh"] += dhraw.T @ hprev
            if l == 0:
                # dW_xh x_t^T with one-hot x_t adds dhraw into the columns x_t.
                np.add.at(grads[f"cells.{l}.W_xh"].T, x[:, t], dhraw)
            else:
                grads[f"cells.{l}.W_xh"] += dhraw.T @ hs[l - 1][t]
                dinp = dhraw @ W_xh
            dhnext[l] = dhraw @ W_hh
    dh0 = np.stack(dhnext)
    h_last = np.stack([hs[l][T - 1] for l in range(L)])
    return loss, grads, dh0, h_last, logits


def clip_global_norm(grads, max_norm):
    """Scale all grads by min(1, max_norm / (||g|| + 1e-6)).

    The 1e-6 is where torch.nn.utils.clip_grad_norm_ puts it; mirroring it lets
    the parity test hold to 1e-9 instead of to the size of that epsilon.
    """
    total = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    coef = min(1.0, max_norm / (total + 1e-6))
    for g in grads.values():
        g *= coef
    return total


def adagrad_step(params, grads, mem, lr, clip_value=5.0, max_norm=None, eps=1e-8,
                 eps_inside_sqrt=True):
    """The tutorial's update, in place: clip, mem += d*d, p -= lr * d / sqrt(mem + eps).

    Epsilon placement: the tutorial divides by sqrt(mem + eps); torch.optim.Adagrad
    divides by sqrt(mem) + eps. ``eps_inside_sqrt=False`` gives torch's placement.
    ``clip_value`` is the tutorial's element-wise clip to [-5, 5] (None disables);
    ``max_norm`` adds global-norm clipping as clip_grad_norm_ does.
    """
    if max_norm is not None:
        clip_global_norm(grads, max_norm)
    for k, p in params.items():
        d = grads[k]
        if clip_value is not None:
            np.clip(d, -clip_value, clip_value, out=d)  # mitigate exploding gradients
        mem[k] += d * d
        denom = np.sqrt(mem[k] + eps) if eps_inside_sqrt else np.sqrt(mem[k]) + eps
        p -= lr * d / denom


def sample(params, h0, seed_ix, n, rng, temperature=1.0):
    """Ancestral sampling of n ids after seed_ix, by inverse CDF with rng.random().

    h0: (L, H) for one stream. Like the tutorial's sample(), the seed is fed
    first and is not part of the output.
    """
    L = num_layers_of(params)
    h = h0.reshape(L, 1, -1)
    ix = seed_ix
    out = []
    for _ in range(n):
        logits, hs = forward(params, np.array([[ix]]), h)
        h = np.stack([hs[l][0] for l in range(L)])
        p = softmax(logits[0, 0] / temperature)
        u = rng.random()
        ix = min(int(np.searchsorted(np.cumsum(p), u, side="right")), p.shape[0] - 1)
        out.append(ix)
    return out
