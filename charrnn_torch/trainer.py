"""The training loop: stateful truncated BPTT, evaluation, checkpoints, resume.

``train(cfg, ...)`` is one run. It builds a ``Trainer`` from small setup steps (device, data,
run directory, model, optimizer) and calls ``Trainer.run``, whose loop reads top to bottom:
fetch a window, step, account, log, sample, evaluate, stop. The run's changing state lives in
a ``RunState``; what the run shows goes through a logger (``logger.py``); every collective is
in ``distributed.py``. The CLI (``cli.py``) parses arguments and calls ``train``; nothing here
reads sys.argv or the environment.
"""
import contextlib
import dataclasses
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import cache as cache_mod, checkpoint, config as config_mod, data as data_mod, distributed as D
from .distributed import DistInfo
from .errors import RunFailed, UserError
from .logger import NullLogger, RunLogger
from .model import GATES, CharRNN, cross_entropy, map_state
from .sample import default_prime, generate
from .visualize import char_label, heatmap_image

SMOOTHING = 0.999  # the tutorial's smooth_loss factor


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, signum, step, out_dir):
        super().__init__(f"interrupted at step {step}")
        self.signum, self.step, self.out_dir = signum, step, out_dir

    @property
    def exit_code(self):
        return 128 + self.signum


class TrainingDiverged(RunFailed):
    """Too many consecutive non-finite steps."""


# ---------------------------------------------------------------- setup: device, optimizer, schedule

def resolve_device(name, dist_info=DistInfo()):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but CUDA is not available on this machine; use device=cpu or auto")
        index = int(name[5:]) if ":" in name else dist_info.local_rank
        if index >= torch.cuda.device_count():
            raise UserError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    return torch.device("cpu")


def configure_backends(device, t):
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    if t.threads:
        torch.set_num_threads(t.threads)


# Optimizers whose fused kernel torch has for CPU only. Asked for on CUDA, they fail at the
# first step(), not when built, so the fallback below would never see the error.
CPU_ONLY_FUSED = (torch.optim.Adagrad,)


def make_optimizer(params, t):
    cls = getattr(torch.optim, config_mod.OPTIMIZERS[t.optimizer])
    return fast_optimizer(cls, params, lr=t.lr, weight_decay=t.weight_decay,
                          **({"momentum": 0.9} if t.optimizer == "sgd" else {}))


