"""Training-throughput benchmark: every implementation on identical shapes, in one run.

Every row but the numpy reference's times the step training runs (training/step.py: forward,
loss, backward, clip_grad_norm_, the non-finite check, the optimizer step, the carried state),
with the optimizer and settings of a config's train section: by default the trainer's own
defaults, named in each row. Implementations are alternated round by round, so a noisy neighbour
slows all of them alike, and each row reports the median over rounds.

``--train-steps`` measures the same step eager and as one CUDA graph (graphs.py), against the
torch modules eager and graphed the same way.
"""
import contextlib
import gc
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from ..model import compiled, packed_gemm, reference
from ..training import graphs
from ..errors import UserError, one_line
from ..files import json_text, write_file
from ..model.cells import CELL_CLASSES, IMPLS, CharRNN, cross_entropy, map_state
from ..training.config import TrainConfig
from ..training.memory import retain_freed_memory
from ..training.optim import make_optimizer
from ..training.step import Step
from ..sampling.sample import sample_ids

SHAPES = {  # name: (V, H, B, T, L)
    "tutorial": (65, 100, 1, 25, 1),
    "cpu": (65, 512, 64, 128, 1),
    "gpu": (65, 1024, 256, 128, 1),
    "gpu-L3": (65, 1024, 256, 128, 3),
    "gpu-512": (65, 512, 64, 128, 1),  # where cuDNN's persistent fp16 kernels apply (B <= 128, H % 128 == 0)
    "smoke": (11, 32, 4, 16, 2),  # seconds on any CPU: for dry runs of the GPU script and tests
}

# How float32 matrix products run: fp32 (exact float32), tf32 (CUDA's TensorFloat-32 matmuls
# and cuDNN), bf16 and fp16 (autocast; the fused recurrence keeps fp32 inside, see fused.py).
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What a run measures when --shapes and --precisions are not given: (shapes, precisions).
DEFAULTS = {("cpu", False): (("tutorial", "cpu"), ("fp32",)),
            ("cuda", False): (("gpu", "gpu-L3"), ("fp32", "tf32", "bf16")),
            ("cpu", True): (("smoke",), ("fp32",)),
            ("cuda", True): (("gpu", "gpu-512"), ("tf32", "fp16"))}
# --train-steps with fp16: only the torch module runs it, for cuDNN's persistent kernels (fp16 only).
YARDSTICK_ONLY = ("fp16",)


