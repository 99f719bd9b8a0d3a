"""The training loop: stateful truncated BPTT, evaluation, checkpoints, resume.

``train(cfg, ...)`` is one run. It builds a ``Trainer`` from small setup steps (device, data,
run directory, model, optimizer) and calls ``Trainer.run``, whose loop reads top to bottom:
fetch a window, step, account, log, sample, evaluate, stop. The step itself is ``step.py``'s, the
one the CUDA graph and the bench run too. The run's changing state lives in a ``RunState``; what
the run shows goes through a logger (``logger.py``); every collective is in ``distributed.py``.
``train`` and ``Trainer`` are the only code that sees the whole config: each part they call gets
its section. The CLI (``cli.py``) and the Python API call ``train``; nothing here reads sys.argv
or the environment.
"""
import contextlib
import copy
import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field

import torch

from ..data import batchers
from ..data.corpus import describe_source
from ..data.vocab import as_ids
from ..errors import RunFailed, UserError
from ..files import could_not_write, link_atomic, write_atomic
from ..insight import gradients
from ..insight.heatmap import char_label, heatmap_image
from ..model.cells import build_model, cross_entropy, evaluating, map_state
from ..sampling import dynamic
from ..sampling.sample import Sampling, default_prime, generate
from . import checkpoint, config as config_mod, distributed, finetune, graphs, runs
from .distributed import DistInfo, wrap_ddp
from .logger import NullLogger, RunLogger
from .memory import check_fits_in_memory
from .optim import learning_rate, lr_factor, make_optimizer
from .rundir import prepare_out_dir
from .runtime import (check_device, configure_backends, device_notices, has_float64, resolve_device, rng_state,
                      seed_everything, set_rng_state, stop_on_signals, sum_dtype)
from .step import Step, smoothed

SAMPLE_TEMPERATURE = 0.8  # the samples TensorBoard shows, as charrnn sample draws them by default


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


# ---------------------------------------------------------------- setup

def fit_batch(train_cfg, n_train, dist_info, log):
    """A fine-tuning run's train config, its batch fitted to the text: a config written for a big
    corpus (shakespeare.yaml's 128 streams) would otherwise refuse any text under 16.5k characters.
    Said in one line; config.yaml records the batch the run used."""
    fit = batchers.streams_that_fit(n_train, train_cfg.batch_size, train_cfg.seq_len, dist_info.world_size)
    if not train_cfg.stateful or fit in (0, train_cfg.batch_size):
        return train_cfg  # random windows fit any text; too short for even one stream: the batcher says so
    log(f"fine-tuning on {n_train:,} training characters, which fill {fit} streams of train.seq_len + 1 = "
        f"{train_cfg.seq_len + 1} characters: training with train.batch_size={fit} (not {train_cfg.batch_size})")
    return dataclasses.replace(train_cfg, batch_size=fit)


def bits_per_char(nats, symbols_per_char):
    """Nats per symbol as bits per character of text (Trainer.symbols_per_char): the loss in bits
    for chars (and bytes, whose character is the byte)."""
    return nats * symbols_per_char / math.log(2)


EMBEDDED = 4096  # symbols in TensorBoard's projector: every character; a token vocabulary's first
HEATMAP_CHARS = 100  # the validation snippet whose hidden states TensorBoard shows at each evaluation
GRADIENT_CHARS = 4 * gradients.WINDOW + 1  # the windows whose gradients through time it shows


# ---------------------------------------------------------------- the run's state

