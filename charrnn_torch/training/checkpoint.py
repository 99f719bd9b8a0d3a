"""Checkpoints: the file format (plain dicts of tensors and builtins, written atomically, loaded with
weights_only=True), finding one in a run directory, and the model built from one (for sampling,
scoring and looking inside)."""
import io
import pickle
import zipfile
from pathlib import Path

import torch

from ..data.vocab import vocab_from_checkpoint
from . import config as config_mod
from ..errors import UserError, one_line
from ..files import check_regular, write_atomic
from ..model.cells import IMPLS, CharRNN
from .runtime import resolve_device

FORMAT = "charrnn_torch/1"


def run_dict(model, corpus, config, progress, world_size):
    """A run's checkpoint: the model and how to build it again, its vocabulary, the config (a plain
    dict), what a built-in corpus was built from, and progress: what resuming needs (optimizer,
    scheduler, data position, carried state, RNG, and the run's own books)."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_args": model.model_args(),
        "vocab": list(corpus.vocab.chars),
        "vocab_mode": corpus.vocab.mode,
        "tokenizer": corpus.vocab.tokenizer_json,  # a BPE's merges (JSON text); None for the others
        "char_counts": corpus.char_counts,  # for sampling's default prime when there is no newline
        "config": config,
        "data_source": corpus.source_info,  # what a set of files was joined from; None for one file
        "world_size": world_size,
        **progress,
    }


def save(obj, path):
    """torch.save, atomically (files.write_atomic)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getbuffer())


def step_checkpoints(run_dir):
    """The run's step-stamped checkpoints ckpt-<step>.pt, as (step, path), oldest first."""
    found = []
    for p in Path(run_dir).glob("ckpt-*.pt"):
        step = p.name[len("ckpt-"):-len(".pt")]
        if step.isdigit():
            found.append((int(step), p))
    return sorted(found)


def kept_files(path):
    """(path, what it is) for the checkpoint file path and every checkpoint of its run (best.pt,
    ckpt.pt and ckpt-<step>.pt beside it): the files no command's output may replace."""
    path, run = Path(path), Path(path).parent
    beside = [run / name for name in ("best.pt", "ckpt.pt")] + [p for _, p in step_checkpoints(run)]
    return [(path, "the checkpoint this command reads")] + [
        (p, f"a checkpoint of the run in {run}") for p in beside if p.is_file() and p != path]


def resolve(path, names=("best.pt", "ckpt.pt"), step=None):
    """A checkpoint file, or a run directory in which the first of names that exists is used
    (with step: that step's ckpt-<step>.pt, kept by train.keep_checkpoints)."""
    path = Path(path)
    if step is not None:
        if not path.is_dir():
            raise UserError(f"--step needs a run directory, and {path} is not one")
        steps = step_checkpoints(path)
        for s, p in steps:
            if s == step:
                return p
        have = ", ".join(str(s) for s, _ in steps) or "none (train with train.keep_checkpoints=N to keep them)"
        raise UserError(f"no checkpoint of step {step} in {path}; steps kept: {have}")
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise UserError(f"no checkpoint in {path}: expected {' or '.join(names)}")
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    return path


def load(path, map_location="cpu"):
    """Load a checkpoint as plain data. Anything else (a pickled object, a truncated
    or foreign file) is refused with a UserError: weights_only=True never runs code."""
    path = Path(path)
    check_regular(path, "checkpoint")
    if path.is_file() and not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; anything else is a partial write or a foreign file.
        raise UserError(f"checkpoint {path} is truncated or corrupt (not a torch.save archive)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint path is a directory: {path}") from None
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "GLOBAL" in ln),
                   "it would have to unpickle objects")
        raise UserError(f"refusing to load checkpoint {path}: it holds more than plain tensors "
                        f"and builtins ({why[:200]})") from None
    except Exception as e:  # noqa: BLE001 - torch.load fails on junk in many ways, all meaning "corrupt"
        raise UserError(f"checkpoint {path} is truncated or corrupt ({one_line(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a charrnn_torch checkpoint")
    check_fits(ckpt, path)
    return ckpt


ARCHITECTURE = ("cell", "num_layers", "hidden_size")  # the model config keys that decide the tensors' shapes


def check_fits(ckpt, path):
    """The one check of a checkpoint's parts against each other, when it is opened and before any
    command uses it: its tensors have the shapes its model_args give, its config (what a resumed run
    builds) describes the same architecture, its vocabulary is as large as the model's output, and
    every weight is finite. Whatever does not fit is refused in one line, naming what."""
    problem = _shapes_problem(ckpt) or _config_problem(ckpt) or _vocab_problem(ckpt) or _weights_problem(ckpt)
    if problem:
        raise UserError(f"checkpoint {path} does not fit together: {problem}")


