"""Proves that the files the project writes follow the user's umask, as a file made with open()
would: a lab that shares a runs folder can read each other's checkpoints, configs and pages, and a
user whose umask is 077 keeps them private. (mkstemp's 0o600, which every atomic write starts
from, must not leak through.) The corpus cache's own rule, readable by whoever may read its
source, is test_corpus_robustness's.
"""
import contextlib
import os
import stat

import pytest

from charrnn_torch import files
from charrnn_torch.training.config import build_config
from charrnn_torch.training.trainer import train
from conftest import tiny_overrides


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_write_atomic_follows_umask(tmp_path, mask):
    with umask(mask):
        assert files.current_umask() == mask
        files.write_atomic(tmp_path / "f.bin", b"x")
    assert mode_of(tmp_path / "f.bin") == 0o666 & ~mask


def test_an_explicit_mode_is_kept(tmp_path):
    with umask(0o022):
        files.write_atomic(tmp_path / "f.bin", b"x", mode=0o640)
    assert mode_of(tmp_path / "f.bin") == 0o640


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_runs_files_follow_umask(tmp_path, corpus_file, mask):
    out = tmp_path / "run"
    cfg = build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 4, "train.eval_interval": 2,
                                                               "train.keep_checkpoints": 2}))
    with umask(mask):
        train(cfg, progress=False, log=lambda *a: None)
    written = ["ckpt.pt", "best.pt", "config.yaml", "ckpt-4.pt"]
    assert {name: mode_of(out / name) for name in written} == {name: 0o666 & ~mask for name in written}
