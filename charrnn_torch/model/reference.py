"""The numpy reference: the tutorial's char-RNN forward, BPTT, sampler and Adagrad step.

The maths is numpy only (no torch), written to be read beside ``model.py``: the same
names (``cells.{l}.W_xh``, ``W_hy`` ...), the same row-vector batch layout
(B, T, V, H, L), the same loop order. It generalises the tutorial's single
stream and single layer to a batch B >= 1 and L >= 1 layers; with B=1, L=1 it
is the tutorial's ``lossFun`` line for line.
"""
import numpy as np

# Its own table, not the model's: the reference shares nothing with what it proves.
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # rows of W_xh, W_hh and b_h, in units of H


def param_names(num_layers, cell="rnn", bidirectional=False):
    names = []
    for stack in ("cells", "cells_bwd") if bidirectional else ("cells",):
        for l in range(num_layers):
            names += [f"{stack}.{l}.W_xh", f"{stack}.{l}.W_hh", f"{stack}.{l}.b_h"] + (
                [f"{stack}.{l}.b_hn"] if cell == "gru" else [])
    return names + ["W_hy", "b_y"] + (["W_hy_bwd"] if bidirectional else [])


def num_layers_of(params):
    return sum(1 for k in params if k.startswith("cells.") and k.endswith(".W_hh"))


