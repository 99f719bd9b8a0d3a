"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of Neural
Sequence Models"): the model keeps learning from the text as it scores it.

The text is cut into segments of ``seq_len`` characters, read in order with the state carried.
Each segment is scored with the current weights, then the weights take one step on that segment's
loss: the paper's RMS rule with decay toward the trained weights theta_0,

    theta <- theta - lr * g / (sqrt(MS) + eps) + decay * (sqrt(MS) / mean sqrt(MS)) * (theta_0 - theta)

(eps is RMS_FLOOR times the mean of sqrt(MS))

where MS is each weight's mean squared gradient, gathered once from the training text with the
trained weights. The score is its own figure (``loss/val_dynamic``, "dynamic" in the output),
never the plain ``loss/val``. It works on a copy of the model: the caller's model, and any
checkpoint, stay as they were.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import sample
from ..data.vocab import as_ids
from ..model.cells import map_state

EPS = 1e-8
# The paper's epsilon in the denominator, here a fraction of the mean RMS: a weight whose training
# gradients were tiny (a rare character's column of W_xh) would otherwise take huge steps.
RMS_FLOOR = 0.1


@dataclass
class Settings:
    lr: float = 3e-4  # the step size eta; both defaults tuned as data/results/python-code.md shows
    decay: float = 0.005  # lambda: the pull back toward the trained weights, per segment
    seq_len: int = 50  # characters per segment: one update each
    stat_segments: int = 200  # training segments whose gradients give MS


def gradient_stats(model, train_ids, settings, lut=None):
    """Each parameter's mean squared gradient of the per-character loss over the first
    stat_segments segments of the training text (one stream, state carried)."""
    model = copy.deepcopy(model).eval()  # its gradients are scratch; the caller's model keeps none
    squares = [torch.zeros_like(p) for p in model.parameters()]
    n, h = 0, None
    for x, y in _segments(train_ids, settings.seq_len, settings.stat_segments, lut):
        model.zero_grad(set_to_none=True)
        loss, h = _segment_loss(model, x, y, h)
        (loss / y.numel()).backward()
        for sq, p in zip(squares, model.parameters()):
            sq += p.grad.detach() ** 2
        n += 1
    return [sq / max(n, 1) for sq in squares]


def dynamic_score(model, ids, stats, settings, lut=None):
    """(total nats, characters scored) of ids (N,) under dynamic evaluation, on a copy of model."""
    total, count = 0.0, 0
    for nats, n in segment_losses(model, ids, stats, settings, lut):
        total, count = total + nats, count + n
    return total, count


def segment_losses(model, ids, stats, settings, lut=None):
    """Yields (nats, characters) of each segment of ids in turn, each scored before the weights
    learn from it; the weights are a copy of model's."""
    model = copy.deepcopy(model).eval()  # eval: no dropout; the copy leaves the caller's weights alone
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    rms = [s.sqrt() for s in stats]
    mean_rms = torch.cat([r.flatten() for r in rms]).mean().clamp_min(EPS)
    pull = [(settings.decay * r / mean_rms).clamp_(max=1.0) for r in rms]  # the paper caps it at 1
    rms = [r + RMS_FLOOR * mean_rms for r in rms]
    h = None
    for x, y in _segments(ids, settings.seq_len, None, lut):
        model.zero_grad(set_to_none=True)
        loss, h = _segment_loss(model, x, y, h)
        yield float(loss.detach()), y.numel()
        (loss / y.numel()).backward()
        with torch.no_grad():
            for p, r, k, p0 in zip(params, rms, pull, theta0):
                back = k * (p0 - p)  # toward theta_0 from where this segment found the weights
                p.addcdiv_(p.grad, r, value=-settings.lr).add_(back)


def _segments(ids, seq_len, limit, lut):
    """(x, y) of each segment in order, (1, <= seq_len) ids: every character after the first scored once."""
    n = len(ids) - 1
    for k, i in enumerate(range(0, n, seq_len)):
        if limit is not None and k == limit:
            return
        t = min(seq_len, n - i)
        yield as_ids(ids[i:i + t], lut)[None], as_ids(ids[i + 1:i + 1 + t], lut)[None]


def _segment_loss(model, x, y, h):
    """(summed loss in nats, float64, of one segment, the state to carry on, cut from the graph)."""
    device = next(model.parameters()).device
    logits, h_new = model(x.to(device), h)
    loss = F.cross_entropy(logits[0].double(), y[0].to(device), reduction="sum")
    return loss, map_state(torch.Tensor.detach, h_new)


def score(model, vocab, text, train_ids, settings, lut=None):
    """sample.score's report for text under dynamic evaluation; train_ids (the run's training
    split, with lut if its ids differ from the model's) give the gradient statistics."""
    def total_nats(ids):
        return dynamic_score(model, ids, gradient_stats(model, train_ids, settings, lut), settings)[0]

    return {**sample.score(model, vocab, text, total_nats=total_nats), "dynamic": True}
