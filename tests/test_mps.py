"""Proves device=mps (Apple-silicon GPUs) as far as a machine without one can, and on one where
torch.backends.mps is available, the rest:

- the decisions, on any CPU: auto picks CUDA, then MPS, then the CPU (MPS never for sampling and
  scoring, which compute in float64); device=mps where there is none, float64 or DDP on MPS, and
  sampling, scoring, the page, export or the bench on MPS are each one `error:` line, exit 2,
  nothing written; what MPS does without gets one notice; the CPU copy that sampling, the heat map
  and dynamic evaluation use on MPS gives what the model itself gives; a CPU-only fused optimizer
  (Adagrad's) is not asked for off the CPU, where it would fail at its first step;
- on MPS (skipped elsewhere): a run trains, evaluates, samples to TensorBoard and checkpoints on
  it, saves MPS's random state, resumes, and its checkpoint samples on the CPU.

The project's own runs have no Mac: the MPS tests have not run on its machines.

Run: pytest tests/test_mps.py
"""
import pytest
import torch

from charrnn_torch.cli import main
from charrnn_torch.training import optim, runtime, trainer
from charrnn_torch.training.config import build_config
from conftest import read_scalars, tiny_overrides

MPS = torch.backends.mps.is_available()
needs_mps = pytest.mark.skipif(not MPS, reason="needs an Apple-silicon GPU (torch.backends.mps)")
no_mps = pytest.mark.skipif(MPS, reason="this machine has MPS")


def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch):
    assert [runtime.auto_device(c, m) for c, m in ((True, True), (True, False), (False, True), (False, False))] \
        == ["cuda", "cuda", "mps", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("mps")
    assert runtime.resolve_device("mps") == torch.device("mps")
    assert runtime.resolve_device("auto", mps=False) == torch.device("cpu")  # sampling: float64


@no_mps
@pytest.mark.parametrize("built,why", [
    (False, "this torch was built without MPS"),
    (True, "this machine has no MPS device (an Apple-silicon Mac with macOS 12.3 or later has one)"),
])
def test_mps_where_there_is_none_is_one_error_line(tmp_path, corpus_file, capsys, monkeypatch, built, why):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *tiny_overrides(corpus_file, out), "device=mps"]) == 2
    assert capsys.readouterr().err == f"error: device=mps but {why}; use device=cpu or auto\n"
    assert not out.exists()


def test_what_mps_cannot_train_is_refused_and_what_it_lacks_is_said_once():
    mps, cpu = torch.device("mps"), torch.device("cpu")
    f64 = build_config({}, ["train.dtype=float64"])
    assert runtime.device_refusal(f64.train, mps, 1) == ("device=mps: MPS has no float64; use train.dtype=float32, "
                                                   "or device=cpu for float64")
    assert runtime.device_refusal(build_config().train, mps, 2).startswith("device=mps: DDP reduces CUDA or CPU tensors")
    assert runtime.device_refusal(build_config().train, mps, 1) is None and runtime.device_refusal(f64.train, cpu, 2) is None
    notices = runtime.device_notices(build_config({}, ["train.amp=bf16"]).train, mps)
    assert notices == ["train.amp=bf16: autocast runs on CUDA only; this run on mps trains in float32",
                       "device=mps: MPS has no float64, so TensorBoard's samples and hidden-state heat map, and "
                       "train.dynamic_eval, use a CPU copy of the model; loss/val is summed in float32"]
    assert runtime.device_notices(build_config().train, cpu) == []
    assert (runtime.sum_dtype(mps), runtime.sum_dtype(cpu)) == (torch.float32, torch.float64)


def test_a_run_on_mps_is_refused_before_anything_is_written(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.setattr(trainer, "resolve_device", lambda name, dist_info: torch.device("mps"))
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *tiny_overrides(corpus_file, out), "train.dtype=float64"]) == 2
    assert capsys.readouterr().err.startswith("error: device=mps: MPS has no float64")
    assert not out.exists()


def test_the_cpu_copy_used_without_float64_gives_what_the_model_gives(tmp_path, corpus_file, monkeypatch):
    """As on MPS: samples, the heat map and dynamic evaluation from a CPU copy, loss/val summed in
    float32. On the CPU the copy must change nothing but the last bits of loss/val."""
    extra = {"train.max_steps": 8, "train.eval_interval": 4, "train.sample_interval": 4, "train.dynamic_eval": True,
             "model.hidden_size": 7}
    plain = trainer.train(build_config({}, tiny_overrides(corpus_file, tmp_path / "plain", **extra)),
                          progress=False, log=lambda *a: None)
    monkeypatch.setattr(trainer, "has_float64", lambda device: False)
    monkeypatch.setattr(trainer, "sum_dtype", lambda device: torch.float32)
    copies, float64_model = [], trainer.Trainer.float64_model

    def recorded(self):
        model = float64_model(self)
        copies.append(model is not self.model and model.W_hy.device.type == "cpu")
        return model

    monkeypatch.setattr(trainer.Trainer, "float64_model", recorded)
    copied = trainer.train(build_config({}, tiny_overrides(corpus_file, tmp_path / "copy", **extra)),
                           progress=False, log=lambda *a: None)
    assert copies == [True] * 5  # two samples, two heat maps, dynamic evaluation
    assert copied["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6) and copied["val_loss"] != 0
    assert copied["val_dynamic"] == pytest.approx(plain["val_dynamic"], rel=1e-12)
    texts = [read_scalars(tmp_path / d)[0].Tensors("samples/text_summary") for d in ("plain", "copy")]
    assert [t.tensor_proto.string_val for t in texts[0]] == [t.tensor_proto.string_val for t in texts[1]]


def test_a_cpu_only_fused_optimizer_is_not_asked_for_off_the_cpu():
    on_cpu = [torch.nn.Parameter(torch.zeros(3))]
    elsewhere = [torch.nn.Parameter(torch.zeros(3, device="meta"))]  # stands for cuda or mps: not the CPU
    assert optim.fast_optimizer(torch.optim.Adagrad, on_cpu, lr=0.1).defaults["fused"]
    assert not optim.fast_optimizer(torch.optim.Adagrad, elsewhere, lr=0.1).defaults["fused"]


@needs_mps
def test_a_run_trains_on_mps_resumes_and_samples_on_the_cpu(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    args = tiny_overrides(corpus_file, out, **{"train.max_steps": 10, "device": "mps", "model.num_layers": 2,
                                               "model.dropout": 0.1, "model.cell": "lstm"})
    assert main(["train", "--no-progress", *args]) == 0
    printed = capsys.readouterr().out
    assert "on mps" in printed and "device=mps: MPS has no float64" in printed
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert ck["rng"]["mps"] is not None and ck["step"] == 10
    assert main(["train", "--resume", str(out), "train.max_steps=20", "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(out), "--length", "20", "--device", "cpu"]) == 0


@needs_mps
def test_auto_picks_mps_on_a_mac_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA comes first")
    assert runtime.resolve_device("auto").type == "mps"
