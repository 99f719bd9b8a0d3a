"""Checkpoints: the file format (plain dicts of tensors and builtins, written atomically, loaded with
weights_only=True), finding one in a run directory, and the model built from one (for sampling,
scoring and looking inside)."""
import io
import pickle
import zipfile
from pathlib import Path

import torch

from ..data.vocab import vocab_from_checkpoint
from ..errors import UserError, one_line
from ..files import check_regular, write_atomic
from ..model.cells import CharRNN
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
        "char_counts": corpus.char_counts,  # for sampling's default prime when there is no newline
        "config": config,
        "data_source": corpus.source_info,  # what python-stdlib was built from; None for a file
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
    return ckpt


def load_model(path, device_name="cpu", step=None):
    """(model in eval mode, vocab, checkpoint dict) from a checkpoint file or run directory (step:
    its ckpt-<step>.pt)."""
    ckpt = load(resolve(path, step=step))
    device = resolve_device(device_name)
    try:
        # In the checkpoint's dtype before loading: a float64 model loaded into float32 would be rounded.
        model = CharRNN(**ckpt["model_args"]).to(next(iter(ckpt["model"].values())).dtype)
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