def set_precision(precision):
    """Set the process-wide TF32 switches for `precision` (restored_backends puts them back);
    returns the autocast dtype or None."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return AUTOCAST.get(precision)


@contextlib.contextmanager
def restored_backends():
    """The process-wide settings the bench changes (TF32 switches, torch's thread count), put back
    as they were when the block ends."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads()
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, threads = saved
        torch.set_num_threads(threads)


@dataclass
class Row:
    shape: str
    impl: str
    chars_per_sec: float
    gflops: float
    pct_peak: float
    peak_mem_mb: float
    threads: int
    optimizer: str = ""  # the training step's optimizer and settings (step_settings)
    warmup_s: float = float("nan")  # the first two steps: for a torch.compile row, its compile time
    note: str = ""  # why a row has no numbers (e.g. a CUDA graph capture that failed)


def flops_per_char(V, H, L, gates=1):
    """Multiply-adds x2 of the matrix products, forward + backward (backward = 2x forward).
    A gated cell's G gates multiply its W_xh and W_hh rows; the gate maths is not counted."""
    fwd = gates * (2 * H * H * L + 2 * H * H * (L - 1)) + 2 * H * V  # W_hh per layer, W_xh above layer 0, W_hy
    return 3 * fwd


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulPeak:
    """One large square matmul: this device's achievable GFLOP/s for the dtype, measured
    in the same rounds as the implementations so that both see the same machine."""

    def __init__(self, device, dtype, n=None):
        self.n = n or (1024 if device.type == "cpu" else 8192)
        self.a = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.b = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.out = torch.empty_like(self.a)

    def __call__(self):
        torch.mm(self.a, self.b, out=self.out)

    def gflops(self, seconds_per_call):
        return 2 * self.n ** 3 / seconds_per_call / 1e9


TORCH_MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # each cell's yardstick
CELLS = tuple(TORCH_MODULES)  # the cells --cells may name


def yardstick_name(cell):
    return f"nn.{TORCH_MODULES[cell]} stack"


def is_torch_module(impl):
    """Whether a bench row's impl is one of torch's own modules (a yardstick_name), not a CharRNN."""
    return impl.startswith("nn.")


class NNStack(nn.Module):
    """The yardstick: nn.Embedding + nn.RNN(tanh) / nn.LSTM / nn.GRU + nn.Linear of identical size
    (cuDNN on GPU; on CPU torch's own kernels, oneDNN's where it has them)."""

    def __init__(self, V, H, L, cell="rnn"):
        super().__init__()
        self.emb = nn.Embedding(V, V)
        kind = getattr(nn, TORCH_MODULES[cell])
        self.rnn = kind(V, H, num_layers=L, batch_first=True, **({"nonlinearity": "tanh"} if cell == "rnn" else {}))
        self.head = nn.Linear(H, V)

    def forward(self, x, h0=None):
        out, h = self.rnn(self.emb(x), h0)
        return self.head(out), h

    def init_hidden(self, batch_size):
        p = self.head.weight
        zeros = torch.zeros(self.rnn.num_layers, batch_size, self.rnn.hidden_size, device=p.device, dtype=p.dtype)
        return (zeros, zeros.clone()) if isinstance(self.rnn, nn.LSTM) else zeros


def step_settings(train_cfg):
    """What a row's training step runs, in a few words: the optimizer, its rate, decay and clip."""
    return (f"{train_cfg.optimizer} lr {train_cfg.lr:g}"
            f"{f' wd {train_cfg.weight_decay:g}' if train_cfg.weight_decay else ''} clip {train_cfg.grad_clip:g}")


class BenchStep:
    """A row's training step: training.step.Step, the one train.py runs, under train_cfg's
    optimizer (optim.make_optimizer) and grad_clip, on a fixed random window with the state
    carried. graphed: the same step as one CUDA graph (graphs.WholeStepGraph; on a CPU its
    sync-free form, uncaptured)."""

    def __init__(self, model, V, B, T, device, train_cfg, amp_dtype=None, graphed=False, amp_cache=True):
        self.model = model.to(device)
        self.params = list(self.model.parameters())
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(V, (B, T), generator=g).to(device)
        self.y = torch.randint(V, (B, T), generator=g).to(device)
        # A graph cannot hold autocast's weight cache (make_graphed_callables refuses it too).
        amp = (torch.autocast(device.type, dtype=amp_dtype, cache_enabled=amp_cache and not graphed)
               if amp_dtype is not None else None)
        self.opt = make_optimizer(self.params, train_cfg, capturable=graphed)
        self.step = Step(self.model, self.opt, self.params, train_cfg.grad_clip, amp)
        self.h, self.graph = None, None
        if graphed:
            self.graph = graphs.WholeStepGraph(self.model, self.step, (B, T), 0.0, capture=device.type == "cuda")
            _sync(device)
            self.mem_base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0

    def __call__(self):
        if self.graph is not None:
            return self.graph.step(self.x, self.y, self.graph.state)
        self.h = self.step(self.x, self.y, self.h).state


class GraphedStep(BenchStep):
    """BenchStep with the model's forward and backward each captured once as a CUDA graph and
    replayed (torch.cuda.make_graphed_callables): the fused impl's T-step loop is hundreds of
    small kernels, each launched from Python; a replay launches them all at once. The shapes of
    a training step never change, and the carried state is a fixed-shape input, so the same
    graph serves every step. Clipping and the optimizer step stay outside the graph."""

    def __init__(self, model, V, B, T, device, train_cfg, amp_dtype=None):
        # autocast's weight cache must be off for a graph (make_graphed_callables refuses it)
        super().__init__(model, V, B, T, device, train_cfg, amp_dtype, amp_cache=False)
        self.h = self.model.init_hidden(B)
        # The graphs keep their buffers in a private pool from capture on: count it as this row's.
        torch.cuda.synchronize(device)
        self.mem_base = torch.cuda.memory_allocated(device)
        with self.step.amp:
            self.step.forward = torch.cuda.make_graphed_callables(self.model, (self.x, self.h))


GRAPHED = "CharRNN fused+graphs"
NUMPY = "numpy reference"
NUMPY_SETTINGS = "adagrad lr 0.1 (numpy)"  # the tutorial's own step, with its element-wise clip
NUMPY_BLAS_PARK_S = 0.25  # how long numpy's BLAS threads get to park; see run_shape


class NumpyStep:
    """The tutorial's loop: lossFun + Adagrad with element-wise clipping, in numpy."""

    def __init__(self, V, H, B, T, L):
        rng = np.random.default_rng(0)
        self.params = reference.init_params(V, H, L, rng=rng)
        self.mem = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.x = rng.integers(V, size=(B, T))
        self.y = rng.integers(V, size=(B, T))
        self.h = np.zeros((L, B, H))

    def __call__(self):
        _, grads, _, self.h, _ = reference.loss_and_grads(self.params, self.x, self.y, self.h)
        reference.adagrad_step(self.params, grads, self.mem, lr=0.1)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _cpu_peak_child(shape, dims, name, threads, queue, retain_memory, cell, train_cfg):
    if retain_memory:
        retain_freed_memory()  # as in the parent, whose timings these numbers sit beside
    torch.set_num_threads(threads)
    step = build_impls(shape, torch.device("cpu"), only=name, cell=cell, train_cfg=train_cfg, dims=dims,
                       compiled_rows=name.endswith(COMPILED))[name]
    gc.collect()
    base = _status_kb("VmRSS")
    for _ in range(2):
        step()
    queue.put((_status_kb("VmHWM") - base) / 1024)


def measure_peak_mem(shape, name, step, device, threads, retain_memory=False, cell="rnn", train_cfg=TrainConfig()):
    """Peak MB that training steps add on top of the model and its inputs.

    GPU: torch.cuda.max_memory_allocated (for a CUDA-graph row, counted from before capture,
    so that the graphs' private memory pool is included). CPU: the peak RSS of a fresh process that
    builds only this implementation (the high-water mark of a shared process would
    only ever show the largest implementation run so far).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = getattr(step, "mem_base", torch.cuda.memory_allocated(device))
        for _ in range(2):
            step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    import multiprocessing as mp
    import queue as queue_mod
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child,
                       args=(shape, SHAPES[shape], name, threads, results, retain_memory, cell, train_cfg))
    proc.start()
    try:
        while True:
            try:
                return results.get(timeout=0.5)
            except queue_mod.Empty:
                if not proc.is_alive():  # died (no /proc on this OS, say): report no number
                    return float("nan")
    finally:
        proc.join()


def time_steps(step, device, n):
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def _steps_for(shape, device):
    V, H, B, T, L = SHAPES[shape]
    if shape == "smoke":
        return 5
    return max(3, min(200, int(2e6 / (B * T * H) * (40 if device.type == "cuda" else 1)) + 2))


COMPILED = " (torch.compile)"  # the suffix of a compiled row's name


def build_impls(shape, device, dtype=torch.float32, amp_dtype=None, only=None, failures=None, cell="rnn",
                train_cfg=TrainConfig(), dims=None, compiled_rows=False):
    """name -> a callable doing one training step of `cell` (BenchStep under train_cfg) at shape (its
    dims: SHAPES[shape] unless given). The numpy reference (the tutorial's tanh cell) runs on CPU
    only, and not at the gpu shapes, where one step takes minutes. On CUDA, `CharRNN fused+graphs`
    replays the fused impl as CUDA graphs (for a state that is one tensor: not the LSTM's (h, c));
    if capturing fails, its error goes into `failures` (name -> message) rather than stopping the
    other rows. compiled_rows adds torch.compile of the readable loop impl and of the torch module,
    the first thing a PyTorch user tries: inductor compiles them at their first steps."""
    V, H, B, T, L = dims or SHAPES[shape]
    makers = {}
    if device.type == "cpu" and not shape.startswith("gpu") and cell == "rnn":
        makers[NUMPY] = lambda: NumpyStep(V, H, B, T, L)
    for impl in IMPLS:
        if impl == "fused_cpp" and not compiled.applies(device, dtype):
            continue  # the same code as the fused row
        makers[f"CharRNN {impl}"] = lambda impl=impl: BenchStep(
            CharRNN(V, H, L, impl=impl, cell=cell).build_kernels().to(dtype), V, B, T, device, train_cfg, amp_dtype)
    if device.type == "cuda" and len(CELL_CLASSES[cell].state_names) == 1:
        makers[GRAPHED] = lambda: GraphedStep(CharRNN(V, H, L, impl="fused", cell=cell).to(dtype), V, B, T,
                                              device, train_cfg, amp_dtype)
    makers[yardstick_name(cell)] = lambda: BenchStep(NNStack(V, H, L, cell).to(dtype), V, B, T, device, train_cfg,
                                                     amp_dtype)
    if compiled_rows:
        makers["CharRNN loop" + COMPILED] = lambda: BenchStep(
            torch.compile(CharRNN(V, H, L, impl="loop", cell=cell).to(dtype)), V, B, T, device, train_cfg, amp_dtype)
        makers[yardstick_name(cell) + COMPILED] = lambda: BenchStep(
            torch.compile(NNStack(V, H, L, cell).to(dtype)), V, B, T, device, train_cfg, amp_dtype)
    impls = {}
    for name, make in makers.items():
        if only is None or name == only:
            torch.manual_seed(0)
            try:
                impls[name] = make()
            except Exception as e:  # only the graphed row may fail alone; the others' errors propagate
                if failures is None or name != GRAPHED:
                    raise
                failures[name] = f"{type(e).__name__}: {one_line(e)[:200]}"
    return impls


def step_impl_names(device, cell, yardstick_only=False):
    """The rows of --train-steps: CharRNN fused and the torch module, each eager and graphed."""
    mode = "graphed" if device.type == "cuda" else "sync-free"  # a CPU has no graphs to capture
    names = [] if yardstick_only else ["CharRNN eager", f"CharRNN {mode}"]
    return names + [f"{yardstick_name(cell)} eager", f"{yardstick_name(cell)} {mode}"][:1 if yardstick_only else 2]


def build_step_impls(shape, device, amp_dtype=None, cell="rnn", yardstick_only=False, train_cfg=TrainConfig()):
    """name -> a whole training step (BenchStep, eager or graphed) for --train-steps. A graph needs
    an optimizer that skips a non-finite step on the device (graphs.GRAPH_OPTIMIZERS)."""
    if train_cfg.optimizer not in graphs.GRAPH_OPTIMIZERS:
        raise UserError(f"--train-steps captures the step, which train.optimizer={train_cfg.optimizer} cannot be: "
                        f"use a config whose train.optimizer is one of {', '.join(graphs.GRAPH_OPTIMIZERS)}")
    V, H, B, T, L = SHAPES[shape]
    impls = {}
    for name in step_impl_names(device, cell, yardstick_only):
        torch.manual_seed(0)
        model = CharRNN(V, H, L, impl="fused", cell=cell) if name.startswith("CharRNN") else NNStack(V, H, L, cell)
        impls[name] = BenchStep(model, V, B, T, device, train_cfg, amp_dtype, graphed=not name.endswith("eager"))
    return impls


def warm_up(impls, device, failures):
    """name -> each impl's warm-up time (allocator, caches, compiles). A torch module that this
    machine's kernels cannot run at this precision (oneDNN has no bf16 LSTM without AVX-512's bf16
    instructions, say) leaves impls for a failed row in failures; our own rows' errors propagate."""
    warmup = {}
    for name, step in list(impls.items()):
        try:
            warmup[name] = time_steps(step, device, 2) * 2
        except RuntimeError as e:
            if not is_torch_module(name):
                raise
            failures[name] = f"{type(e).__name__}: {one_line(e)[:200]}"
            del impls[name]
    return warmup


def run_shape(shape, device, repeats=5, dtype=torch.float32, amp_dtype=None, threads=None, retain_memory=False,
              cell="rnn", memory=True, impls=None, train_cfg=TrainConfig(), compiled_rows=False):
    """Rows for every implementation of `cell` at one shape (or for the given impls: name -> step),
    each training step under train_cfg, plus the matmul peak measured alongside."""
    V, H, B, T, L = SHAPES[shape]
    failures, given = {}, impls is not None
    if not given:
        impls = build_impls(shape, device, dtype, amp_dtype, failures=failures, cell=cell, train_cfg=train_cfg,
                            compiled_rows=compiled_rows)
    peak = MatmulPeak(device, amp_dtype or dtype, n=256 if shape == "smoke" else None)
    n = _steps_for(shape, device)
    warmup = warm_up(impls, device, failures)
    time_steps(peak, device, 2)
    times = {name: [] for name in impls}
    peak_times = []
    for _ in range(repeats):
        for name, step in impls.items():  # alternate: noise hits every impl alike
            times[name].append(time_steps(step, device, n))
            if isinstance(step, NumpyStep):
                # numpy's own BLAS threads keep spinning for a while after its last call and
                # take the cores from whatever runs next (performance-cpu.md). Let them park first.
                time.sleep(NUMPY_BLAS_PARK_S)
        peak_times.append(time_steps(peak, device, 10 if device.type == "cpu" else 20))
    peak_gflops = peak.gflops(statistics.median(peak_times))
    threads = threads or torch.get_num_threads()
    # A fresh process per CPU row rebuilds only build_impls' rows (compiling again, for a compiled row);
    # --train-steps rows are measured on CUDA only.
    memory = memory and (device.type == "cuda" or not given)
    mems = {name: measure_peak_mem(shape, name, step, device, threads, retain_memory, cell, train_cfg) if memory
            else float("nan") for name, step in impls.items()}
    fpc = flops_per_char(V, H, L, CELL_CLASSES[cell].gates)
    rows = []
    for name in impls:
        cps = B * T / statistics.median(times[name])
        gf = cps * fpc / 1e9
        settings = NUMPY_SETTINGS if name == NUMPY else step_settings(train_cfg)
        rows.append(Row(shape, name, cps, gf, 100 * gf / peak_gflops, mems[name], threads, settings, warmup[name]))
    nan = float("nan")
    rows += [Row(shape, name, nan, nan, nan, nan, threads, note=f"failed: {msg}") for name, msg in failures.items()]
    return rows, peak_gflops


# Characters per stream in one timed sampling run: one stream needs thousands, or the block of
# uniforms drawn up front (sample.DRAW_BLOCK) and this VM's noise decide the figure, not the steps.
SAMPLING_LENGTHS = {1: 4000, 64: 200}


def sampling_impls(device):
    """The impls whose sampling the bench times: fused (the Python loop over a Stepper), and on CPU
    fused_cpp where its module builds (compiled.py), which samples through the compiled loop."""
    return ["fused"] + (["fused_cpp"] if compiled.applies(device, torch.float32) and compiled.module() else [])


def sampling_throughput(shape, device, impl="fused", lengths=SAMPLING_LENGTHS, runs=3):
    """{streams: chars/s} of sample_ids at this shape, the median of runs timed runs each."""
    V, H, B, T, L = SHAPES[shape]
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl=impl).build_kernels().to(device)
    out = {}
    for n, length in lengths.items():
        prime = torch.zeros(n, 1, dtype=torch.long)
        g = torch.Generator().manual_seed(0)
        draw = lambda k: torch.rand(k, generator=g, dtype=torch.float64)
        sample_ids(model, prime, 10, draw=draw)
        times = []
        for _ in range(runs):
            _sync(device)
            t0 = time.perf_counter()
            sample_ids(model, prime, length, draw=draw)
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[n] = n * length / statistics.median(times)
    return out


def shown(value, spec):
    """A number in a column's format, or "-" where there is none (NaN or None: not measured under
    --no-memory, no torch module row to compare with), padded to the column's width."""
    if value is None or math.isnan(value):
        return f"{'-':>{int(spec.split('.')[0].replace(',', '') or 0)}}"
    return f"{value:{spec}}"


def format_table(rows):
    """One block per shape; "vs nn" is the ratio to that shape's torch-module stack (nn.RNN,
    nn.LSTM or nn.GRU)."""
    lines = []
    head = (f"{'shape':<14} {'impl':<26} {'chars/s':>10} {'vs nn.RNN/LSTM/GRU':>18} {'vs numpy':>9} {'GFLOP/s':>8} "
            f"{'% peak':>7} {'peak MB':>8} {'thr':>4}  step")
    lines.append(head)
    lines.append("-" * len(head))
    for shape in dict.fromkeys(r.shape for r in rows):
        group = [r for r in rows if r.shape == shape]
        base = next((r.chars_per_sec for r in group if is_torch_module(r.impl)), float("nan"))
        npy = next((r.chars_per_sec for r in group if r.impl == "numpy reference"), float("nan"))
        for r in group:
            if r.note:
                lines.append(f"{r.shape:<14} {r.impl:<26} {r.note}")
                continue
            lines.append(f"{r.shape:<14} {r.impl:<26} {r.chars_per_sec:10,.0f} {shown(r.chars_per_sec / base, '18.2f')} "
                         f"{shown(r.chars_per_sec / npy, '9.2f')} {r.gflops:8.1f} {r.pct_peak:6.1f}% "
                         f"{shown(r.peak_mem_mb, '8.1f')} {r.threads:4d}  {r.optimizer}"
                         f"{f'; compiled in {r.warmup_s:.0f} s' if r.impl.endswith(COMPILED) else ''}")
    return "\n".join(lines)


def main(args, device, train_cfg=TrainConfig()):
    """The benchmark command (``charrnn bench``): args from ``cli.bench_parser``; every row's training
    step runs train_cfg's optimizer and settings. Every backend setting it changes is put back."""
    with restored_backends():
        return _bench(args, device, train_cfg)


def _bench(args, device, train_cfg):
    shapes, precisions = DEFAULTS[(device.type, args.train_steps)]
    shapes, precisions = args.shapes or list(shapes), args.precisions or list(precisions)
    if device.type == "cpu" and "fp16" in precisions:
        raise UserError("--precisions fp16 runs on CUDA only (a CPU has no fp16 kernels for these cells)")
    retain = args.malloc == "retain" and retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}); torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"freed memory {'retained' if retain else 'returned to the OS (glibc default)'}"
          f"{'; whole training steps' if args.train_steps else ''}; step: {step_settings(train_cfg)}")
    extra = {"device": str(device), "device_name": name, "torch": torch.__version__,
             "malloc": "retain" if retain else "default", "train_steps": args.train_steps, "peaks": {}}
    rows = measure(args, device, shapes, precisions, retain, extra["peaks"], train_cfg)
    print()
    print(format_table(rows))
    print()
    sampling = {} if args.train_steps else measure_sampling(args, device, shapes, precisions)
    if args.json:
        write_file(args.json, json_text({**extra, "rows": [asdict(r) for r in rows],
                                         "sampling": {s: {impl: {str(k): v for k, v in rates.items()}
                                                          for impl, rates in d.items()}
                                                      for s, d in sampling.items()}}, indent=2).encode())
    return 0


