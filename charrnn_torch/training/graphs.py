"""A whole training step as one CUDA graph (``train.cuda_graphs``).

On a GPU the fused recurrence is launch-bound: each of its T steps is a few small kernels, each
launched from Python. Captured once and replayed, the whole step (forward, loss, BPTT,
``clip_grad_norm_``, the optimizer step, and the run's loss bookkeeping) is one launch.

This follows PyTorch's "whole-network capture" recipe:

- everything the step reads or writes lives in static buffers: the window (x, y), the carried
  state, the loss, the gradient norm, and the sums the trainer logs;
- the optimizer is Adam or AdamW with ``fused=True, capturable=True`` and the learning rate a
  device tensor, which the scheduler fills in place before each replay (a Python float would be
  baked into the graph);
- no host sync inside the step: a non-finite loss or gradient norm sets the optimizer's
  ``found_inf``, and the fused kernel then leaves the parameters and its moments untouched, on the
  device, as the eager loop's ``if finite: opt.step()`` does; the carried state restarts from zero;
- warm-up on a side stream, then the parameters, the optimizer state and every buffer are put back
  as they were (so warm-up costs no training step), ``zero_grad(set_to_none=True)``, and capture.

``capture=False`` runs the same sync-free step eagerly: on a CPU, where there are no graphs, this
is how the tests prove the step's maths against the eager loop's.
"""
import math

import torch

from ..model.cells import cross_entropy, map_state

GRAPH_OPTIMIZERS = ("adam", "adamw")  # what fused=True, capturable=True and found_inf allow
WARMUP_STEPS = 3  # PyTorch's recipe: a few iterations on a side stream before capture
ACCOUNTS = ("loss", "norm", "finite", "nonfinite")  # the sums collect() returns, in this order


def refusal(cfg, device, world_size):
    """Why this run's step cannot be captured, in one line, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, and this run is on {device}"
    if world_size > 1:
        return "DDP's gradient all-reduce runs outside a captured step"
    if cfg.train.optimizer not in GRAPH_OPTIMIZERS:
        return (f"train.optimizer={cfg.train.optimizer} cannot skip a non-finite step on the device; "
                f"capture needs one of {', '.join(GRAPH_OPTIMIZERS)}")
    return None


class WholeStepGraph:
    """The training step on static buffers, with no host sync: step() copies a window in and runs
    it (a graph replay on CUDA); collect() reads the sums back, once per log interval."""

    def __init__(self, model, opt, params, grad_clip, batch_shape, smoothing, smooth_loss, amp, capture=True):
        self.model, self.opt, self.params, self.amp, self.capture = model, opt, params, amp, capture
        self.clip = grad_clip if grad_clip > 0 else math.inf
        self.smoothing = smoothing
        device = params[0].device
        self.x = torch.zeros(batch_shape, dtype=torch.long, device=device)
        self.y = torch.zeros_like(self.x)
        self.state = model.init_hidden(batch_shape[0])  # the carried state, (L, B, H) or (h, c)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        opt.found_inf = self.found_inf  # the fused optimizer reads it at every step()
        f64 = dict(dtype=torch.float64, device=device)
        self.sums = torch.zeros(len(ACCOUNTS), **f64)  # since the last collect()
        self.smooth = torch.tensor(float(smooth_loss), **f64)  # the tutorial's EMA of the loss
        self.consecutive = torch.zeros((), **f64)  # non-finite steps in a row, now
        self.longest = torch.zeros((), **f64)  # the longest such run since the last collect()
        self.graph = None

    def step(self, x, y, hidden):
        """One training step on the window (x, y), from hidden: the carried state, or None for the zero
        state. Afterwards self.state holds the state to carry on."""
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        if hidden is None:
            map_state(torch.Tensor.zero_, self.state)
        elif hidden is not self.state:
            self._load_state(hidden)
        if not self.capture:
            self.opt.zero_grad(set_to_none=True)
            return self._step()
        if self.graph is None:
            self._warm_up_and_capture()
        self.graph.replay()

    def collect(self):
        """The sums since the last collect (ACCOUNTS), the longest run of non-finite steps in them, and
        the smoothed loss, as Python numbers: the host sync, once per log interval."""
        sums = dict(zip(ACCOUNTS, self.sums.tolist()))
        longest, smooth = float(self.longest), float(self.smooth)
        self.sums.zero_()
        self.longest.copy_(self.consecutive)
        return sums, longest, smooth

    # ------------------------------------------------------------ what the graph holds

    def _load_state(self, hidden):
        pairs = zip(self.state, hidden) if isinstance(self.state, tuple) else [(self.state, hidden)]
        for buf, h in pairs:
            buf.copy_(h)

    def _step(self):
        with self.amp:
            logits, h_new = self.model(self.x, self.state)
            loss = cross_entropy(logits, self.y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, error_if_nonfinite=False)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        self.found_inf.copy_(~finite)
        self.opt.step()  # fused: leaves everything as it was when found_inf is 1
        self._load_state(map_state(lambda h: torch.where(finite, h.detach(), 0.0), h_new))
        self._account(loss.detach().double(), norm.detach().double(), finite)

    def _account(self, loss, norm, finite):
        ok = finite.double()
        keep = self.smooth * self.smoothing + (1 - self.smoothing) * loss
        self.smooth.copy_(torch.where(finite, keep, self.smooth))
        self.sums.add_(torch.stack([torch.where(finite, loss, 0.0), torch.where(finite, norm, 0.0), ok, 1 - ok]))
        self.consecutive.mul_(1 - ok).add_(1 - ok)  # +1 on a non-finite step, back to 0 on a finite one
        torch.maximum(self.longest, self.consecutive, out=self.longest)

    # ------------------------------------------------------------ capture

    def _buffers(self):
        return [*self.params, *(self.state if isinstance(self.state, tuple) else (self.state,)), self.sums,
                self.smooth, self.consecutive, self.longest]

    @torch.no_grad()
    def _snapshot(self):
        moments = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in self.opt.state.items()}
        return [b.detach().clone() for b in self._buffers()], moments

    @torch.no_grad()
    def _restore(self, snapshot):
        """Put back what warm-up changed, in place (capture records these very tensors). An optimizer
        state that warm-up created is zeroed: a fresh Adam's moments and step count are zeros."""
        values, moments = snapshot
        for buf, value in zip(self._buffers(), values):
            buf.copy_(value)
        for p, s in self.opt.state.items():
            for k, v in s.items():
                if torch.is_tensor(v):
                    old = moments.get(id(p), {}).get(k)
                    v.zero_() if old is None else v.copy_(old)

    def _warm_up_and_capture(self):
        snapshot = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.opt.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self._restore(snapshot)
        # Gradients are born inside the graph's memory pool, and each replay's backward writes them.
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
