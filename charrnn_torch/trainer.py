"""The training loop: stateful truncated BPTT, evaluation, TensorBoard, checkpoints, resume.

``train(cfg, ...)`` is the whole run. The CLI (``cli.py``) parses arguments
and calls it; nothing here reads sys.argv or the environment.
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
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint, config as config_mod, data as data_mod
from .errors import UserError
from .model import CharRNN
from .sample import default_prime, generate

SMOOTHING = 0.999  # the tutorial's smooth_loss factor


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, signum, step, out_dir):
        super().__init__(f"interrupted at step {step}")
        self.signum, self.step, self.out_dir = signum, step, out_dir

    @property
    def exit_code(self):
        return 128 + self.signum


class TrainingDiverged(Exception):
    """Too many consecutive non-finite steps."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0


@dataclass
class DebugHooks:
    """Test-only knobs, all off by default."""
    interrupt_at_step: int = 0  # deliver SIGINT to ourselves after this step
    pause_mid_write: float = 0.0  # seconds to pause in the middle of each checkpoint write
    nonfinite_steps: set = field(default_factory=set)  # steps whose loss is forced to NaN


# ---------------------------------------------------------------- setup helpers

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


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
              "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


def make_optimizer(params, t):
    return fast_optimizer(OPTIMIZERS[t.optimizer], params, lr=t.lr, weight_decay=t.weight_decay,
                          **({"momentum": 0.9} if t.optimizer == "sgd" else {}))


# Optimizers whose fused kernel torch has for CPU only. Asked for on CUDA, they fail at the
# first step(), not when built, so the fallback below would never see the error.
CPU_ONLY_FUSED = (torch.optim.Adagrad,)


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


# ---------------------------------------------------------------- data

class Corpus:
    def __init__(self, cfg, progress=True):
        path = data_mod.ensure_corpus(cfg.data.path, progress=progress)
        text = data_mod.read_corpus(path)
        self.vocab = data_mod.Vocab.from_text(text)
        ids = self.vocab.encode(text)
        self.char_counts = torch.bincount(ids, minlength=len(self.vocab)).tolist()
        self.train_ids, self.val_ids = data_mod.split(ids, cfg.data.val_fraction)
        self.path = path