def _shapes_problem(ckpt):
    args, tensors = ckpt.get("model_args"), ckpt.get("model")
    if not isinstance(args, dict) or not isinstance(tensors, dict):
        return "it holds no model_args or no model weights"
    try:
        with torch.device("meta"):  # shapes only: no memory, no kernels built
            want = CharRNN(**dict(args, impl="loop")).state_dict()
    except (TypeError, ValueError) as e:
        return f"its model_args do not describe a CharRNN ({one_line(e)[:200]})"
    described = f"{args.get('cell', 'rnn')} {args.get('num_layers')}x{args.get('hidden_size')}, " \
                f"vocabulary of {args.get('vocab_size')}"
    for name in sorted(set(want) | set(tensors)):
        have = tensors.get(name)
        if not torch.is_tensor(have) or name not in want:
            return f"its weights {'lack' if name in want else 'have an unknown tensor'} {name} for the model its " \
                   f"model_args describe ({described})"
        if tuple(have.shape) != tuple(want[name].shape):
            return f"its tensor {name} is {tuple(have.shape)}, but the model its model_args describe ({described}) " \
                   f"has it {tuple(want[name].shape)}"
    return None


def _config_problem(ckpt):
    model_cfg = (ckpt.get("config") or {}).get("model") if isinstance(ckpt.get("config"), dict) else None
    if not isinstance(model_cfg, dict):
        return None  # no config recorded (not a training checkpoint): nothing will be built from one
    defaults = config_mod.ModelConfig()
    for key in ARCHITECTURE:
        said = model_cfg.get(key, getattr(defaults, key))
        if said != ckpt["model_args"].get(key, getattr(defaults, key)):
            return f"its config has model.{key}={said}, but its weights are for {key} {ckpt['model_args'].get(key)}"
    return None


def _vocab_problem(ckpt):
    vocab, mode, size = ckpt.get("vocab"), ckpt.get("vocab_mode", "chars"), ckpt["model_args"].get("vocab_size")
    if mode not in config_mod.VOCABS:
        return f"its vocab_mode is {mode!r}, not one of {', '.join(config_mod.VOCABS)}"
    single = mode in ("chars", "bytes")  # a symbol is one character; words and bpe tokens are strings
    what = "characters" if single else "tokens"
    if not isinstance(vocab, list) or not all(isinstance(c, str) and (len(c) == 1 or not single) for c in vocab):
        return f"its vocabulary is not a list of {what}"
    if len(set(vocab)) != len(vocab):
        return f"its vocabulary lists a {what[:-1]} twice"
    if len(vocab_from_checkpoint(ckpt)) != size or len(vocab) != size:
        return f"its vocabulary has {len(vocab)} {what}, but its model predicts {size}"
    return None


def _weights_problem(ckpt):
    bad = [name for name, t in ckpt["model"].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        return (f"its weights hold NaN or Inf ({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); use another "
                f"checkpoint of the run (--step N, for those kept with train.keep_checkpoints)")
    return None


def load_model(path, device_name="cpu", step=None, impl=None):
    """(model in eval mode, vocab, checkpoint dict) from a checkpoint file or run directory (step:
    its ckpt-<step>.pt); impl (one of cells.IMPLS) runs it as another impl than it was trained with:
    the same weights."""
    if impl is not None and impl not in IMPLS:
        raise UserError(f"impl={impl!r}: expected one of {', '.join(IMPLS)}")
    ckpt = load(resolve(path, step=step))
    device = resolve_device(device_name, mps=False)  # sampling and scoring compute in float64
    try:
        # In the checkpoint's dtype before loading: a float64 model loaded into float32 would be rounded.
        model = CharRNN(**dict(ckpt["model_args"], **({"impl": impl} if impl else {}))).to(next(iter(ckpt["model"].values())).dtype)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, ValueError, StopIteration, AttributeError) as e:
        raise UserError(f"checkpoint {path} does not hold a CharRNN ({one_line(e)[:200]})") from None
    model.build_kernels().to(device=device).eval()
    return model, vocab_from_checkpoint(ckpt), ckpt


def refuse_bidirectional(model, path, what):
    """A bidirectional (cloze) model cannot do what needs a left-to-right model: one line naming fill."""
    if model.bidirectional:
        raise UserError(f"{path} is a bidirectional model, which predicts each character from both sides of it, so "
                        f"it cannot {what} (that needs a left-to-right model); use charrnn fill to repair text")
