"""Checkpoints: plain dicts of tensors and builtins, written atomically, loaded with weights_only=True."""
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import UserError

FORMAT = "charrnn_torch/1"


def save(obj, path):
    """torch.save, atomically (see write_atomic)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getbuffer())


def write_atomic(path, data, mode=None):
    """Write to a temp file in the same directory, fsync, then os.replace: a reader
    (or a crash) sees either the old file or the new one, never half of one. The file is
    private to its owner (mkstemp's 0o600) unless mode says otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk too, or a power cut could undo it.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def link_atomic(src, dest):
    """dest becomes another name for src's current content, atomically: a hard link (no copy, and
    src's later replacement by os.replace leaves it alone), or a copy where links are refused."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError:
        if tmp.exists():
            tmp.unlink()
        write_atomic(dest, src.read_bytes())


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
        raise UserError(f"checkpoint {path} is truncated or corrupt ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a charrnn_torch checkpoint")
    return ckpt