def _threads_for(args, shape, device, default_threads):
    # The tutorial shape: thread hand-offs cost more than they save.
    return args.small_threads if shape == "tutorial" and device.type == "cpu" else default_threads


def measure(args, device, shapes, precisions, retain, peaks, train_cfg):
    """Every row: for each precision, cell and shape, its implementations side by side."""
    rows, default_threads = [], torch.get_num_threads()
    for prec in precisions:
        amp = set_precision(prec)
        suffix = "" if precisions == ["fp32"] and device.type == "cpu" else f"-{prec}"
        for cell in args.cells:
            for s in shapes:
                label = s + ("" if cell == "rnn" else f"-{cell}") + suffix
                threads = _threads_for(args, s, device, default_threads)
                torch.set_num_threads(threads)
                impls = (build_step_impls(s, device, amp, cell, prec in YARDSTICK_ONLY, train_cfg)
                         if args.train_steps else None)
                shape_rows, peak = run_shape(s, device, args.repeats, amp_dtype=amp, threads=threads,
                                             retain_memory=retain, cell=cell, memory=not args.no_memory, impls=impls,
                                             train_cfg=train_cfg, compiled_rows=args.compile)
                torch.set_num_threads(default_threads)
                for r in shape_rows:
                    r.shape = label
                rows += shape_rows
                peaks[label] = peak
                print(f"{label}: measured {prec if amp else 'fp32'} matmul peak {peak:.1f} GFLOP/s"
                      f"{' (TF32 on)' if device.type == 'cuda' and prec != 'fp32' else ''} with {threads} thread(s)"
                      f"{step_gemm_note(s, cell, device, amp)}")
    return rows


def step_gemm_note(shape, cell, device, amp_dtype):
    """Which kernel fused's recurrence multiplies by W_hh with at this shape on a CPU (packed_gemm.py):
    it differs between machines and torch builds, so a table should say."""
    if device.type != "cpu" or amp_dtype is not None:
        return ""
    V, H, B, T, L = SHAPES[shape]
    kernel = packed_gemm.step_kernel((CELL_CLASSES[cell].gates * H, H), B, T, device, torch.float32)
    return f"; fused's step GEMM: {kernel}"


def measure_sampling(args, device, shapes, precisions):
    sampling, default_threads = {}, torch.get_num_threads()
    set_precision("tf32" if "tf32" in precisions else precisions[0])
    for s in shapes:
        torch.set_num_threads(_threads_for(args, s, device, default_threads))
        sampling[s] = {impl: sampling_throughput(s, device, impl) for impl in sampling_impls(device)}
        torch.set_num_threads(default_threads)
        for impl, rates in sampling[s].items():
            print(f"sampling ({s}, CharRNN {impl}{', compiled loop' if impl == 'fused_cpp' else ''}): "
                  f"{rates[1]:,.0f} chars/s one stream, {rates[64]:,.0f} chars/s batch of 64")
    return sampling