def fast_optimizer(cls, params, **kw):
    """The fused (one kernel for all parameters) variant where this torch and device have
    one: at char-RNN sizes the per-parameter loop of the default costs more than the maths."""
    params = list(params)
    if not (issubclass(cls, CPU_ONLY_FUSED) and any(p.is_cuda for p in params)):
        try:
            return cls(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(params, **kw)


def lr_factor(step, t, train_seconds=0.0):
    """The multiplier on train.lr before optimizer step `step` (0-based).

    With a wall-clock budget (train.max_minutes) the cosine's progress is the larger of the
    fractions of steps and of the budget spent, so it reaches its floor at whichever ends the run.
    """
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
        if t.max_minutes:
            progress = max(progress, train_seconds / (60 * t.max_minutes))
        progress = min(1.0, progress)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if t.lr_schedule == "step":
        return t.lr_gamma ** ((step - t.warmup_steps) // t.lr_step_size)
    return 1.0


# ---------------------------------------------------------------- setup: the run directory

def _holds_run(path):
    markers = ("config.yaml", "ckpt.pt", "best.pt")
    return path.is_dir() and (any((path / n).exists() for n in markers) or any(path.glob("events.out.tfevents.*")))


def choose_out_dir(out_dir, explicit, force):
    """A fresh directory for a new run; never an earlier run's.

    Left at the config's value, an occupied out_dir gives way to a numbered
    sibling (runs/x-2, runs/x-3, ...). Named explicitly, it is refused unless --force.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"out_dir {path} is a file, not a directory")
    if _holds_run(path):
        if force:
            for f in list(path.glob("events.out.tfevents.*")) + [path / n for n in ("ckpt.pt", "best.pt")]:
                if f.exists():
                    f.unlink()
        elif explicit:
            raise UserError(f"out_dir {path} already holds a run; continue it with --resume {path}, "
                            f"or start over in it with --force")
        else:
            n = 2
            while _holds_run(path.with_name(f"{path.name}-{n}")) or path.with_name(f"{path.name}-{n}").is_file():
                n += 1
            path = path.with_name(f"{path.name}-{n}")
    check_writable(path)
    return path


def check_writable(path):
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir {path} is not writable ({e.strerror})") from None


def prepare_out_dir(cfg, explicit, force, resume_dir, dist_info):
    """Rank 0 picks (and checks) the directory; every rank gets its choice."""
    if dist_info.is_main:
        out_dir = Path(resume_dir) if resume_dir is not None else choose_out_dir(cfg.out_dir, explicit, force)
        check_writable(out_dir)
        for stale in out_dir.glob(".*.tmp"):
            stale.unlink()  # left by a process killed mid-write; the real file is intact
    else:
        out_dir = Path(resume_dir or cfg.out_dir)
    return D.broadcast_path(out_dir, dist_info)


# ---------------------------------------------------------------- setup: randomness and signals

def rng_state(device):
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "python": random.getstate(),
    }


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT exits at once."""
    flag = {"signum": None}

    def handler(signum, frame):
        if flag["signum"] is not None and signum == signal.SIGINT:
            os._exit(130)  # the user insists: leave now, touch no file
        flag["signum"] = signum

    # Signal handlers can only be installed from the main thread (not, say, under a test runner's worker).
    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- setup: data and model

class Corpus:
    """The run's text as ids: a memory map of the encoded cache (cache.py), with the splits as
    views of it, never copies. Rank 0 builds the cache if needed while the other ranks wait; then
    every rank maps the same file, so they share one copy of it in the page cache.

    base_vocab (fine-tuning, and resuming a fine-tuned run): the characters of the checkpoint the
    run starts from. The run's vocabulary is then those, in their order, followed by the corpus's
    characters they lack, and lut maps the cache's ids to the run's.
    """

    def __init__(self, cfg, dist_info=DistInfo(), progress=True, base_vocab=None, log=print):
        source = data_mod.ensure_corpus(cfg.data.path, progress=progress and dist_info.is_main)
        if dist_info.world_size == 1:
            # A new cache stays under a temporary name until the run has passed its checks (keep()),
            # so that a run refused for bad input leaves nothing behind.
            path, header, self.pending = cache_mod.ensure(source, cfg.data.vocab, progress, log, install=False)
        else:
            # Each node's first rank builds (and installs) it while the others wait, then all map it.
            if dist_info.local_rank == 0:
                cache_mod.ensure(source, cfg.data.vocab, progress and dist_info.is_main, log)
            D.barrier(dist_info)
            path, header, self.pending = cache_mod.ensure(source, cfg.data.vocab, False, lambda *a: None)
        ids = torch.from_numpy(cache_mod.open_ids(path, header))
        corpus_vocab = data_mod.vocab_of(cfg.data.vocab, header["vocab"])
        counts = header["counts"]
        self.vocab, self.lut = corpus_vocab, None
        if base_vocab is not None and cfg.data.vocab == "chars":
            extra = [c for c in corpus_vocab.chars if c not in set(base_vocab)]
            self.vocab = data_mod.Vocab(list(base_vocab) + extra)
            order = [self.vocab.stoi[c] for c in corpus_vocab.chars]
            if order != list(range(len(order))):
                self.lut = torch.tensor(order, dtype=torch.long)
            counts = [0] * len(self.vocab)
            for c, n in zip(corpus_vocab.chars, header["counts"]):
                counts[self.vocab.stoi[c]] = n
        self.char_counts = counts
        self.train_ids, self.val_ids = data_mod.split(ids, cfg.data.val_fraction)

    def keep(self):
        """Install a cache built by this run in its place (the run passed its checks)."""
        if self.pending:
            cache_mod.install(*self.pending)
            self.pending = None

    def discard(self):
        if self.pending:
            cache_mod.discard(self.pending[0])
            self.pending = None


def make_batcher(train_ids, t, dist_info, lut=None):
    if t.batch_size % dist_info.world_size:
        raise UserError(f"train.batch_size={t.batch_size} must be divisible by the number of processes "
                        f"({dist_info.world_size})")
    if t.stateful:
        return data_mod.StreamBatcher(train_ids, t.batch_size, t.seq_len, dist_info.rank, dist_info.world_size,
                                      lut)
    return data_mod.RandomWindowBatcher(train_ids, t.batch_size, t.seq_len, t.seed, dist_info.rank,
                                        dist_info.world_size, lut)


def eval_stream_count(n_val, batch_size, seq_len, world_size):
    """As many validation streams as the batch, fewer when the split is short; a multiple of world_size."""
    streams = min(batch_size, max(1, n_val // (seq_len + 1)))
    streams = max(world_size, streams // world_size * world_size)
    if n_val // streams < 2:
        raise UserError(f"validation split is too short: {n_val} characters "
                        f"(data.val_fraction) for {streams} stream(s); use a longer corpus or a larger "
                        f"data.val_fraction")
    return streams


def check_resume(ckpt, cfg, vocab):
    """What may change on resume: config.check_resume's rule, and the same vocabulary."""
    config_mod.check_resume(ckpt["config"], cfg)
    if ckpt["vocab"] != vocab.chars:
        raise UserError(f"cannot resume: the vocabulary of {cfg.data.path} ({len(vocab)} characters) differs "
                        f"from the checkpoint's ({len(ckpt['vocab'])} characters)")


def load_init(cfg):
    """The checkpoint a fine-tuning run starts from, checked against the config: the same
    architecture (cell, layers, hidden size) and the same kind of vocabulary."""
    path = checkpoint.resolve(cfg.train.init_from)
    ckpt = checkpoint.load(path)
    args, m = ckpt.get("model_args", {}), cfg.model
    theirs = (args.get("cell", "rnn"), args.get("num_layers"), args.get("hidden_size"))
    if theirs != (m.cell, m.num_layers, m.hidden_size):
        raise UserError(f"--init-from {path}: its model is {theirs[0]} {theirs[1]}x{theirs[2]}, the config asks for "
                        f"{m.cell} {m.num_layers}x{m.hidden_size}; fine-tuning keeps the architecture")
    if ckpt.get("vocab_mode", "chars") != cfg.data.vocab:
        raise UserError(f"--init-from {path}: it models data.vocab={ckpt.get('vocab_mode', 'chars')}, the config "
                        f"asks for {cfg.data.vocab}")
    return ckpt


@torch.no_grad()
def transplant(model, ckpt, vocab):
    """Load a checkpoint's weights into a model whose vocabulary extends the checkpoint's (its
    characters first, in their order, then the new ones): every old character keeps its trained
    column of layer 0's W_xh, row of W_hy and entry of b_y; new characters keep their fresh ones."""
    old = torch.arange(len(ckpt["vocab"]))  # the old characters' ids, the same in the new vocabulary
    assert list(vocab.chars[:len(old)]) == list(ckpt["vocab"])
    own = model.state_dict()
    for name, w in ckpt["model"].items():
        if name == "cells.0.W_xh":
            own[name][:, old] = w.to(own[name].dtype)  # (G·H, V): a column per character
        elif name in ("W_hy", "b_y"):
            own[name][old] = w.to(own[name].dtype)  # (V, H) and (V,): a row per character
        else:
            own[name].copy_(w)


def training_bytes(cfg, vocab_size, world_size=1):
    """About how much memory training needs per process: weights, gradients and two optimizer
    moments (Adam's; an upper bound for the others), and the (T·B, ·) buffers of each layer's
    G gates and of the logits with their gradients."""
    m, t = cfg.model, cfg.train
    H, L, V, G = m.hidden_size, m.num_layers, vocab_size, GATES[m.cell]
    params = G * (V * H + (L - 1) * H * H + L * (H * H + H)) + V * H + V
    rows = t.seq_len * (t.batch_size // world_size)
    itemsize = torch.finfo(getattr(torch, t.dtype)).bits // 8
    return (4 * params + rows * (3 * G * H * L + 3 * V)) * itemsize


def available_bytes(device):
    """Free memory on the device, or None where it cannot be read (then nothing is refused)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_fits_in_memory(cfg, vocab_size, device, world_size=1):
    """Refuse, before allocating anything, a run that cannot fit: a clear line, not an allocator crash."""
    need, free = training_bytes(cfg, vocab_size, world_size), available_bytes(device)
    if free is not None and need > free:
        m, t = cfg.model, cfg.train
        raise UserError(f"this run needs about {need / 2**30:.1f} GiB (model.hidden_size={m.hidden_size}, "
                        f"model.num_layers={m.num_layers}, train.batch_size={t.batch_size}, "
                        f"train.seq_len={t.seq_len}, {vocab_size} characters), more than the "
                        f"{free / 2**30:.1f} GiB free on {device}; make one of them smaller")


def build_model(model_cfg, vocab_size, dtype=torch.float32):
    return CharRNN(vocab_size, model_cfg.hidden_size, model_cfg.num_layers, model_cfg.dropout,
                   impl=model_cfg.impl, cell=model_cfg.cell).to(dtype)


def wrap_ddp(model, device, dist_info):
    if dist_info.world_size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


HEATMAP_CHARS = 100  # the validation snippet whose hidden states TensorBoard shows at each evaluation


# ---------------------------------------------------------------- the run's state

@dataclass
class RunState:
    """Everything about a run that changes as it trains, apart from the model, optimizer and data
    position (which have their own state_dicts)."""
    step: int = 0
    best_val: float = math.inf
    last_val: float = None
    smooth_loss: float = 0.0  # the tutorial's EMA; a 0-d tensor between log intervals (no GPU sync)
    log_acc: dict = field(default_factory=lambda: {"loss": 0.0, "norm": 0.0, "n": 0})  # since the last log
    nonfinite_total: int = 0
    train_seconds: float = 0.0  # training time so far, across resumes (evaluation and sampling excluded)
    hidden: torch.Tensor = None  # this rank's carried state (L, B/N, H), or (h, c) of them, on the device
    # Not saved: they describe this process's part of the run.
    consecutive_bad: int = 0
    val: float = None  # the latest validation loss computed in this process
    last_eval_step: int = None
    train_log: list = field(default_factory=list)
    val_log: list = field(default_factory=list)

    SAVED = ("step", "best_val", "last_val", "smooth_loss", "log_acc", "nonfinite_total", "train_seconds")

    def to_checkpoint(self):
        out = {k: getattr(self, k) for k in self.SAVED}
        out["log_acc"] = dict(self.log_acc)
        return out

    @classmethod
    def from_checkpoint(cls, ckpt):
        values = {k: ckpt[k] for k in cls.SAVED if k in ckpt}  # older checkpoints lack train_seconds
        values["log_acc"] = dict(values["log_acc"])
        return cls(**values)


@dataclass
class Throughput:
    """Training characters per second since the last reset, with pauses (evaluation, sampling) left out."""
    chars: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def rate(self):
        return self.chars / max(time.perf_counter() - self.t0, 1e-9)

    def reset(self):
        self.chars, self.t0 = 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - tic


# ---------------------------------------------------------------- the run

class Trainer:
    def __init__(self, cfg, *, out_dir_explicit=False, force=False, resume=None, resume_dir=None,
                 dist_info=DistInfo(), progress=True, log=print):
        t, self.dist, self.resumed = cfg.train, dist_info, resume is not None
        self.device = resolve_device(cfg.device, dist_info)
        configure_backends(self.device, t)
        init = load_init(cfg) if resume is None and t.init_from else None
        base_vocab = (init or resume)["vocab"] if init is not None or (resume is not None and t.init_from) else None
        self.corpus = Corpus(cfg, dist_info, progress, base_vocab, log)
        try:
            self.batcher = make_batcher(self.corpus.train_ids, t, dist_info, self.corpus.lut)
            self.n_eval = eval_stream_count(len(self.corpus.val_ids), t.batch_size, t.seq_len, dist_info.world_size)
            if resume is not None:
                check_resume(resume, cfg, self.corpus.vocab)
            check_fits_in_memory(cfg, len(self.corpus.vocab), self.device, dist_info.world_size)
            # All checks passed: only now touch the file system.
            self.out_dir = prepare_out_dir(cfg, out_dir_explicit, force, resume_dir if resume is not None else None,
                                           dist_info)
        except BaseException:
            self.corpus.discard()
            raise
        self.corpus.keep()
        # The config (and every checkpoint) records where the run really lives, numbered sibling or not.
        self.cfg = cfg = dataclasses.replace(cfg, out_dir=str(self.out_dir))
        if dist_info.is_main:
            self.write_file("config.yaml", config_mod.dump_yaml(cfg).encode())
        seed_everything(t.seed + dist_info.rank)
        self.model = build_model(cfg.model, len(self.corpus.vocab), getattr(torch, t.dtype))
        if init is not None:
            transplant(self.model, init, self.corpus.vocab)
        self.model.to(self.device)
        self.ddp_model = wrap_ddp(self.model, self.device, dist_info)
        self.params = list(self.model.parameters())
        self.opt = make_optimizer(self.params, t)
        self.state = RunState(smooth_loss=math.log(len(self.corpus.vocab)))  # the tutorial starts at ln V
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.cfg.train, self.state.train_seconds))
        if resume is not None:
            self.restore(resume)
        self.log = (RunLogger(self.out_dir, cfg, self.state.step, resume is not None, progress, log)
                    if dist_info.is_main else NullLogger())
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16) if t.amp == "bf16" and self.device.type == "cuda"
                    else contextlib.nullcontext())
        self.saved = {}  # checkpoint name -> step, as written by this process
        self.heatmap_ids = data_mod.as_ids(self.corpus.val_ids[:HEATMAP_CHARS], self.corpus.lut)  # fixed: images compare

    def restore(self, ckpt):
        t = self.cfg.train
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.batcher.load_state_dict(ckpt["data"])
        self.state = RunState.from_checkpoint(ckpt)
        if self.dist.world_size == ckpt.get("world_size", 1):
            set_rng_state(ckpt["rng"], self.device)
        else:
            # Re-split streams: data order and hidden state carry over exactly; the
            # per-rank dropout streams cannot, so they are reseeded from the step.
            seed_everything(t.seed + 1000003 * self.state.step + self.dist.rank)
        # Overrides on resume (train.lr, weight_decay, max_steps, the schedule) take effect from
        # here: the saved optimizer and scheduler would otherwise bring back the old values.
        self.sched.base_lrs = [t.lr for _ in self.opt.param_groups]
        for g in self.opt.param_groups:
            g["initial_lr"], g["weight_decay"] = t.lr, t.weight_decay
            g["lr"] = t.lr * lr_factor(self.state.step, t, self.state.train_seconds)
        if ckpt["hidden"] is not None and t.stateful:
            dtype = getattr(torch, t.dtype)
            self.state.hidden = map_state(lambda h: D.my_streams(h, self.dist).to(self.device, dtype), ckpt["hidden"])

    def run(self):
        """Train until max_steps or the budget; returns a summary dict."""
        t, s = self.cfg.train, self.state
        meter = Throughput()
        self.model.train()
        try:
            with stop_on_signals() as stop:
                self.log.line(self.start_line())  # only once Ctrl-C is ours to handle
                out_of_time = self.budget_spent()  # a resumed run whose budget is spent trains no more
                while s.step < t.max_steps and not out_of_time:
                    tick = time.perf_counter()
                    x, y = self.next_batch()                           # fetch the next window of every stream
                    loss, norm, h_new, finite = self.train_step(x, y)  # forward, backward, clip, update
                    s.train_seconds += time.perf_counter() - tick
                    out_of_time = self.budget_spent()
                    self.sched.step()
                    s.step += 1
                    meter.chars += x.numel() * self.dist.world_size
                    self.log.step_done()
                    self.account(loss, norm, h_new, finite)            # carry the state; smooth; NaN guard
                    if s.step % t.log_interval == 0 and s.log_acc["n"]:
                        self.log_training(meter)
                    with meter.paused():                               # sampling and evaluation are not training
                        if t.sample_interval and s.step % t.sample_interval == 0:
                            self.sample_to_log()
                        if s.step % t.eval_interval == 0 or s.step == t.max_steps or out_of_time:
                            self.evaluate_and_checkpoint()
                    if self.stop_agreed(stop):
                        self.interrupt(stop["signum"])
                if s.val is None:  # resumed at the end: nothing to train, still report
                    self.evaluate_and_checkpoint()
        except RunFailed as e:
            self.log.close_quietly()
            raise type(e)(f"{e}; {self.last_good()}") from None
        except BaseException:
            self.log.close_quietly()
            raise
        self.log_char_embedding()
        self.log.hparams(self.cfg, s.val)
        self.log.close()
        return self.summary()

    # ------------------------------------------------------------ one step

    def next_batch(self):
        x, y, reset = self.batcher.next()
        if reset or not self.cfg.train.stateful:
            self.state.hidden = None  # streams wrapped (or random windows): start from h0 = 0
        return self.to_device(x), self.to_device(y)

    def to_device(self, x):
        pin = self.device.type == "cuda"
        return (x.pin_memory() if pin else x).to(self.device, non_blocking=pin)

    def compute_loss(self, x, y):
        """(mean loss over the window, final state); the state starts from the carried one."""
        with self.amp:
            logits, h_new = self.ddp_model(x, self.state.hidden)
            return cross_entropy(logits, y), h_new

    def train_step(self, x, y):
        """One update. A NaN/Inf loss or gradient norm skips it: parameters are left untouched."""
        t = self.cfg.train
        self.opt.zero_grad(set_to_none=True)
        loss, h_new = self.compute_loss(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        # The one host sync per step: whether to skip the update must be known before step().
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        if finite:
            self.opt.step()
        return loss, norm, h_new, finite

    def account(self, loss, norm, h_new, finite):
        s = self.state
        if finite:
            # Keep the values so the next window starts where this one ended, but cut the graph:
            # otherwise backward would run through every earlier window and memory would grow
            # with the length of the run.
            s.hidden = map_state(torch.Tensor.detach, h_new)
            lval = loss.detach()
            s.smooth_loss = s.smooth_loss * SMOOTHING + (1 - SMOOTHING) * lval
            s.log_acc["loss"] += lval
            s.log_acc["norm"] += norm.detach()
            s.log_acc["n"] += 1
            s.consecutive_bad = 0
            return
        s.hidden = None  # a NaN state would poison every later step
        s.nonfinite_total += 1
        s.consecutive_bad += 1
        self.log.nonfinite(s.step, s.nonfinite_total)
        if s.consecutive_bad >= self.cfg.train.max_nonfinite:
            raise TrainingDiverged(
                f"{s.consecutive_bad} consecutive steps with a non-finite loss or gradient norm "
                f"(up to step {s.step}); parameters were not updated on those steps; "
                f"try a lower train.lr or train.grad_clip")

    def budget_spent(self):
        t, s = self.cfg.train, self.state
        if not t.max_minutes:
            return False
        s.train_seconds = D.agree_max(s.train_seconds, self.dist, self.device)  # one clock for every rank
        return s.train_seconds >= 60 * t.max_minutes

    def stop_agreed(self, stop):
        signum = int(D.agree_max(stop["signum"] or 0, self.dist, self.device))
        if signum and stop["signum"] is None:
            stop["signum"] = signum
        return bool(signum)

    # ------------------------------------------------------------ logging, sampling, evaluation

    def start_line(self):
        n_params = sum(p.numel() for p in self.params)
        t = self.cfg.train
        budget = f" or {t.max_minutes:g} minutes of training" if t.max_minutes else ""
        return (f"{'resuming' if self.resumed else 'training'} {n_params:,} parameters on {self.device} "
                f"from step {self.state.step} to {t.max_steps}{budget}; run directory {self.out_dir}")

    def log_training(self, meter):
        s, acc = self.state, self.state.log_acc
        # .item() only here: reading the loss every step would sync a GPU every step.
        mean_loss, mean_norm = float(acc["loss"]) / acc["n"], float(acc["norm"]) / acc["n"]
        s.smooth_loss = float(s.smooth_loss)
        s.train_log.append((s.step, mean_loss))
        self.log.train_scalars(s.step, mean_loss, s.smooth_loss, self.opt.param_groups[0]["lr"], mean_norm,
                               meter.rate())
        s.log_acc = {"loss": 0.0, "norm": 0.0, "n": 0}
        meter.reset()

    def sample_to_log(self):
        if not self.dist.is_main:
            return
        g = torch.Generator().manual_seed(self.cfg.train.seed + self.state.step)  # training's RNG stays untouched
        vocab = self.corpus.vocab
        text = generate(self.model, vocab, default_prime(vocab, self.corpus.char_counts),
                        self.cfg.train.sample_length, temperature=0.8, generator=g)
        self.log.sample(text, self.state.step)

    @torch.no_grad()
    def evaluate(self):
        """Mean validation loss per character: one stateful pass over the split, summed over ranks."""
        t = self.cfg.train
        self.model.eval()
        total, count, hv = torch.zeros((), dtype=torch.float64, device=self.device), 0, None
        for xv, yv in data_mod.eval_windows(self.corpus.val_ids, self.n_eval, t.seq_len, self.dist.rank,
                                            self.dist.world_size, self.corpus.lut):
            with self.amp:
                logits, hv = self.model(self.to_device(xv), hv)
            total += cross_entropy(logits, self.to_device(yv), reduction="sum").double()
            count += yv.numel()
        self.model.train()
        total, count = D.sum_total_and_count(total, count, self.dist)
        return (total / count).item()

    def evaluate_and_checkpoint(self):
        s = self.state
        s.val = s.last_val = self.evaluate()
        s.val_log.append((s.step, s.val))
        s.last_eval_step = s.step
        hidden = self.gathered_state()  # a collective: every rank takes part
        improved = s.val < s.best_val
        s.best_val = min(s.best_val, s.val)
        self.log.validation(s.step, s.val, s.best_val, improved, self.model)
        if self.dist.is_main:
            self.log.hidden_heatmap(s.step, heatmap_image(self.model, self.to_device(self.heatmap_ids)))
        self.save_checkpoint("ckpt.pt", hidden)
        self.keep_step_checkpoint()
        if improved:
            self.save_checkpoint("best.pt", hidden)  # only ever replaced by a better model
        self.log.flush()
        self.log.validation_line(s.step, s.val, s.best_val, improved)

    def log_char_embedding(self):
        """For TensorBoard's projector: each character's column of layer 0's W_xh (all G gates)."""
        if self.dist.is_main:
            emb = self.model.cells[0].W_xh.detach().t().float().cpu()  # (V, G·H)
            self.log.char_embedding(self.state.step, emb, [char_label(c) for c in self.corpus.vocab.chars])

    # ------------------------------------------------------------ checkpoints

    def gathered_state(self):
        """Every rank's carried state, concatenated along the streams, on the CPU (a collective)."""
        return map_state(lambda h: D.gather_state(h, self.dist), self.state.hidden)

    def checkpoint_dict(self, hidden):
        return {
            "format": checkpoint.FORMAT,
            "model": self.model.state_dict(),
            "model_args": self.model.model_args(),
            "vocab": list(self.corpus.vocab.chars),
            "vocab_mode": self.corpus.vocab.mode,
            "char_counts": self.corpus.char_counts,  # for sampling's default prime when there is no newline
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "data": self.batcher.state_dict(),
            "hidden": hidden,
            "rng": rng_state(self.device),
            "config": config_mod.to_dict(self.cfg),
            "world_size": self.dist.world_size,
            **self.state.to_checkpoint(),
        }

    def save_checkpoint(self, name, hidden):
        if not self.dist.is_main:
            return
        try:
            checkpoint.save(self.checkpoint_dict(hidden), self.out_dir / name)
        except OSError as e:
            raise RunFailed(f"could not write {self.out_dir / name} ({e.strerror or e})") from None
        self.saved[name] = self.state.step

    def keep_step_checkpoint(self):
        """ckpt-<step>.pt beside ckpt.pt, for sampling from any point of the run; the last
        train.keep_checkpoints of them are kept."""
        keep = self.cfg.train.keep_checkpoints
        if not keep or not self.dist.is_main:
            return
        try:
            checkpoint.link_atomic(self.out_dir / "ckpt.pt", self.out_dir / f"ckpt-{self.state.step}.pt")
            for _, old in checkpoint.step_checkpoints(self.out_dir)[:-keep]:
                old.unlink()
        except OSError as e:
            raise RunFailed(f"could not keep ckpt-{self.state.step}.pt in {self.out_dir} ({e.strerror or e})") from None

    def write_file(self, name, data):
        try:
            checkpoint.write_atomic(self.out_dir / name, data)
        except OSError as e:
            raise RunFailed(f"could not write {self.out_dir / name} ({e.strerror or e})") from None

    def last_good(self):
        path = self.out_dir / "ckpt.pt"
        if not path.exists():
            return f"no checkpoint is left in {self.out_dir}"
        step = self.saved.get("ckpt.pt")  # None: written by an earlier process of this run
        return f"the last good checkpoint is {path}" + (f" (step {step})" if step is not None else "")

    def interrupt(self, signum):
        if self.state.last_eval_step != self.state.step:
            self.save_checkpoint("ckpt.pt", self.gathered_state())
        raise Interrupted(signum or signal.SIGTERM, self.state.step, self.out_dir)

    def summary(self):
        s = self.state
        return {"out_dir": str(self.out_dir), "step": s.step, "val_loss": s.val, "best_val": s.best_val,
                "train_log": s.train_log, "val_log": s.val_log, "nonfinite_steps": s.nonfinite_total,
                "train_seconds": s.train_seconds}


def train(cfg, *, out_dir_explicit=False, force=False, resume=None, resume_dir=None,
          dist_info=DistInfo(), progress=True, log=print):
    """Train per cfg. Returns a summary dict. resume: a loaded checkpoint dict to continue from."""
    return Trainer(cfg, out_dir_explicit=out_dir_explicit, force=force, resume=resume, resume_dir=resume_dir,
                   dist_info=dist_info, progress=progress, log=log).run()
