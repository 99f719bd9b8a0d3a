"""Checkpoints: plain dicts of tensors and builtins, written atomically, loaded with weights_only=True;
a model built from one (for sampling, scoring and looking inside), and the weights a fine-tuning
run starts from."""
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..data import code_corpus
from . import config as config_mod
from ..data.corpus import load_corpus
from ..data.vocab import vocab_from_checkpoint
from ..errors import UserError, one_line
from ..files import TEMP_SUFFIX, check_regular, discard, write_atomic
from ..model.cells import CharRNN
from .runtime import resolve_device

FORMAT = "charrnn_torch/1"


def save(obj, path):
    """torch.save, atomically (files.write_atomic)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getbuffer())


def link_atomic(src, dest):
    """dest becomes another name for src's current content, atomically: a hard link (no copy, and
    src's later replacement by os.replace leaves it alone), or a copy where links are refused."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError:
        discard(tmp)
        write_atomic(dest, src.read_bytes())


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
    model.to(device=device).eval()
    return model, vocab_from_checkpoint(ckpt), ckpt


def load_init(cfg):
    """The checkpoint a fine-tuning run (train.init_from) starts from, checked against the config:
    the same architecture (cell, layers, hidden size) and the same kind of vocabulary."""
    path = resolve(cfg.train.init_from)
    ckpt = load(path)
    args, model_cfg = ckpt.get("model_args", {}), cfg.model
    theirs = (args.get("cell", "rnn"), args.get("num_layers"), args.get("hidden_size"))
    if theirs != (model_cfg.cell, model_cfg.num_layers, model_cfg.hidden_size):
        raise UserError(f"--init-from {path}: its model is {theirs[0]} {theirs[1]}x{theirs[2]}, the config asks for "
                        f"{model_cfg.cell} {model_cfg.num_layers}x{model_cfg.hidden_size}; fine-tuning keeps the "
                        f"architecture")
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


def check_resume(ckpt, cfg, corpus):
    """What may change on resume: config.check_resume's rule, and the same corpus and vocabulary."""
    config_mod.check_resume(ckpt["config"], cfg)
    code_corpus.check_same(ckpt.get("data_source"), corpus.source_info, "resume")
    vocab = corpus.vocab
    if ckpt["vocab"] != vocab.chars:
        raise UserError(f"cannot resume: the vocabulary of {cfg.data.path} ({len(vocab)} characters) differs "
                        f"from the checkpoint's ({len(ckpt['vocab'])} characters)")


def run_corpus(ckpt, purpose):
    """The corpus the checkpoint's run trained on (data.Corpus, in the checkpoint's vocabulary), for
    what needs it again: purpose finishes the sentence of the error when it cannot be had."""
    try:
        data_cfg = config_mod.build_config(ckpt["config"]).data
    except (KeyError, TypeError, UserError):
        raise UserError(f"the checkpoint records no usable data config, needed to {purpose}") from None
    if not code_corpus.is_builtin(data_cfg.path) and not os.path.exists(data_cfg.path):
        raise UserError(f"data file not found: {data_cfg.path} (the run's data.path), needed to {purpose}")
    corpus = load_corpus(data_cfg, progress=False, base_vocab=ckpt["vocab"], log=lambda *a: None)
    code_corpus.check_same(ckpt.get("data_source"), corpus.source_info, purpose)
    return corpus
