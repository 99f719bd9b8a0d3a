"""Proves the CUDA paths run: training with TF32 and bf16 autocast, checkpoints that load on
CPU, sampling on the GPU, and the benchmark's CUDA rows. Skipped without CUDA (the float64
CUDA-vs-CPU gradient check lives in test_gradients.py).

Run on a machine with a GPU: pytest tests/test_gpu.py
"""
import pytest
import torch

from charrnn_torch import bench, checkpoint
from charrnn_torch.config import build_config
from charrnn_torch.trainer import train
from conftest import run_script, tiny_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("impl", ["loop", "fused"])
def test_train_on_cuda(tmp_path, corpus_file, amp, impl):
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{
        "device": "cuda", "train.amp": amp, "model.impl": impl, "model.num_layers": 2, "train.max_steps": 40}))
    summary = train(cfg, progress=False, log=lambda *a: None)
    losses = [v for _, v in summary["train_log"]]
    assert losses[-1] < losses[0]
    ck = checkpoint.load(tmp_path / "r" / "ckpt.pt")  # map_location=cpu
    assert all(t.device.type == "cpu" for t in ck["model"].values())
    r = run_script("sample.py", "--checkpoint", tmp_path / "r", "--device", "cuda", "--length", "50", "--seed", "1")
    assert r.returncode == 0 and len(r.stdout) == 52, r.stderr


def test_bench_cuda_rows(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", (11, 32, 4, 16, 2))
    rows, peak = bench.run_shape("tiny", torch.device("cuda"), repeats=2)
    assert peak > 0 and {r.impl for r in rows} == {"CharRNN loop", "CharRNN fused", "nn.RNN stack"}
    assert all(r.chars_per_sec > 0 and r.peak_mem_mb >= 0 for r in rows)