def cell_of(params):
    """rnn, lstm or gru, read off W_hh's shape: (G·H, H)."""
    W_hh = params["cells.0.W_hh"]
    return {g: cell for cell, g in GATES.items()}[W_hh.shape[0] // W_hh.shape[1]]


def init_params(vocab_size, hidden_size, num_layers=1, rng=None, scale=0.01, cell="rnn"):
    """The tutorial's init: weights N(0, scale^2), biases zero."""
    rng = rng if rng is not None else np.random.default_rng(0)
    V, H, G = vocab_size, hidden_size, GATES[cell]
    params = {}
    for l in range(num_layers):
        params[f"cells.{l}.W_xh"] = rng.standard_normal((G * H, V if l == 0 else H)) * scale
        params[f"cells.{l}.W_hh"] = rng.standard_normal((G * H, H)) * scale
        params[f"cells.{l}.b_h"] = np.zeros(G * H)
        if cell == "gru":
            params[f"cells.{l}.b_hn"] = np.zeros(H)
    params["W_hy"] = rng.standard_normal((V, H)) * scale
    params["b_y"] = np.zeros(V)
    return params


def softmax(y):
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def unpack_masks(masks, L):
    """(between, output, W_hh) from a masks dict, as model.Masks holds them: between, L masks
    over time (B, T|1, H) on layer l's h where it feeds layer l+1 (the top layer's None); output,
    one on the top layer's h before W_hy; W_hh, L masks on each layer's W_hh. Each is already
    scaled by 1/(1-p); a missing one is None (no dropout there)."""
    masks = masks or {}
    between = list(masks.get("between") or [])
    return between + [None] * (L - len(between)), masks.get("output"), list(masks.get("W_hh") or [None] * L)


def at_step(mask, t):
    """A (B, T|1, H) mask at step t (a locked mask is the same at every step), or 1 for none."""
    return 1.0 if mask is None else mask[:, t if mask.shape[1] > 1 else 0]


def recurrent_weights(params, W_drop):
    """Each layer's W_hh as the forward uses it: times its DropConnect mask, if any."""
    return [params[f"cells.{l}.W_hh"] * (1.0 if m is None else m) for l, m in enumerate(W_drop)]


def forward(params, x, h0, masks=None):
    """x: (B, T) ids; h0: (L, B, H). Returns logits (B, T, V) and hs[l][t] = h_t of layer l (B, H)."""
    L = num_layers_of(params)
    B, T = x.shape
    between, out_mask, W_drop = unpack_masks(masks, L)
    W_hhs = recurrent_weights(params, W_drop)
    h = [h0[l] for l in range(L)]
    hs = [[None] * T for _ in range(L)]
    for t in range(T):
        inp = x[:, t]  # (B,) ids
        for l in range(L):
            W_xh, b_h = params[f"cells.{l}.W_xh"], params[f"cells.{l}.b_h"]
            # one-hot x_t: W_xh x_t is column x_t of W_xh
            xproj = W_xh.T[inp] if l == 0 else inp @ W_xh.T
            h[l] = np.tanh(xproj + h[l] @ W_hhs[l].T + b_h)
            hs[l][t] = h[l]
            inp = h[l] * at_step(between[l], t)
    top = np.stack(hs[L - 1], axis=1) * (1.0 if out_mask is None else out_mask)  # (B, T, H)
    logits = top @ params["W_hy"].T + params["b_y"]  # (B, T, V)
    return logits, hs


def output_loss_and_grads(params, top, targets, grads, loss_steps=None):
    """The output layer, shared by every cell: y = W_hy h + b_y over the top layer's h (B, T, H),
    the summed cross-entropy against targets (B, T), and its backward. Fills grads["W_hy"] and
    grads["b_y"]; returns (loss, logits (B, T, V), dL/dtop (B, T, H)). loss_steps: the steps whose
    loss counts (default all), e.g. [T - 1] for the loss at the window's last character alone."""
    logits = top @ params["W_hy"].T + params["b_y"]  # (B, T, V)
    loss, dy = cross_entropy_and_grad(logits, targets, loss_steps)
    grads["W_hy"] = dy.reshape(-1, dy.shape[-1]).T @ top.reshape(-1, top.shape[-1])
    grads["b_y"] = dy.sum(axis=(0, 1))
    return loss, logits, dy @ params["W_hy"]


def cross_entropy_and_grad(logits, targets, loss_steps=None):
    """(summed cross-entropy of logits (B, T, V) against targets (B, T) over loss_steps (default
    all), its gradient with respect to the logits)."""
    B, T, _ = logits.shape
    counted = np.zeros(T)
    counted[np.arange(T) if loss_steps is None else loss_steps] = 1.0
    p = softmax(logits)
    b_idx, t_idx = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    loss = -(np.log(p[b_idx, t_idx, targets]) * counted).sum()
    dy = p.copy()
    dy[b_idx, t_idx, targets] -= 1  # backprop into y: softmax minus one-hot
    return loss, dy * counted[None, :, None]


def loss_and_grads(params, x, targets, h0, masks=None, loss_steps=None, deltas=None):
    """The tutorial's lossFun, batched and stacked.

    loss = sum over b, t of -log p_t[target] (a sum, as in the tutorial, not a mean).
    Returns (loss, grads, dh0, h_last, logits); h_last (L, B, H) chains into the
    next chunk as the tutorial's hprev does. masks: dropout masks fixed in advance
    (unpack_masks). loss_steps: the steps whose loss counts (default all). deltas: a dict that,
    if given, receives the BPTT deltas, the gradient carried back through time: deltas["h"][l, t]
    = dL/dh_t of layer l (L, T, B, H), and for the LSTM deltas["c"], dL/dc_t. Gated cells (LSTM,
    GRU) go to gated_loss_and_grads, below.
    """
    if cell_of(params) != "rnn":
        return gated_loss_and_grads(params, x, targets, h0, masks, loss_steps, deltas)
    L = num_layers_of(params)
    _, out_mask, _ = unpack_masks(masks, L)
    _, hs = forward(params, x, h0, masks)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    out_mask = 1.0 if out_mask is None else out_mask
    loss, logits, dtop = output_loss_and_grads(params, np.stack(hs[L - 1], axis=1) * out_mask, targets, grads,
                                               loss_steps)
    dh0 = rnn_backward(params, x, h0, hs, dtop * out_mask, masks, grads, deltas)  # through the output dropout
    h_last = np.stack([hs[l][-1] for l in range(L)])
    return loss, grads, dh0, h_last, logits


def rnn_backward(params, x, h0, hs, dtop, masks, grads, deltas=None):
    """BPTT of the tanh cell from dL/dtop (B, T, H), the gradient reaching the top layer's h from
    the output: adds into grads, fills deltas (loss_and_grads) if given, returns dL/dh0."""
    L = num_layers_of(params)
    B, T = x.shape
    between, _, W_drop = unpack_masks(masks, L)
    W_hhs = recurrent_weights(params, W_drop)
    H = h0.shape[-1]
    if deltas is not None:
        deltas["h"] = np.zeros((L, T, B, H))
    dhnext = [np.zeros((B, H)) for _ in range(L)]
    for t in reversed(range(T)):
        dinp = dtop[:, t]  # gradient reaching layer l's h_t from above
        for l in reversed(range(L)):
            W_xh = params[f"cells.{l}.W_xh"]
            dh = dinp + dhnext[l]
            if deltas is not None:
                deltas["h"][l, t] = dh
            dhraw = (1 - hs[l][t] ** 2) * dh  # backprop through tanh
            hprev = hs[l][t - 1] if t > 0 else h0[l]
            grads[f"cells.{l}.b_h"] += dhraw.sum(axis=0)
            grads[f"cells.{l}.W_hh"] += dhraw.T @ hprev  # the masked W_hh's gradient, for now
            if l == 0:
                # dW_xh x_t^T with one-hot x_t adds dhraw into the columns x_t.
                np.add.at(grads[f"cells.{l}.W_xh"].T, x[:, t], dhraw)
            else:
                keep = at_step(between[l - 1], t)  # the dropout on the input from below
                grads[f"cells.{l}.W_xh"] += dhraw.T @ (hs[l - 1][t] * keep)
                dinp = (dhraw @ W_xh) * keep
            dhnext[l] = dhraw @ W_hhs[l]
    for l, m in enumerate(W_drop):
        grads[f"cells.{l}.W_hh"] *= 1.0 if m is None else m  # d(W_hh * m)/dW_hh
    return np.stack(dhnext)


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


# ---------------------------------------------------------------- the gated cells
# Written from the equations, not from model.py's code; the same names and row layout.

def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def lstm_step(a, c_prev):
    """a = W_xh x + W_hh h_prev + b_h (B, 4H), gates in the order i, f, g, o."""
    i, f, g, o = np.split(a, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c = f * c_prev + i * g
    return o * np.tanh(c), c, (i, f, g, o, c, c_prev)


def lstm_step_back(cache, dh, dc):
    """(dL/da, dL/dc_prev, dL/dc_t) from dL/dh_t and the dL/dc_t that reaches c_t from step t+1."""
    i, f, g, o, c, c_prev = cache
    tc = np.tanh(c)
    dc = dc + dh * o * (1 - tc ** 2)  # c_t reaches the loss through h_t too
    da = np.concatenate([dc * g * i * (1 - i),  # input gate
                         dc * c_prev * f * (1 - f),  # forget gate
                         dc * i * (1 - g ** 2),  # cell candidate
                         dh * tc * o * (1 - o)], axis=1)  # output gate
    return da, dc * f, dc


def gru_step(ax, ah, b_hn, h_prev):
    """ax = W_xh x + b_h and ah = W_hh h_prev (B, 3H), gates in the order r, z, n."""
    xr, xz, xn = np.split(ax, 3, axis=1)
    hr, hz, hn = np.split(ah, 3, axis=1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = np.tanh(xn + r * (hn + b_hn))
    return (1 - z) * n + z * h_prev, (r, z, n, hn + b_hn, h_prev)


def gru_step_back(cache, dh):
    """(dL/dax, dL/dah, the part of dL/dh_prev that skips W_hh) from dL/dh_t."""
    r, z, n, hn_b, h_prev = cache
    dn = dh * (1 - z) * (1 - n ** 2)  # through n's tanh
    dr = dn * hn_b * r * (1 - r)
    dz = dh * (h_prev - n) * z * (1 - z)
    return np.concatenate([dr, dz, dn], axis=1), np.concatenate([dr, dz, dn * r], axis=1), dh * z


def gated_forward(params, x, state0, W_hhs, between):
    """The LSTM's or GRU's forward over all layers and steps: (h, c (None for the GRU), hs, caches),
    hs[l][t] = h_t of layer l and caches[l][t] what its step's backward needs."""
    L, lstm = num_layers_of(params), cell_of(params) == "lstm"
    B, T = x.shape
    h = [state0[0][l] if lstm else state0[l] for l in range(L)]
    c = [state0[1][l] for l in range(L)] if lstm else None
    hs = [[None] * T for _ in range(L)]  # h_t of each layer
    caches = [[None] * T for _ in range(L)]
    for t in range(T):
        inp = x[:, t]  # (B,) ids
        for l in range(L):
            W_xh, b_h = params[f"cells.{l}.W_xh"], params[f"cells.{l}.b_h"]
            ax = (W_xh.T[inp] if l == 0 else inp @ W_xh.T) + b_h  # one-hot x_t: column x_t of W_xh
            h_prev = h[l]
            if lstm:
                h[l], c[l], cache = lstm_step(ax + h_prev @ W_hhs[l].T, c[l])
            else:
                h[l], cache = gru_step(ax, h_prev @ W_hhs[l].T, params[f"cells.{l}.b_hn"], h_prev)
            caches[l][t] = (cache, h_prev, inp)  # inp: layer l's input, after the dropout on it
            hs[l][t] = h[l]
            inp = h[l] * at_step(between[l], t)
    return h, c, hs, caches


def gated_loss_and_grads(params, x, targets, state0, masks=None, loss_steps=None, deltas=None):
    """loss_and_grads for the LSTM (state0 = (h0, c0)) and the GRU (state0 = h0), each (L, B, H).

    Returns (loss, grads, dstate0, state_last, logits), the states shaped like state0.
    """
    L, lstm = num_layers_of(params), cell_of(params) == "lstm"
    between, out_mask, W_drop = unpack_masks(masks, L)
    out_mask = 1.0 if out_mask is None else out_mask
    h, c, hs, caches = gated_forward(params, x, state0, recurrent_weights(params, W_drop), between)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    loss, logits, dtop = output_loss_and_grads(params, np.stack(hs[L - 1], axis=1) * out_mask, targets, grads,
                                               loss_steps)
    dstate0 = gated_backward(params, x, caches, dtop * out_mask, masks, grads, deltas)  # through the output dropout
    return loss, grads, dstate0, (np.stack(h), np.stack(c)) if lstm else np.stack(h), logits


def gated_backward(params, x, caches, dtop, masks, grads, deltas=None):
    """BPTT of the LSTM or GRU from dL/dtop (B, T, H): adds into grads, fills deltas if given,
    returns dL/dstate0 ((dh0, dc0) for the LSTM)."""
    L, lstm = num_layers_of(params), cell_of(params) == "lstm"
    B, T, H = dtop.shape
    between, _, W_drop = unpack_masks(masks, L)
    W_hhs = recurrent_weights(params, W_drop)
    if deltas is not None:
        deltas.update({name: np.zeros((L, T, B, H)) for name in (("h", "c") if lstm else ("h",))})
    dh_next = [np.zeros((B, H)) for _ in range(L)]
    dc_next = [np.zeros((B, H)) for _ in range(L)]
    for t in reversed(range(T)):
        dinp = dtop[:, t]
        for l in reversed(range(L)):
            W_xh = params[f"cells.{l}.W_xh"]
            cache, h_prev, inp = caches[l][t]
            dh = dinp + dh_next[l]
            if deltas is not None:
                deltas["h"][l, t] = dh
            if lstm:
                dax, dc_next[l], dc = lstm_step_back(cache, dh, dc_next[l])
                if deltas is not None:
                    deltas["c"][l, t] = dc
                dah, dh_skip = dax, 0.0  # one pre-activation feeds both products
            else:
                dax, dah, dh_skip = gru_step_back(cache, dh)
                grads[f"cells.{l}.b_hn"] += dah[:, 2 * H:].sum(axis=0)
            grads[f"cells.{l}.b_h"] += dax.sum(axis=0)
            grads[f"cells.{l}.W_hh"] += dah.T @ h_prev  # the masked W_hh's gradient, for now
            if l == 0:
                np.add.at(grads[f"cells.{l}.W_xh"].T, inp, dax)
            else:
                grads[f"cells.{l}.W_xh"] += dax.T @ inp
                dinp = (dax @ W_xh) * at_step(between[l - 1], t)
            dh_next[l] = dh_skip + dah @ W_hhs[l]
    for l, m in enumerate(W_drop):
        grads[f"cells.{l}.W_hh"] *= 1.0 if m is None else m  # d(W_hh * m)/dW_hh
    return (np.stack(dh_next), np.stack(dc_next)) if lstm else np.stack(dh_next)


# ---------------------------------------------------------------- both directions
# A bidirectional model: the forward stack (cells.*, W_hy) reads x in order, the backward stack
# (cells_bwd.*, W_hy_bwd) reads it flipped, and logits_t = W_hy h_fwd[t-1] + W_hy_bwd h_bwd[t+1]
# + b_y, each state zero past the window's ends, scored against x itself.

def direction_params(params, stack):
    """One direction's parameters (stack "fwd" or "bwd") under the forward stack's names (cells.*,
    W_hy, b_y), as the one-direction functions above read them; the same arrays, not copies."""
    prefix, W_hy = ("cells.", "W_hy") if stack == "fwd" else ("cells_bwd.", "W_hy_bwd")
    out = {"cells." + k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    out["W_hy"], out["b_y"] = params[W_hy], params["b_y"]
    return out


def zero_state(params, B):
    L, H = num_layers_of(params), params["cells.0.W_hh"].shape[1]
    zeros = np.zeros((L, B, H))
    return (zeros, zeros.copy()) if cell_of(params) == "lstm" else zeros


def stack_forward(params, x, state0, masks):
    """One stack over x (B, T): (its top layer's h (B, T, H) after the output dropout, what
    stack_backward needs)."""
    L = num_layers_of(params)
    between, out_mask, W_drop = unpack_masks(masks, L)
    if cell_of(params) == "rnn":
        _, saved = forward(params, x, state0, masks)
        hs = saved
    else:
        _, _, hs, saved = gated_forward(params, x, state0, recurrent_weights(params, W_drop), between)
    return np.stack(hs[L - 1], axis=1) * (1.0 if out_mask is None else out_mask), saved


def stack_backward(params, x, state0, saved, dtop, masks, grads):
    """BPTT of one stack from dL/dtop, the gradient on its top layer's h after the output dropout."""
    _, out_mask, _ = unpack_masks(masks, num_layers_of(params))
    dtop = dtop * (1.0 if out_mask is None else out_mask)
    if cell_of(params) == "rnn":
        return rnn_backward(params, x, state0, saved, dtop, masks, grads)
    return gated_backward(params, x, saved, dtop, masks, grads)


def bidirectional_loss_and_grads(params, x, masks=None):
    """(summed cross-entropy of the cloze predictions against x, grads, logits (B, T, V)). masks:
    the forward stack's (unpack_masks), with the backward stack's own under "bwd", its step t
    being that stack's t-th step (it reads x_{T-1-t})."""
    B, T = x.shape
    masks = masks or {}
    runs = []
    for name, seq, m in (("fwd", x, masks), ("bwd", x[:, ::-1], masks.get("bwd"))):
        p = direction_params(params, name)
        state0 = zero_state(p, B)
        top, saved = stack_forward(p, seq, state0, m)
        runs.append((name, p, seq, state0, saved, m, top))
    top_f, top_b = runs[0][-1], runs[1][-1][:, ::-1]  # the backward stack's h back in text order
    zeros = np.zeros((B, 1, top_f.shape[-1]))
    before = np.concatenate([zeros, top_f[:, :-1]], axis=1)  # h_fwd[t-1]
    after = np.concatenate([top_b[:, 1:], zeros], axis=1)  # h_bwd[t+1]
    logits = before @ params["W_hy"].T + after @ params["W_hy_bwd"].T + params["b_y"]
    loss, dy = cross_entropy_and_grad(logits, x)
    flat = dy.reshape(B * T, -1)
    grads = {"W_hy": flat.T @ before.reshape(B * T, -1), "W_hy_bwd": flat.T @ after.reshape(B * T, -1),
             "b_y": dy.sum(axis=(0, 1))}
    dtop_f, dtop_b = np.zeros_like(top_f), np.zeros_like(top_f)
    dtop_f[:, :-1] = (dy @ params["W_hy"])[:, 1:]  # h_fwd[t] feeds the prediction of x_{t+1}
    dtop_b[:, 1:] = (dy @ params["W_hy_bwd"])[:, :-1]  # h_bwd[t] feeds the prediction of x_{t-1}
    for (name, p, seq, state0, saved, m, _), dtop in zip(runs, (dtop_f, dtop_b[:, ::-1])):
        own = {k: np.zeros_like(v) for k, v in p.items()}
        stack_backward(p, seq, state0, saved, dtop, m, own)
        prefix = "cells." if name == "fwd" else "cells_bwd."
        grads.update({prefix + k[len("cells."):]: g for k, g in own.items() if k.startswith("cells.")})
    return loss, grads, logits
