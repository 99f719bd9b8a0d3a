"""The one training step: forward, loss, backward, clipping, the non-finite check, the optimizer
step and the state to carry on. The trainer, the CUDA graph (graphs.py) and the bench all run it.

It comes in two forms of the same maths:

- ``Step.__call__``, eager: one host sync per step, since whether to skip the update must be
  known before ``opt.step()``; a skipped step leaves the parameters untouched and carries no state;
- ``Step.sync_free``, for a captured graph: the non-finite check sets the optimizer's
  ``found_inf`` on the device, and the fused optimizer then leaves the parameters and its moments
  as they were; the carried state restarts from zero. No value is read back to the host.
"""
import contextlib
import math
from dataclasses import dataclass

import torch

from ..model.cells import cross_entropy, map_state

SMOOTHING = 0.999  # the tutorial's smooth_loss factor


def clip_norm(grad_clip):
    """train.grad_clip as clip_grad_norm_'s max_norm: 0 clips nothing."""
    return grad_clip if grad_clip > 0 else math.inf


def smoothed(smooth, loss):
    """The tutorial's smooth_loss after one more step's loss."""
    return smooth * SMOOTHING + (1 - SMOOTHING) * loss


@dataclass
class Outcome:
    """What one eager step leaves: its mean loss and clipped gradient norm (0-d tensors, not read
    back), the state to carry into the next window (None after a skipped step), and whether the
    update ran."""
    loss: torch.Tensor
    norm: torch.Tensor
    state: object
    finite: bool


class Step:
    """One training step of ``forward`` (the model, or its DDP wrapper) under ``opt``.

    params are the model's parameters, in the optimizer's order; grad_clip is train.grad_clip;
    amp an autocast context (or None)."""

    def __init__(self, forward, opt, params, grad_clip, amp=None):
        self.forward, self.opt, self.params = forward, opt, list(params)
        self.clip = clip_norm(grad_clip)
        self.amp = amp or contextlib.nullcontext()

    def loss_and_gradients(self, x, y, state):
        """(mean loss, clipped global gradient norm, final state), the gradients left in .grad."""
        with self.amp:
            logits, h_new = self.forward(x, state)
            loss = cross_entropy(logits, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, error_if_nonfinite=False)
        return loss.detach(), norm.detach(), h_new

    def __call__(self, x, y, state):
        """One eager update on the window (x, y) from state (None: the zero state) -> Outcome."""
        self.opt.zero_grad(set_to_none=True)
        loss, norm, h_new = self.loss_and_gradients(x, y, state)
        # The one host sync per step: whether to skip the update must be known before step().
        finite = bool(torch.isfinite(loss) & torch.isfinite(norm))
        if not finite:
            return Outcome(loss, norm, None, False)  # a NaN state would poison every later step
        self.opt.step()
        # Keep the values so the next window starts where this one ended, but cut the graph:
        # otherwise backward would run through every earlier window.
        return Outcome(loss, norm, map_state(torch.Tensor.detach, h_new), True)

    def sync_free(self, x, y, state, found_inf):
        """The same update with no host sync (the caller zeroes the gradients): found_inf, the tensor
        the fused optimizer reads, is set when the loss or the norm is not finite. Returns (loss,
        norm, the state to carry, finite as a 0-d bool tensor); the state is zero after a skipped step."""
        loss, norm, h_new = self.loss_and_gradients(x, y, state)
        finite = torch.isfinite(loss) & torch.isfinite(norm)
        found_inf.copy_(~finite)
        self.opt.step()  # fused: leaves everything as it was when found_inf is 1
        return loss, norm, map_state(lambda h: torch.where(finite, h.detach(), 0.0), h_new), finite
