"""A whole training step as one CUDA graph (``train.cuda_graphs``).

On a GPU the fused recurrence is launch-bound: each of its T steps is a few small kernels, each
launched from Python. Captured once and replayed, the whole step (step.py's ``Step.sync_free``:
forward, loss, BPTT, ``clip_grad_norm_``, the optimizer step; and the run's loss bookkeeping) is
one launch.

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
import torch

from ..model.cells import map_state
from .step import smoothed

GRAPH_OPTIMIZERS = ("adam", "adamw")  # what fused=True, capturable=True and found_inf allow
WARMUP_STEPS = 3  # PyTorch's recipe: a few iterations on a side stream before capture
ACCOUNTS = ("loss", "norm", "finite", "nonfinite")  # the sums collect() returns, in this order


def refusal(optimizer, device, world_size):
    """Why a run's step (train.optimizer, on device, in world_size processes) cannot be captured, in
    one line, or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, and this run is on {device}"
    if world_size > 1:
        return "DDP's gradient all-reduce runs outside a captured step"
    if optimizer not in GRAPH_OPTIMIZERS:
        return (f"train.optimizer={optimizer} cannot skip a non-finite step on the device; "
                f"capture needs one of {', '.join(GRAPH_OPTIMIZERS)}")
    return None


class WholeStepGraph:
    """The training step (a step.Step of the model itself, not a DDP wrapper, whose optimizer is
    fused and capturable) on static buffers, with no host sync: step() copies a window in and runs
    it (a graph replay on CUDA); collect() reads the sums back, once per log interval."""

    def __init__(self, model, train_step, batch_shape, smooth_loss, capture=True):
        self.train_step, self.opt, self.params, self.capture = train_step, train_step.opt, train_step.params, capture
        device = self.params[0].device
        self.x = torch.zeros(batch_shape, dtype=torch.long, device=device)
        self.y = torch.zeros_like(self.x)
        self.state = model.init_hidden(batch_shape[0])  # the carried state, (L, B, H) or (h, c)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self.opt.found_inf = self.found_inf  # the fused optimizer reads it at every step()
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
        loss, norm, state, finite = self.train_step.sync_free(self.x, self.y, self.state, self.found_inf)
        self._load_state(state)
        self._account(loss.double(), norm.double(), finite)

    def _account(self, loss, norm, finite):
        ok = finite.double()
        self.smooth.copy_(torch.where(finite, smoothed(self.smooth, loss), self.smooth))
        self.sums.add_(torch.stack([torch.where(finite, loss, 0.0), torch.where(finite, norm, 0.0), ok, 1 - ok]))
        self.consecutive.mul_(1 - ok).add_(1 - ok)  # +1 on a non-finite step, back to 0 on a finite one
        torch.maximum(self.longest, self.consecutive, out=self.longest)

    # ------------------------------------------------------------ capture

    def buffers(self):
        return [*self.params, *(self.state if isinstance(self.state, tuple) else (self.state,)), self.sums,
                self.smooth, self.consecutive, self.longest]

    @torch.no_grad()
    def snapshot(self):
        moments = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in self.opt.state.items()}
        return [b.detach().clone() for b in self.buffers()], moments

    @torch.no_grad()
    def restore(self, snapshot):
        """Put back what warm-up changed, in place (capture records these very tensors). An optimizer
        state that warm-up created is zeroed: a fresh Adam's moments and step count are zeros."""
        values, moments = snapshot
        for buf, value in zip(self.buffers(), values):
            buf.copy_(value)
        for p, s in self.opt.state.items():
            for k, v in s.items():
                if torch.is_tensor(v):
                    old = moments.get(id(p), {}).get(k)
                    v.zero_() if old is None else v.copy_(old)

    def _warm_up_and_capture(self):
        snapshot = self.snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.opt.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.restore(snapshot)
        # Gradients are born inside the graph's memory pool, and each replay's backward writes them.
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
