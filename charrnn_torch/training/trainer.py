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
import signal
import time
from dataclasses import dataclass, field

import torch

from . import checkpoint, config as config_mod, distributed, graphs
from ..data import code_corpus
from ..data import batchers as batchers_mod, vocab as vocab_mod
from ..sampling import dynamic
from .distributed import DistInfo, wrap_ddp
from ..errors import RunFailed, UserError
from ..files import could_not_write, write_atomic
from .logger import NullLogger, RunLogger
from ..model.cells import build_model, cross_entropy, evaluating, map_state
from .rundir import prepare_out_dir
from .runtime import check_fits_in_memory, configure_backends, learning_rate, make_optimizer, resolve_device, rng_state, seed_everything, set_rng_state, stop_on_signals
from ..sampling.sample import default_prime, generate
from ..insight.visualize import char_label, heatmap_image

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


# ---------------------------------------------------------------- setup

def lr_factor(step, train_cfg, train_seconds=0.0):
    """The multiplier on train.lr before optimizer step `step` (0-based).

    With a wall-clock budget (train.max_minutes) the cosine's progress is the larger of the
    fractions of steps and of the budget spent, so it reaches its floor at whichever ends the run.
    """
    if step < train_cfg.warmup_steps:
        return (step + 1) / train_cfg.warmup_steps
    if train_cfg.lr_schedule == "cosine":
        progress = (step - train_cfg.warmup_steps) / max(1, train_cfg.max_steps - train_cfg.warmup_steps)
        if train_cfg.max_minutes:
            progress = max(progress, train_seconds / (60 * train_cfg.max_minutes))
        progress = min(1.0, progress)
        return train_cfg.min_lr_ratio + (1 - train_cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if train_cfg.lr_schedule == "step":
        return train_cfg.lr_gamma ** ((step - train_cfg.warmup_steps) // train_cfg.lr_step_size)
    return 1.0


def fit_batch(train_cfg, n_train, dist_info, log):
    """A fine-tuning run's train config, its batch fitted to the text: a config written for a big
    corpus (shakespeare.yaml's 128 streams) would otherwise refuse any text under 16.5k characters.
    Said in one line; config.yaml records the batch the run used."""
    fit = batchers_mod.streams_that_fit(n_train, train_cfg.batch_size, train_cfg.seq_len, dist_info.world_size)
    if not train_cfg.stateful or fit in (0, train_cfg.batch_size):
        return train_cfg  # random windows fit any text; too short for even one stream: the batcher says so
    log(f"fine-tuning on {n_train:,} training characters, which fill {fit} streams of train.seq_len + 1 = "
        f"{train_cfg.seq_len + 1} characters: training with train.batch_size={fit} (not {train_cfg.batch_size})")
    return dataclasses.replace(train_cfg, batch_size=fit)


HEATMAP_CHARS = 100  # the validation snippet whose hidden states TensorBoard shows at each evaluation


# ---------------------------------------------------------------- the run's state

@dataclass
class RunState:
    """Everything about a run that changes as it trains, apart from the model, optimizer and data
    position (which have their own state_dicts)."""
    step: int = 0
    best_val: float = math.inf
    last_val: float = None  # the latest validation loss
    smooth_loss: float = 0.0  # the tutorial's EMA; a 0-d tensor between log intervals (no GPU sync)
    log_acc: dict = field(default_factory=lambda: {"loss": 0.0, "norm": 0.0, "n": 0})  # since the last log
    nonfinite_total: int = 0
    train_seconds: float = 0.0  # training time so far, across resumes (evaluation and sampling excluded)
    hidden: torch.Tensor = None  # this rank's carried state (L, B/N, H), or (h, c) of them, on the device
    # Not saved: they describe this process's part of the run.
    consecutive_bad: int = 0
    last_eval_step: int = None
    val_dynamic: float = None  # train.dynamic_eval's figure, at the end of the run
    eval_seconds: float = 0.0  # this process's validation passes, which a budget does not count
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
        self.dist, self.resumed = dist_info, resume is not None
        self.device = resolve_device(cfg.device, dist_info)
        configure_backends(self.device, cfg.train)
        init = checkpoint.load_init(cfg) if resume is None and cfg.train.init_from else None
        cfg = self.open_run(cfg, init, resume, dict(explicit=out_dir_explicit, force=force, resume_dir=resume_dir),
                            progress, log)                                # corpus and checks, then the run directory
        # The config (and every checkpoint) records where the run really lives, numbered sibling or not.
        self.cfg = cfg = dataclasses.replace(cfg, out_dir=str(self.out_dir))
        if dist_info.is_main:
            self.write_file("config.yaml", self.config_text().encode())
        self.build(init)                                                  # model, optimizer, schedule, state
        if resume is not None:
            self.restore(resume)
        self.log = (RunLogger(self.out_dir, cfg, self.state.step, self.resumed, progress, log, self.state.train_seconds)
                    if dist_info.is_main else NullLogger())
        self.saved = {}  # checkpoint name -> step, as written by this process
        self.heatmap_ids = vocab_mod.as_ids(self.corpus.val_ids[:HEATMAP_CHARS], self.corpus.lut)  # fixed: images compare

    def open_run(self, cfg, init, resume, out, progress, log):
        """The corpus, the batcher and every check of the run's inputs; only then, when all passed,
        the run directory (out: choose_out_dir's explicit and force, and a resumed run's directory).
        Returns cfg, with a fine-tuning run's batch fitted to its text."""
        dist_info = self.dist
        base = init if init is not None else (resume if resume is not None and cfg.train.init_from else None)
        self.corpus = distributed.load_corpus(cfg.data, dist_info, progress, base and base["vocab"], log)
        if init is not None:
            cfg = dataclasses.replace(cfg, train=fit_batch(cfg.train, len(self.corpus.train_ids), dist_info, log))
        train_cfg = cfg.train
        try:
            self.batcher = batchers_mod.make_batcher(self.corpus.train_ids, train_cfg, dist_info, self.corpus.lut)
            self.eval_ids = self.corpus.val_ids[:train_cfg.eval_chars or None]  # train.eval_chars caps the pass
            self.n_eval = batchers_mod.eval_stream_count(len(self.eval_ids), train_cfg.batch_size,
                                                     train_cfg.seq_len, dist_info.world_size)
            if resume is not None:
                checkpoint.check_resume(resume, cfg, self.corpus)
            check_fits_in_memory(cfg, len(self.corpus.vocab), self.device, dist_info.world_size)
            self.graphed = self.check_graphs(cfg)
            self.out_dir = prepare_out_dir(cfg, out["explicit"], out["force"],
                                           out["resume_dir"] if resume is not None else None, dist_info)
        except BaseException:
            self.corpus.discard()
            raise
        self.corpus.keep()
        return cfg

    def check_graphs(self, cfg):
        """Whether the training step runs as one CUDA graph (train.cuda_graphs, graphs.py). on refuses
        a run that cannot be captured; auto runs it eagerly and says why once."""
        mode = cfg.train.cuda_graphs
        why = graphs.refusal(cfg, self.device, self.dist.world_size) if mode != "off" else None
        if mode == "on" and why:
            raise UserError(f"train.cuda_graphs=on: {why}; use train.cuda_graphs=auto to fall back to eager "
                            f"steps, or off")
        self.notices = [f"train.cuda_graphs=auto: eager training steps, since {why}"] if why else []
        return mode != "off" and why is None

    def config_text(self):
        """config.yaml: the resolved config, and in a comment what a built-in corpus was built from."""
        text = config_mod.dump_yaml(self.cfg)
        info = self.corpus.source_info
        return text + (f"# data.path: {code_corpus.describe(info)}\n" if info else "")

    def build(self, init):
        """The model (from init's weights when fine-tuning), its optimizer and schedule, a fresh RunState."""
        train_cfg = self.cfg.train
        seed_everything(train_cfg.seed + self.dist.rank)
        self.model = build_model(self.cfg.model, len(self.corpus.vocab), getattr(torch, train_cfg.dtype))
        if init is not None:
            checkpoint.transplant(self.model, init, self.corpus.vocab)
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
                while state.step < train_cfg.max_steps and not out_of_time:
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
        except RunFailed as e:
            self.log.close_quietly()
            raise type(e)(f"{e}; {self.last_good()}") from None
        except BaseException:
            self.log.close_quietly()
            raise
        finally:
            self.ddp_model = self.model  # the DDP wrapper holds the process group: see cli.finish_distributed
        if train_cfg.dynamic_eval and self.dist.is_main:
            self.evaluate_dynamic()
        self.log_char_embedding()
        self.log.hparams(self.cfg, state.last_val)
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
        """One update. A NaN/Inf loss or gradient norm skips it: parameters are left untouched.
        Returns (loss, norm, new state, finite), or None from a graph, which keeps its own books."""
        if self.graphed:
            return self.graph_step(x, y)
        train_cfg = self.cfg.train
        self.opt.zero_grad(set_to_none=True)
        loss, h_new = self.compute_loss(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, train_cfg.grad_clip if train_cfg.grad_clip > 0 else float("inf"))
        # The one host sync per step: whether to skip the update must be known before step().
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        if finite:
            self.opt.step()
        return loss, norm, h_new, finite

    def graph_step(self, x, y):
        if self.graph is None:
            self.graph = graphs.WholeStepGraph(self.model, self.opt, self.params, self.cfg.train.grad_clip, x.shape,
                                               SMOOTHING, self.state.smooth_loss, self.amp,
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
        loss, norm, h_new, finite = outcome
        state = self.state
        if finite:
            # Keep the values so the next window starts where this one ended, but cut the graph:
            # otherwise backward would run through every earlier window and memory would grow
            # with the length of the run.
            state.hidden = map_state(torch.Tensor.detach, h_new)
            lval = loss.detach()
            state.smooth_loss = state.smooth_loss * SMOOTHING + (1 - SMOOTHING) * lval
            state.log_acc["loss"] += lval
            state.log_acc["norm"] += norm.detach()
            state.log_acc["n"] += 1
            state.consecutive_bad = 0
            return
        state.hidden = None  # a NaN state would poison every later step
        state.nonfinite_total += 1
        state.consecutive_bad += 1
        self.log.nonfinite(state.step, state.nonfinite_total)
        if state.consecutive_bad >= self.cfg.train.max_nonfinite:
            self.diverged(state.consecutive_bad)

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
        self.log.train_scalars(state.step, mean_loss, state.smooth_loss, self.opt.param_groups[0]["lr"], mean_norm,
                               meter.rate())
        state.log_acc = {"loss": 0.0, "norm": 0.0, "n": 0}
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
        seq_len = self.cfg.train.seq_len
        windows = batchers_mod.eval_windows(self.eval_ids, self.n_eval, seq_len, self.dist.rank,
                                        self.dist.world_size, self.corpus.lut)
        windows = self.log.eval_progress(windows, batchers_mod.eval_window_count(len(self.eval_ids), self.n_eval, seq_len))
        total, count, hv = torch.zeros((), dtype=torch.float64, device=self.device), 0, None
        with evaluating(self.model):
            for xv, yv in windows:
                with self.amp:
                    logits, hv = self.model(self.to_device(xv), hv)
                total += cross_entropy(logits, self.to_device(yv), reduction="sum").double()
                count += yv.numel()
        total, count = distributed.sum_total_and_count(total, count, self.dist)
        return (total / count).item()

    def evaluate_dynamic(self):
        """train.dynamic_eval: the validation split scored by dynamic evaluation, as its own figure."""
        settings, corpus = dynamic.Settings(), self.corpus
        stats = dynamic.gradient_stats(self.model, corpus.train_ids, settings, corpus.lut)
        total, count = dynamic.dynamic_score(self.model, corpus.val_ids, stats, settings, corpus.lut)
        self.state.val_dynamic = total / count
        self.log.dynamic(self.state.step, self.state.val_dynamic, self.state.last_val)

    def evaluate_and_checkpoint(self):
        self.collect_graph()  # the checkpoint holds the books up to this step
        state = self.state
        tick = time.perf_counter()
        state.last_val = val = self.evaluate()
        state.eval_seconds += time.perf_counter() - tick
        state.val_log.append((state.step, val))
        state.last_eval_step = state.step
        hidden = self.gathered_state()  # a collective: every rank takes part
        improved = val < state.best_val
        state.best_val = min(state.best_val, val)
        self.log.validation(state.step, val, state.best_val, improved, self.model, state.train_seconds)
        if self.dist.is_main:
            self.log.hidden_heatmap(state.step, heatmap_image(self.model, self.to_device(self.heatmap_ids)))
        self.save_checkpoint("ckpt.pt", hidden)
        self.keep_step_checkpoint()
        if improved:
            self.save_checkpoint("best.pt", hidden)  # only ever replaced by a better model
        self.log.flush()
        self.log.validation_line(state.step, val, state.best_val, improved)

    def log_char_embedding(self):
        """For TensorBoard's projector: each character's column of layer 0's W_xh (all G gates)."""
        if self.dist.is_main:
            emb = self.model.cells[0].W_xh.detach().t().float().cpu()  # (V, G·H)
            self.log.char_embedding(self.state.step, emb, [char_label(c) for c in self.corpus.vocab.chars])

    # ------------------------------------------------------------ checkpoints

    def gathered_state(self):
        """Every rank's carried state, concatenated along the streams, on the CPU (a collective)."""
        return map_state(lambda h: distributed.gather_state(h, self.dist), self.state.hidden)

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
            "data_source": self.corpus.source_info,  # what python-stdlib was built from; None for a file
            "world_size": self.dist.world_size,
            **self.state.to_checkpoint(),
        }

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
            checkpoint.link_atomic(self.out_dir / "ckpt.pt", name)
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
        return {"out_dir": str(self.out_dir), "step": state.step, "val_loss": state.last_val,
                "val_dynamic": state.val_dynamic, "best_val": state.best_val, "train_log": state.train_log,
                "val_log": state.val_log, "nonfinite_steps": state.nonfinite_total,
                "train_seconds": state.train_seconds, "eval_seconds": state.eval_seconds,
                "evaluations": len(state.val_log), "eval_chars": len(self.eval_ids)}


def train(cfg, *, out_dir_explicit=False, force=False, resume=None, resume_dir=None,
          dist_info=DistInfo(), progress=True, log=print):
    """Train per cfg. Returns a summary dict. resume: a loaded checkpoint dict to continue from."""
    return Trainer(cfg, out_dir_explicit=out_dir_explicit, force=force, resume=resume, resume_dir=resume_dir,
                   dist_info=dist_info, progress=progress, log=log).run()