@dataclass
class RunState:
    """Everything about a run that changes as it trains, apart from the model, optimizer and data
    position (which have their own state_dicts)."""
    step: int = 0
    best_val: float = math.inf
    last_val: float = None  # the latest validation loss
    val_bpc: float = None  # the same in bits per character of text (bits_per_char)
    smooth_loss: float = 0.0  # the tutorial's EMA; a 0-d tensor between log intervals (no GPU sync)
    log_acc: dict = field(default_factory=lambda: {"loss": 0.0, "norm": 0.0, "n": 0, "clipped": 0})  # since the last log
    nonfinite_total: int = 0
    train_seconds: float = 0.0  # training time so far, across resumes (evaluation and sampling excluded)
    evals_since_gain: int = 0  # train.patience's count: evaluations since loss/val last beat gain_best by min_delta
    gain_best: float = math.inf  # the loss/val of that evaluation
    hidden: torch.Tensor = None  # this rank's carried state (L, B/N, H), or (h, c) of them, on the device
    # Not saved: they describe this process's part of the run.
    consecutive_bad: int = 0
    last_eval_step: int = None
    val_dynamic: float = None  # train.dynamic_eval's figure, at the end of the run
    eval_seconds: float = 0.0  # this process's validation passes, which a budget does not count
    train_log: list = field(default_factory=list)
    val_log: list = field(default_factory=list)

    SAVED = ("step", "best_val", "last_val", "val_bpc", "smooth_loss", "log_acc", "nonfinite_total", "train_seconds",
             "evals_since_gain", "gain_best")

    def to_checkpoint(self):
        out = {k: getattr(self, k) for k in self.SAVED}
        out["log_acc"] = dict(self.log_acc)
        return out

    @classmethod
    def from_checkpoint(cls, ckpt):
        values = {k: ckpt[k] for k in cls.SAVED if k in ckpt}  # older checkpoints lack train_seconds, ...
        values["log_acc"] = dict(values["log_acc"])
        values.setdefault("gain_best", values["best_val"])  # ... and patience's count, which starts from their best
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
        self.dist, self.resumed = dist_info, resume is not None
        if resume is not None:  # a frozen key changed: refused before any corpus is encoded for it
            config_mod.check_resume(resume["config"], config_mod.to_dict(cfg))
        self.device = resolve_device(cfg.device, dist_info)
        configure_backends(self.device, cfg.train)
        init = (finetune.load_init(cfg.train.init_from, cfg.model, cfg.data.vocab)
                if resume is None and cfg.train.init_from else None)
        base = init if init is not None else (resume if resume is not None and cfg.train.init_from else None)
        self.corpus = distributed.load_corpus(cfg.data, dist_info, progress, base and base["vocab"], log)
        if init is not None:
            cfg = dataclasses.replace(cfg, train=fit_batch(cfg.train, len(self.corpus.train_ids), dist_info, log))
        with self.corpus.installed_if_no_error():  # every check of the run's inputs, then the run directory
            self.batcher, self.n_eval = self.open_batches(cfg.train)
            self.per_char = self.symbols_per_char()
            if resume is not None:
                runs.check_resume(resume, config_mod.to_dict(cfg), self.corpus)
            check_device(cfg.train, self.device, dist_info.world_size)
            check_fits_in_memory(cfg.model, cfg.train, len(self.corpus.vocab), self.device, dist_info.world_size)
            self.graphed, self.notices = self.graph_mode(cfg.train)
            self.notices += device_notices(cfg.train, self.device)
            self.out_dir = prepare_out_dir(cfg.out_dir, out_dir_explicit, force,
                                           resume_dir if resume is not None else None, dist_info)
        # The config (and every checkpoint) records where the run really lives, numbered sibling or not.
        self.cfg = cfg = dataclasses.replace(cfg, out_dir=str(self.out_dir))
        if dist_info.is_main:
            self.write_file("config.yaml", self.config_text().encode())
        self.build(init)                                                  # model, optimizer, schedule, state
        if resume is not None:
            self.restore(resume)
        self.log = (RunLogger(self.out_dir, config_mod.dump_yaml(cfg), cfg.train, self.state.step, self.resumed,
                              progress, log, cloze=cfg.model.bidirectional, start_seconds=self.state.train_seconds)
                    if dist_info.is_main else NullLogger())
        self.saved = {}  # checkpoint name -> step, as written by this process
        self.heatmap_ids = as_ids(self.corpus.val_ids[:HEATMAP_CHARS], self.corpus.lut)  # fixed: images compare
        self.gradient_ids = as_ids(self.corpus.val_ids[:GRADIENT_CHARS], self.corpus.lut)

    def open_batches(self, train_cfg):
        """(this rank's training batcher, the number of validation streams); self.eval_ids: the part of
        the validation split each evaluation reads (train.eval_chars caps it)."""
        corpus, world = self.corpus, self.dist.world_size
        batcher = batchers.make_batcher(corpus.train_ids, train_cfg, self.dist, corpus.lut)
        self.eval_ids = corpus.val_ids[:train_cfg.eval_chars or None]
        return batcher, batchers.eval_stream_count(len(self.eval_ids), train_cfg.batch_size, train_cfg.seq_len, world)

    def symbols_per_char(self):
        """(training, validation) symbols per character of text, which turn nats per symbol into
        bits per character (bits_per_char): 1 for chars and bytes; for a token corpus, its training
        split's, and exactly that of the characters evaluate() scores (those its targets spell)."""
        corpus = self.corpus
        if corpus.val_lens is None:
            return 1.0, 1.0
        scored = batchers.batchify(corpus.val_lens[:len(self.eval_ids)], self.n_eval)[:, 1:]  # eval_windows' targets
        return len(corpus.train_ids) / max(corpus.train_chars, 1), scored.numel() / max(int(scored.sum()), 1)

    def graph_mode(self, train_cfg):
        """(whether the training step runs as one CUDA graph, notices): train.cuda_graphs=on refuses a
        run that cannot be captured (graphs.refusal); auto runs it eagerly and says why once."""
        mode = train_cfg.cuda_graphs
        why = graphs.refusal(train_cfg.optimizer, self.device, self.dist.world_size) if mode != "off" else None
        if mode == "on" and why:
            raise UserError(f"train.cuda_graphs=on: {why}; use train.cuda_graphs=auto to fall back to eager "
                            f"steps, or off")
        return mode != "off" and why is None, [f"train.cuda_graphs=auto: eager training steps, since {why}"] if why else []

    def config_text(self):
        """config.yaml: the resolved config, and in a comment what a corpus of many files was joined from."""
        text = config_mod.dump_yaml(self.cfg)
        info = self.corpus.source_info
        return text + (f"# data.path: {describe_source(info)}\n" if info else "")

    def build(self, init):
        """The model (from init's weights when fine-tuning), its optimizer and schedule, a fresh RunState."""
        train_cfg = self.cfg.train
        seed_everything(train_cfg.seed + self.dist.rank)
        self.model = build_model(self.cfg.model, len(self.corpus.vocab), getattr(torch, train_cfg.dtype))
        self.model.build_kernels()  # impl fused_cpp: a first build is not inside the time budget
        if init is not None:
            finetune.transplant(self.model, init, self.corpus.vocab)
        self.model.to(self.device)
        self.ddp_model = wrap_ddp(self.model, self.device, self.dist)
        self.params = list(self.model.parameters())
        self.opt = make_optimizer(self.params, train_cfg, capturable=self.graphed)
        self.state = RunState(smooth_loss=math.log(len(self.corpus.vocab)))  # the tutorial starts at ln V
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, self.cfg.train, self.state.train_seconds))
        self.sched.base_lrs = [train_cfg.lr for _ in self.opt.param_groups]  # floats: no device read per step
        bf16 = train_cfg.amp == "bf16" and self.device.type == "cuda"
        # A graph cannot hold autocast's weight cache: it would be filled at capture, never again.
        amp = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not self.graphed) if bf16 else None
        self.amp = amp or contextlib.nullcontext()
        # The graph steps the model itself: DDP's all-reduce cannot be captured (graphs.refusal).
        self.step_fn = Step(self.model if self.graphed else self.ddp_model, self.opt, self.params,
                            train_cfg.grad_clip, self.amp)
        self.graph = None  # graphs.WholeStepGraph, made at the first step when self.graphed

    def restore(self, ckpt):
        train_cfg = self.cfg.train
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
            seed_everything(train_cfg.seed + 1000003 * self.state.step + self.dist.rank)
        # Overrides on resume (train.lr, weight_decay, max_steps, the schedule) take effect from
        # here: the saved optimizer and scheduler would otherwise bring back the old values.
        self.sched.base_lrs = [train_cfg.lr for _ in self.opt.param_groups]
        for g in self.opt.param_groups:
            g["initial_lr"], g["weight_decay"] = train_cfg.lr, train_cfg.weight_decay
            lr = train_cfg.lr * lr_factor(self.state.step, train_cfg, self.state.train_seconds)
            g["lr"] = learning_rate(lr, self.params, self.graphed)
        if ckpt["hidden"] is not None and train_cfg.stateful:
            dtype = getattr(torch, train_cfg.dtype)
            self.state.hidden = map_state(lambda h: distributed.my_streams(h, self.dist).to(self.device, dtype), ckpt["hidden"])

    def run(self):
        """Train until max_steps or the budget; returns a summary dict."""
        train_cfg, state = self.cfg.train, self.state
        meter = Throughput()
        self.model.train()
        try:
            with stop_on_signals() as stop:
                self.log.line(self.start_line())  # only once Ctrl-C is ours to handle
                for notice in self.notices:
                    self.log.line(notice)
                out_of_time = self.budget_spent()  # a resumed run whose budget is spent trains no more
                while state.step < train_cfg.max_steps and not out_of_time and not self.patience_spent():
                    tick = time.perf_counter()
                    x, y = self.next_batch()                           # fetch the next window of every stream
                    outcome = self.train_step(x, y)                    # forward, backward, clip, update
                    state.train_seconds += time.perf_counter() - tick
                    out_of_time = self.budget_spent()
                    self.sched.step()
                    state.step += 1
                    meter.chars += x.numel() * self.dist.world_size
                    self.log.step_done(state.step, state.train_seconds)
                    self.account(outcome)                              # carry the state; smooth; NaN guard
                    if state.step % train_cfg.log_interval == 0:
                        self.log_training(meter)
                    with meter.paused():                               # sampling and evaluation are not training
                        last = state.step == train_cfg.max_steps or out_of_time  # a short run has samples too
                        if train_cfg.sample_interval and (state.step % train_cfg.sample_interval == 0 or last):
                            self.sample_to_log()
                        if state.step % train_cfg.eval_interval == 0 or last:
                            self.evaluate_and_checkpoint()
                    if self.stop_agreed(stop):
                        self.interrupt(stop["signum"])
                if state.last_eval_step is None:  # resumed at the end: nothing to train, still report
                    self.evaluate_and_checkpoint()
                if self.patience_spent():
                    self.log.line(self.early_stop_line())
        except RunFailed as e:
            self.log.close_quietly()
            raise type(e)(f"{e}; {self.last_good()}") from None
        except BaseException:
            self.log.close_quietly()
            raise
        finally:
            self.ddp_model = self.model  # the DDP wrapper holds the process group: see distributed.finish
            self.step_fn.forward = self.model  # the step held the wrapper too
        if train_cfg.dynamic_eval and self.dist.is_main:
            self.evaluate_dynamic()
        self.log_char_embedding()
        self.log.hparams(config_mod.flatten(config_mod.to_dict(self.cfg)), state.last_val, state.val_bpc)
        self.log.close()
        return self.summary()

    # ------------------------------------------------------------ one step

    def next_batch(self):
        x, y, reset = self.batcher.next()
        if reset or not self.cfg.train.stateful:
            self.state.hidden = None  # streams wrapped (or random windows): start from h0 = 0
        if self.model.bidirectional:
            y = x  # a cloze model predicts each character of the window from both sides of it
        return self.to_device(x), self.to_device(y)

    def to_device(self, x):
        pin = self.device.type == "cuda"
        return (x.pin_memory() if pin else x).to(self.device, non_blocking=pin)

    def train_step(self, x, y):
        """One update (step.Step): a NaN/Inf loss or gradient norm skips it, leaving the parameters
        untouched. Returns its step.Outcome, or None from a graph, which keeps its own books."""
        if self.graphed:
            return self.graph_step(x, y)
        outcome = self.step_fn(x, y, self.state.hidden)
        if outcome.finite:
            self.check_weights_finite()
        return outcome

    def check_weights_finite(self):
        """A finite step can still overflow the weights (train.weight_decay=1e30, say). That is a
        non-finite step no later step can undo (every loss after it is NaN): counted, and the run
        stops at once. A tensor's float64 sum is non-finite when it holds a NaN or Inf (float32 weights
        cannot overflow it): one reduction per tensor, one host sync."""
        if bool(torch.isfinite(torch.stack([p.detach().sum(dtype=torch.float64) for p in self.params]).sum())):
            return
        state = self.state
        state.nonfinite_total += 1
        self.log.nonfinite(state.step + 1, state.nonfinite_total)
        raise TrainingDiverged(f"the update of step {state.step + 1} made the weights non-finite (NaN or Inf), "
                               f"so every later step would be too; try a lower train.lr or train.weight_decay")

    def graph_step(self, x, y):
        if self.graph is None:
            self.graph = graphs.WholeStepGraph(self.model, self.step_fn, x.shape, self.state.smooth_loss,
                                               capture=self.device.type == "cuda")
        self.graph.step(x, y, self.state.hidden)
        self.state.hidden = self.graph.state
        return None

    def collect_graph(self):
        """Fold what the graph counted on the device since the last call into the run's state."""
        if self.graph is None:
            return
        sums, longest, smooth = self.graph.collect()
        state, acc = self.state, self.state.log_acc
        acc["loss"] += sums["loss"]
        acc["norm"] += sums["norm"]
        acc["n"] += int(sums["finite"])
        state.smooth_loss = smooth
        if sums["nonfinite"]:
            state.nonfinite_total += int(sums["nonfinite"])
            self.log.nonfinite(state.step, state.nonfinite_total)
        if longest >= self.cfg.train.max_nonfinite:
            self.diverged(int(longest))

    def diverged(self, consecutive):
        raise TrainingDiverged(
            f"{consecutive} consecutive steps with a non-finite loss or gradient norm "
            f"(up to step {self.state.step}); parameters were not updated on those steps; "
            f"try a lower train.lr or train.grad_clip")

    def account(self, outcome):
        if outcome is None:
            return  # a graph's step: collect_graph() reads its books at the log interval
        state = self.state
        state.hidden = outcome.state  # detached; None after a skipped step
        if outcome.finite:
            state.smooth_loss = smoothed(state.smooth_loss, outcome.loss)
            state.log_acc["loss"] += outcome.loss
            state.log_acc["norm"] += outcome.norm
            state.log_acc["n"] += 1
            # clip_grad_norm_ returns the norm before clipping, and scales by max_norm / (norm + 1e-6)
            # whenever that is below 1
            state.log_acc["clipped"] = state.log_acc.get("clipped", 0) + (outcome.norm + 1e-6 > self.step_fn.clip)
            state.consecutive_bad = 0
            return
        state.nonfinite_total += 1
        state.consecutive_bad += 1
        self.log.nonfinite(state.step, state.nonfinite_total)
        if state.consecutive_bad >= self.cfg.train.max_nonfinite:
            self.diverged(state.consecutive_bad)

    def patience_spent(self):
        """train.patience: whether that many evaluations in a row have not beaten the best by min_delta.
        Every rank sees the same loss/val, so they agree without a collective."""
        patience = self.cfg.train.patience
        return bool(patience) and self.state.evals_since_gain >= patience

    def early_stop_line(self):
        train_cfg, state = self.cfg.train, self.state
        by = f" by more than train.min_delta={train_cfg.min_delta:g}" if train_cfg.min_delta else ""
        return (f"early stop at step {state.step}: loss/val has not beaten {state.gain_best:.4f}{by} in "
                f"{state.evals_since_gain} evaluations (train.patience={train_cfg.patience}); best.pt holds the "
                f"best, {state.best_val:.4f}")

    def budget_spent(self):
        train_cfg, state = self.cfg.train, self.state
        if not train_cfg.max_minutes:
            return False
        state.train_seconds = distributed.agree_max(state.train_seconds, self.dist, self.device)  # one clock for every rank
        return state.train_seconds >= 60 * train_cfg.max_minutes

    def stop_agreed(self, stop):
        signum = int(distributed.agree_max(stop["signum"] or 0, self.dist, self.device))
        if signum and stop["signum"] is None:
            stop["signum"] = signum
        return bool(signum)

    # ------------------------------------------------------------ logging, sampling, evaluation

    def start_line(self):
        n_params = sum(p.numel() for p in self.params)
        train_cfg = self.cfg.train
        budget = f" or {train_cfg.max_minutes:g} minutes of training" if train_cfg.max_minutes else ""
        return (f"{'resuming' if self.resumed else 'training'} {n_params:,} parameters on {self.device} "
                f"from step {self.state.step} to {train_cfg.max_steps}{budget}; run directory {self.out_dir}")

    def log_training(self, meter):
        self.collect_graph()
        state, acc = self.state, self.state.log_acc
        if not acc["n"]:
            return  # every step since the last log was skipped: nothing to average
        # .item() only here: reading the loss every step would sync a GPU every step.
        mean_loss, mean_norm = float(acc["loss"]) / acc["n"], float(acc["norm"]) / acc["n"]
        state.smooth_loss = float(state.smooth_loss)
        state.train_log.append((state.step, mean_loss))
        clipped = None if self.graphed else float(acc.get("clipped", 0)) / acc["n"]  # a graph keeps no such count
        self.log.train_scalars(state.step, mean_loss, state.smooth_loss, self.opt.param_groups[0]["lr"], mean_norm,
                               meter.rate() / self.per_char[0], bits_per_char(mean_loss, self.per_char[0]), clipped)
        state.log_acc = {"loss": 0.0, "norm": 0.0, "n": 0, "clipped": 0}
        meter.reset()

    def sample_to_log(self):
        if not self.dist.is_main or self.model.bidirectional:  # a cloze model does not generate
            return
        seeded = Sampling(seed=self.cfg.train.seed + self.state.step)  # training's RNG stays untouched
        vocab = self.corpus.vocab
        text = generate(self.float64_model(), vocab, default_prime(vocab, self.corpus.char_counts),
                        self.cfg.train.sample_length, seeded)
        self.log.sample(text, self.state.step)

    @torch.no_grad()
    def evaluate(self):
        """Mean validation loss per symbol (character, byte or token): one stateful pass over the split,
        summed over ranks."""
        seq_len = self.cfg.train.seq_len
        windows = batchers.eval_windows(self.eval_ids, self.n_eval, seq_len, self.dist.rank, self.dist.world_size,
                                        self.corpus.lut)
        windows = self.log.eval_progress(windows, batchers.eval_window_count(len(self.eval_ids), self.n_eval, seq_len))
        total, count, hv = torch.zeros((), dtype=sum_dtype(self.device), device=self.device), 0, None
        with evaluating(self.model):
            for xv, yv in windows:
                if self.model.bidirectional:
                    yv, hv = xv, None  # the cloze targets, from zero states
                with self.amp:
                    logits, hv = self.model(self.to_device(xv), hv)
                total += cross_entropy(logits, self.to_device(yv), reduction="sum").to(total.dtype)
                count += yv.numel()
        total, count = distributed.sum_total_and_count(total, count, self.dist)
        return (total / count).item()

    def evaluate_dynamic(self):
        """train.dynamic_eval: the validation split scored by dynamic evaluation, as its own figure."""
        settings, corpus = dynamic.Settings(), self.corpus
        model = self.float64_model()
        stats = dynamic.gradient_stats(model, corpus.train_ids, settings, corpus.lut)
        total, count = dynamic.dynamic_score(model, corpus.val_ids, stats, settings, corpus.lut)
        self.state.val_dynamic = total / count
        self.log.dynamic(self.state.step, self.state.val_dynamic, self.state.last_val,
                         bits_per_char(self.state.val_dynamic, self.per_char[1]))

    def evaluate_and_checkpoint(self):
        self.collect_graph()  # the checkpoint holds the books up to this step
        state = self.state
        tick = time.perf_counter()
        state.last_val = val = self.evaluate()
        state.eval_seconds += time.perf_counter() - tick
        state.val_bpc = bits_per_char(val, self.per_char[1])
        state.val_log.append((state.step, val))
        state.last_eval_step = state.step
        hidden = self.gathered_state()  # a collective: every rank takes part
        improved = val < state.best_val
        state.best_val = min(state.best_val, val)
        gained = val < state.gain_best - self.cfg.train.min_delta
        state.gain_best, state.evals_since_gain = (val, 0) if gained else (state.gain_best, state.evals_since_gain + 1)
        self.log.validation(state.step, val, state.val_bpc, self.model, state.train_seconds)
        if self.dist.is_main:
            model = self.float64_model()
            self.log.hidden_heatmap(state.step, heatmap_image(model, self.heatmap_ids.to(model.W_hy.device)))
            self.log_gradients_through_time()
        self.save_checkpoint("ckpt.pt", hidden)
        self.keep_step_checkpoint()
        if improved:
            self.save_checkpoint("best.pt", hidden)  # only ever replaced by a better model
        self.log.flush()
        self.log.validation_line(state.step, val, state.val_bpc, state.best_val, improved)

    def float64_model(self):
        """The model for what computes in float64 (sampling, the heat map, dynamic evaluation): itself,
        or a CPU copy of it on a device without float64 (MPS)."""
        return self.model if has_float64(self.device) else copy.deepcopy(self.model).cpu()

    def log_gradients_through_time(self):
        """At each evaluation: how far back the loss reaches (insight/gradients.py), for a left-to-right
        model whose validation text holds a window."""
        if self.model.bidirectional or len(self.gradient_ids) < 3:
            return
        found = gradients.curves(self.model, self.to_device(gradients.windows(self.gradient_ids, count=4)),
                                 jacobians=False)
        self.log.gradients_through_time(self.state.step, gradients.curve_image(found), gradients.relative_scalars(found))

    def log_char_embedding(self):
        """For TensorBoard's projector: each character's column of layer 0's W_xh (all G gates)."""
        if self.dist.is_main:
            emb = self.model.cells[0].W_xh.detach().t().float().cpu()[:EMBEDDED]  # (V, G·H)
            labels = [char_label(c) for c in self.corpus.vocab.chars[:EMBEDDED]]
            self.log.char_embedding(self.state.step, emb, labels)

    # ------------------------------------------------------------ checkpoints

    def gathered_state(self):
        """Every rank's carried state, concatenated along the streams, on the CPU (a collective)."""
        return map_state(lambda h: distributed.gather_state(h, self.dist), self.state.hidden)

    def checkpoint_dict(self, hidden):
        progress = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "data": self.batcher.state_dict(), "hidden": hidden, "rng": rng_state(self.device),
                    **self.state.to_checkpoint()}
        return checkpoint.run_dict(self.model, self.corpus, config_mod.to_dict(self.cfg), progress, self.dist.world_size)

    def save_checkpoint(self, name, hidden):
        if not self.dist.is_main:
            return
        with could_not_write(self.out_dir / name):
            checkpoint.save(self.checkpoint_dict(hidden), self.out_dir / name)
        self.saved[name] = self.state.step

    def keep_step_checkpoint(self):
        """ckpt-<step>.pt beside ckpt.pt, for sampling from any point of the run; the last
        train.keep_checkpoints of them are kept."""
        keep = self.cfg.train.keep_checkpoints
        if not keep or not self.dist.is_main:
            return
        name = self.out_dir / f"ckpt-{self.state.step}.pt"
        with could_not_write(name):
            link_atomic(self.out_dir / "ckpt.pt", name)
            for _, old in checkpoint.step_checkpoints(self.out_dir)[:-keep]:
                old.unlink()

    def write_file(self, name, data):
        with could_not_write(self.out_dir / name):
            write_atomic(self.out_dir / name, data)

    def last_good(self):
        path = self.out_dir / "ckpt.pt"
        if not path.exists():
            return f"no checkpoint is left in {self.out_dir}"
        step = self.saved.get("ckpt.pt")  # None: written by an earlier process of this run
        return f"the last good checkpoint is {path}" + (f" (step {step})" if step is not None else "")

    def interrupt(self, signum):
        self.collect_graph()
        if self.state.last_eval_step != self.state.step:
            self.save_checkpoint("ckpt.pt", self.gathered_state())
        raise Interrupted(signum or signal.SIGTERM, self.state.step, self.out_dir)

    def summary(self):
        state = self.state
        return {"out_dir": str(self.out_dir), "step": state.step, "val_loss": state.last_val, "val_bpc": state.val_bpc,
                "val_dynamic": state.val_dynamic, "best_val": state.best_val, "train_log": state.train_log,
                "val_log": state.val_log, "nonfinite_steps": state.nonfinite_total,
                "train_seconds": state.train_seconds, "stopped_early": self.patience_spent(),
                "eval_seconds": state.eval_seconds, "evaluations": len(state.val_log), "eval_chars": len(self.eval_ids),
                "cloze": self.model.bidirectional}


def train(cfg, *, out_dir_explicit=False, force=False, resume=None, resume_dir=None,
          dist_info=DistInfo(), progress=True, log=print):
    """Train per cfg. Returns a summary dict. resume: a loaded checkpoint dict to continue from."""
    return Trainer(cfg, out_dir_explicit=out_dir_explicit, force=force, resume=resume, resume_dir=resume_dir,
                   dist_info=dist_info, progress=progress, log=log).run()