def eval_stream_count(n_val, batch_size, seq_len, world_size):
    """As many validation streams as the batch, fewer when the split is short; a multiple of world_size."""
    streams = min(batch_size, max(1, n_val // (seq_len + 1)))
    streams = max(world_size, streams // world_size * world_size)
    if n_val // streams < 2:
        raise UserError(f"validation split is too short: {n_val} characters "
                        f"(data.val_fraction) for {streams} stream(s); use a longer corpus or a larger "
                        f"data.val_fraction")
    return streams


# ---------------------------------------------------------------- the run

def _tb_hparams(writer, cfg, metrics):
    from torch.utils.tensorboard.summary import hparams

    flat = {k: v for k, v in config_mod.flatten(config_mod.to_dict(cfg)).items()}
    # Written into this run's own event file (not add_hparams' subdirectory), so
    # the HPARAMS tab links the config to this run's loss/val and bpc/val scalars.
    exp, ssi, sei = hparams(flat, metrics)
    fw = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        fw.add_summary(summary)


def cross_entropy(logits, targets, reduction="mean"):
    """Mean (or summed) nats per character of logits (B, T, V) against targets (B, T);
    bf16 logits from autocast are scored in fp32."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if logits.dim() == 3 and not logits.is_contiguous() and logits.transpose(0, 1).is_contiguous():
        # impl=fused returns a time-major buffer seen as (B, T, V). Scoring it time-major (the
        # same terms, summed in another order) reads it in place; flattening it batch-major
        # would copy it forward and copy its gradient back.
        logits, targets = logits.transpose(0, 1), targets.t()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def build_model(model_cfg, vocab_size, dtype=torch.float32):
    return CharRNN(vocab_size, model_cfg.hidden_size, model_cfg.num_layers, model_cfg.dropout,
                   impl=model_cfg.impl).to(dtype)


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_resume_compatible(ckpt, cfg, vocab):
    old = config_mod.from_dict(ckpt["config"])
    for key in ("hidden_size", "num_layers"):
        if getattr(old.model, key) != getattr(cfg.model, key):
            raise UserError(f"cannot resume with model.{key}={getattr(cfg.model, key)}: the checkpoint has "
                            f"model.{key}={getattr(old.model, key)}")
    if ckpt["vocab"] != vocab.chars:
        raise UserError(f"cannot resume: the vocabulary of {cfg.data.path} ({len(vocab)} characters) differs "
                        f"from the checkpoint's ({len(ckpt['vocab'])} characters)")
    if cfg.train.dtype != old.train.dtype:
        raise UserError(f"cannot resume with train.dtype={cfg.train.dtype}: the checkpoint is {old.train.dtype}")


def train(cfg, *, out_dir_explicit=False, force=False, resume=None, resume_dir=None,
          dist_info=DistInfo(), progress=True, hooks=DebugHooks(), log=print):
    """Train per cfg. Returns a summary dict. resume: a loaded checkpoint dict to continue from."""
    t = cfg.train
    device = resolve_device(cfg.device, dist_info)
    world = dist_info.world_size
    if t.batch_size % world:
        raise UserError(f"train.batch_size={t.batch_size} must be divisible by the number of processes ({world})")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    if t.threads:
        torch.set_num_threads(t.threads)

    corpus = Corpus(cfg, progress=progress and dist_info.is_main)
    vocab = corpus.vocab
    V = len(vocab)
    if t.stateful:
        batcher = data_mod.StreamBatcher(corpus.train_ids, t.batch_size, t.seq_len, dist_info.rank, world)
    else:
        batcher = data_mod.RandomWindowBatcher(corpus.train_ids, t.batch_size, t.seq_len, t.seed,
                                               dist_info.rank, world)
    n_eval = eval_stream_count(len(corpus.val_ids), t.batch_size, t.seq_len, world)
    if resume is not None:
        check_resume_compatible(resume, cfg, vocab)

    # All checks passed: only now touch the file system.
    if dist_info.is_main:
        out_dir = Path(resume_dir) if resume is not None else choose_out_dir(cfg.out_dir, out_dir_explicit, force)
        check_writable(out_dir)
    else:
        out_dir = Path(resume_dir or cfg.out_dir)
    if world > 1:
        holder = [str(out_dir)]
        dist.broadcast_object_list(holder, src=0)  # the numbered sibling rank 0 chose
        out_dir = Path(holder[0])
    # The config (and every checkpoint) records where the run really lives, numbered sibling or not.
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    t = cfg.train
    if dist_info.is_main:
        (out_dir / "config.yaml").write_text(config_mod.dump_yaml(cfg))

    seed_everything(t.seed + dist_info.rank)
    dtype = DTYPES[t.dtype]
    raw_model = build_model(cfg.model, V, dtype).to(device)
    model = raw_model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    params = list(raw_model.parameters())
    opt = make_optimizer(params, t)
    clock = {"train_s": 0.0}  # seconds spent training (not evaluating or sampling), across resumes
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t, clock["train_s"]))

    step = 0
    best_val = float("inf")
    last_val = None
    val_log = []
    smooth = math.log(V)  # the tutorial starts smooth_loss at the loss of a uniform guess
    acc = {"loss": 0.0, "norm": 0.0, "n": 0}
    nonfinite_total = 0
    h_global = None
    if resume is not None:
        raw_model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        step = resume["step"]
        best_val = resume["best_val"]
        last_val = resume.get("last_val")
        smooth = resume["smooth_loss"]
        acc = dict(resume["log_acc"])
        nonfinite_total = resume["nonfinite_total"]
        clock["train_s"] = resume.get("train_seconds", 0.0)  # older checkpoints have none
        batcher.load_state_dict(resume["data"])
        h_global = resume["hidden"]
        if world == resume.get("world_size", 1):
            set_rng_state(resume["rng"], device)
        else:
            # Re-split streams: data order and hidden state carry over exactly; the
            # per-rank dropout streams cannot, so they are reseeded from the step.
            seed_everything(t.seed + 1000003 * step + dist_info.rank)
        # Overrides on resume (train.lr, weight_decay, max_steps, the schedule) take effect from
        # here: the saved optimizer and scheduler would otherwise bring back the old values.
        sched.base_lrs = [t.lr for _ in opt.param_groups]
        for g in opt.param_groups:
            g["initial_lr"], g["weight_decay"] = t.lr, t.weight_decay
            g["lr"] = t.lr * lr_factor(step, t, clock["train_s"])

    per_rank = t.batch_size // world
    h = None
    if h_global is not None and t.stateful:
        h = h_global[:, dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank].to(device, dtype)

    writer = None
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed run logged after its last checkpoint,
        # so the resumed steps follow on with no duplicates.
        writer = SummaryWriter(str(out_dir), purge_step=step + 1 if resume is not None else None)
        writer.add_text("config", "```yaml\n" + config_mod.dump_yaml(cfg) + "```", step)

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (t.amp == "bf16" and device.type == "cuda") \
        else contextlib.nullcontext()
    pin = device.type == "cuda"

    def to_device(x):
        return (x.pin_memory() if pin else x).to(device, non_blocking=pin)

    @torch.no_grad()
    def evaluate():
        raw_model.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        hv = None
        for xv, yv in data_mod.eval_windows(corpus.val_ids, n_eval, t.seq_len, dist_info.rank, world):
            with amp:
                logits, hv = raw_model(to_device(xv), hv)
            total += cross_entropy(logits, to_device(yv), reduction="sum").double()
            count += yv.numel()
        raw_model.train()
        if world > 1:
            both = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=device)])
            dist.all_reduce(both)
            total, count = both[0], both[1].item()
        return (total / count).item()

    def gather_hidden():
        if h is None:
            return None
        if world == 1:
            return h.detach().cpu()
        parts = [torch.empty_like(h) for _ in range(world)]
        dist.all_gather(parts, h.detach().contiguous())
        return torch.cat(parts, dim=1).cpu()

    def save_checkpoint(name, hidden):
        state = {
            "format": checkpoint.FORMAT,
            "model": raw_model.state_dict(),
            "model_args": raw_model.model_args(),
            "vocab": list(vocab.chars),
            "char_counts": corpus.char_counts,  # for sampling's default prime when there is no newline
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "data": batcher.state_dict(),
            "hidden": hidden,
            "rng": rng_state(device),
            "config": config_mod.to_dict(cfg),
            "best_val": best_val,
            "last_val": last_val,
            "smooth_loss": smooth,
            "log_acc": dict(acc),
            "nonfinite_total": nonfinite_total,
            "train_seconds": clock["train_s"],
            "world_size": world,
        }
        checkpoint.save(state, out_dir / name, pause_mid_write=hooks.pause_mid_write)

    def log_histograms():
        for name, p in raw_model.named_parameters():
            writer.add_histogram(f"params/{name}", p.detach().float().cpu(), step)
            if p.grad is not None and torch.isfinite(p.grad).all():
                writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def eval_and_checkpoint():
        nonlocal best_val, last_val
        val = evaluate()
        last_val = val
        val_log.append((step, val))
        hidden = gather_hidden()
        if not dist_info.is_main:
            return val
        improved = val < best_val
        best_val = min(best_val, val)
        writer.add_scalar("loss/val", val, step)
        writer.add_scalar("bpc/val", val / math.log(2), step)
        log_histograms()
        save_checkpoint("ckpt.pt", hidden)
        if improved:
            save_checkpoint("best.pt", hidden)  # only ever replaced by a better model
        writer.flush()
        log(f"step {step:6d} | val loss {val:.4f} | val bpc {val / math.log(2):.4f} | best {best_val:.4f}"
            f"{' (saved best.pt)' if improved else ''}")
        return val

    if dist_info.is_main:
        for stale in out_dir.glob(".*.pt.*.tmp"):
            stale.unlink()  # left by a process killed mid-write; the real checkpoint is intact

    from tqdm import tqdm
    bar = tqdm(total=t.max_steps, initial=step, disable=not (progress and dist_info.is_main),
               dynamic_ncols=True, desc="train")
    logged = []
    consecutive_bad = 0
    val = None
    last_ckpt_step = None

    def stop_requested(stop):
        if world == 1:
            return stop["signum"] is not None
        # Ranks can see a signal at different steps; agree on it, or one rank would
        # wait forever in a collective that the others have left.
        flag = torch.tensor([stop["signum"] or 0], device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and stop["signum"] is None:
            stop["signum"] = int(flag.item())
        return bool(flag.item())

    def budget_spent():
        if world > 1 and t.max_minutes:
            # Every rank must use the same clock: it sets the lr, and when to stop.
            both = torch.tensor([clock["train_s"]], dtype=torch.float64,
                                device=device if device.type == "cuda" else "cpu")
            dist.all_reduce(both, op=dist.ReduceOp.MAX)
            clock["train_s"] = both.item()
        return bool(t.max_minutes) and clock["train_s"] >= 60 * t.max_minutes

    out_of_time = budget_spent()  # a resumed run whose budget is already spent trains no more
    chars_since, t0 = 0, time.perf_counter()
    raw_model.train()
    try:
        with stop_on_signals() as stop:
            if dist_info.is_main:  # announced only once Ctrl-C is ours to handle
                n_params = sum(p.numel() for p in params)
                budget = f" or {t.max_minutes:g} minutes of training" if t.max_minutes else ""
                log(f"{'resuming' if resume is not None else 'training'} {n_params:,} parameters on {device} "
                    f"from step {step} to {t.max_steps}{budget}; run directory {out_dir}")
            while step < t.max_steps and not out_of_time:
                t_step = time.perf_counter()
                x, y, reset = batcher.next()
                if reset or not t.stateful:
                    h = None  # streams wrapped (or random windows): start from h0 = 0
                x, y = to_device(x), to_device(y)

                opt.zero_grad(set_to_none=True)
                with amp:
                    logits, h_new = model(x, h)
                    loss = cross_entropy(logits, y)
                if step + 1 in hooks.nonfinite_steps:
                    loss = loss * float("nan")
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
                # The one host sync per step: whether to skip the update must be known before step().
                finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(norm))
                if finite:
                    opt.step()
                    consecutive_bad = 0
                clock["train_s"] += time.perf_counter() - t_step
                out_of_time = budget_spent()
                sched.step()
                step += 1
                chars_since += x.numel() * world
                bar.update(1)

                if finite:
                    # Keep the values so the next window starts where this one ended, but
                    # cut the graph: otherwise backward would run through every earlier
                    # window and memory would grow with the length of the run.
                    h = h_new.detach()
                    lval = loss.detach()
                    smooth = smooth * SMOOTHING + (1 - SMOOTHING) * lval
                    acc["loss"] += lval
                    acc["norm"] += norm.detach()
                    acc["n"] += 1
                else:
                    h = None  # a NaN state would poison every later step
                    nonfinite_total += 1
                    consecutive_bad += 1
                    if writer:
                        writer.add_scalar("train/nonfinite_steps", nonfinite_total, step)
                    if consecutive_bad >= t.max_nonfinite:
                        raise TrainingDiverged(
                            f"{consecutive_bad} consecutive steps with a non-finite loss or gradient norm "
                            f"(up to step {step}); parameters were not updated on those steps; the last good "
                            f"checkpoint is {out_dir / 'ckpt.pt'}; try a lower train.lr or train.grad_clip")

                if step % t.log_interval == 0 and acc["n"]:
                    # .item() only here: reading the loss every step would sync a GPU every step.
                    mean_loss = float(acc["loss"]) / acc["n"]
                    mean_norm = float(acc["norm"]) / acc["n"]
                    smooth = float(smooth)
                    rate = chars_since / max(time.perf_counter() - t0, 1e-9)
                    logged.append((step, mean_loss))
                    if writer:
                        writer.add_scalar("loss/train", mean_loss, step)
                        writer.add_scalar("loss/train_smooth", smooth, step)
                        writer.add_scalar("bpc/train", mean_loss / math.log(2), step)
                        writer.add_scalar("lr", opt.param_groups[0]["lr"], step)
                        writer.add_scalar("grad_norm", mean_norm, step)
                        writer.add_scalar("throughput/chars_per_sec", rate, step)
                    bar.set_postfix(loss=f"{mean_loss:.3f}", chars_s=f"{rate:,.0f}")
                    acc = {"loss": 0.0, "norm": 0.0, "n": 0}
                    chars_since, t0 = 0, time.perf_counter()

                tic = time.perf_counter()
                if t.sample_interval and step % t.sample_interval == 0 and writer:
                    g = torch.Generator().manual_seed(t.seed + step)  # its own RNG: training's stays untouched
                    text = generate(raw_model, vocab, default_prime(vocab, corpus.char_counts), t.sample_length,
                                    temperature=0.8, generator=g)
                    writer.add_text("samples", "```\n" + text + "\n```", step)
                if step % t.eval_interval == 0 or step == t.max_steps or out_of_time:
                    val = eval_and_checkpoint()
                    last_ckpt_step = step
                t0 += time.perf_counter() - tic  # keep sampling and evaluation out of the throughput

                if hooks.interrupt_at_step and step == hooks.interrupt_at_step:
                    os.kill(os.getpid(), signal.SIGINT)
                if stop_requested(stop):
                    if last_ckpt_step != step:
                        hidden = gather_hidden()  # a collective: every rank takes part
                        if dist_info.is_main:
                            save_checkpoint("ckpt.pt", hidden)
                    raise Interrupted(stop["signum"] or signal.SIGTERM, step, out_dir)
            if val is None:  # resumed at max_steps: nothing to train, still report
                val = eval_and_checkpoint()
    finally:
        bar.close()
        if writer:
            writer.flush()

    if writer:
        _tb_hparams(writer, cfg, {"loss/val": val, "bpc/val": val / math.log(2)})
        writer.close()
    return {"out_dir": str(out_dir), "step": step, "val_loss": val, "best_val": best_val,
            "train_log": logged, "val_log": val_log, "nonfinite_steps": nonfinite_total,
            "train_seconds": clock["train_s"]}
