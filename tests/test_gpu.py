"""Proves the CUDA paths, for each cell (tanh, LSTM, GRU): every impl on CUDA in float64 equals
the numpy reference (gradients to 1e-9, the initial state's too), float32 on CUDA matches float32
on CPU, training runs with TF32 and bf16 autocast and its loss falls, checkpoints load on CPU, sampling on CUDA is reproducible from a seed, and the
benchmark's CUDA rows (the CUDA-graph replay of `fused` among them) run. Skipped without CUDA;
`pytest -m gpu` selects these and the CUDA parity test in test_gradients.py.

Run on a machine with a GPU: pytest -m gpu   (scripts/gpu_check.sh runs it as its first stage)
"""
import pytest
import torch

from charrnn_torch import CharRNN
from charrnn_torch.tools import bench
from charrnn_torch.training import checkpoint
from charrnn_torch.model import reference
from charrnn_torch.training.config import OPTIMIZERS, TrainConfig, build_config
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.model.cells import CELLS, IMPLS, cross_entropy, map_state
from charrnn_torch.sampling.sample import Sampling, generate
from charrnn_torch.training.optim import make_optimizer
from charrnn_torch.training.trainer import train
from conftest import rel_err, run_script, tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

V, H, B, T = 11, 7, 3, 5  # small and distinct, as in test_gradients.py


def _model(impl, L, dtype, seed=0, cell="rnn"):
    torch.manual_seed(seed)
    model = CharRNN(V, H, num_layers=L, impl=impl, cell=cell).to(dtype).build_kernels()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)  # larger than the default init, so every term matters
    return model


def _batch(T_, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T_), generator=g), torch.randint(0, V, (B, T_), generator=g)


def _numpy(state):
    """A state (a tensor, or the LSTM's (h, c)) as float64 numpy arrays."""
    return map_state(lambda s: s.detach().double().cpu().numpy(), state)


def _state0(cell, L, dtype=torch.float64, seed=2):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L, B, H, dtype=dtype, generator=g) * 0.5
    return (h, torch.randn(L, B, H, dtype=dtype, generator=g) * 0.5) if cell == "lstm" else h


def _loss_grads(model, x, y, h0, device):
    model.to(device).zero_grad(set_to_none=True)
    h0 = map_state(lambda s: s.to(device).clone().requires_grad_(), h0)
    logits, h = model(x.to(device), h0)
    loss = cross_entropy(logits, y.to(device), reduction="sum")
    loss.backward()
    grads = {k: p.grad.double().cpu().numpy() for k, p in model.named_parameters()}
    return loss.item(), grads, _numpy(map_state(lambda s: s.grad, h0)), _numpy(h), _numpy(logits)


def _pairs(a, b):
    """Matching arrays of two states: [(h, h')] or [(h, h'), (c, c')]."""
    return list(zip(a, b)) if isinstance(a, tuple) else [(a, b)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("T_", [1, 17])
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_float64_matches_numpy_reference(impl, L, T_, cell):
    model = _model(impl, L, torch.float64, cell=cell)
    params = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    x, y = _batch(T_)
    h0 = _state0(cell, L)
    loss, grads, dh0, h, logits = _loss_grads(model, x, y, h0, "cuda")
    ref_loss, ref_grads, ref_dh0, ref_h, ref_logits = reference.loss_and_grads(params, x.numpy(), y.numpy(),
                                                                               _numpy(h0))
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert rel_err(logits, ref_logits) <= 1e-12
    assert all(rel_err(a, b) <= 1e-12 for a, b in _pairs(h, ref_h))
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) <= 1e-9, name
    assert all(rel_err(a, b) <= 1e-9 for a, b in _pairs(dh0, ref_dh0))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_float32_matches_cpu_float32(impl, cell):
    # TF32 off: this compares float32 with float32; only the order of the sums may differ.
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        x, y = _batch(17)
        h0 = _state0(cell, 2, torch.float32)
        cpu = _loss_grads(_model(impl, 2, torch.float32, cell=cell), x, y, h0, "cpu")
        gpu = _loss_grads(_model(impl, 2, torch.float32, cell=cell), x, y, h0, "cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert abs(gpu[0] - cpu[0]) <= 1e-5 * abs(cpu[0])
    for name in cpu[1]:
        assert rel_err(gpu[1][name], cpu[1][name]) <= 1e-5, name
    assert all(rel_err(a, b) <= 1e-5 for a, b in _pairs(gpu[2], cpu[2]))
    assert rel_err(gpu[4], cpu[4]) <= 1e-5


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("impl", IMPLS)
def test_train_on_cuda(tmp_path, corpus_file, amp, impl, cell):
    cfg = build_config({}, tiny_overrides(corpus_file, tmp_path / "r", **{
        "device": "cuda", "train.amp": amp, "model.impl": impl, "model.num_layers": 2, "train.max_steps": 40,
        "model.cell": cell}))
    summary = train(cfg, progress=False, log=lambda *a: None)
    losses = [v for _, v in summary["train_log"]]
    assert losses[-1] < losses[0]
    ck = checkpoint.load(tmp_path / "r" / "ckpt.pt")  # map_location=cpu
    assert all(t.device.type == "cpu" for t in ck["model"].values())
    r = run_script("sample.py", "--checkpoint", tmp_path / "r", "--device", "cuda", "--length", "50", "--seed", "1")
    assert r.returncode == 0 and len(r.stdout) == 52, r.stderr


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_steps_on_cuda(name):
    # Adagrad's fused kernel is CPU-only and fails at the first step, not when built.
    model = CharRNN(V, H, impl="fused").cuda()
    t = build_config({}, [f"train.optimizer={name}"]).train
    opt = make_optimizer(list(model.parameters()), t)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _batch(T)
    cross_entropy(model(x.cuda())[0], y.cuda()).backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_cuda_sampling_is_reproducible():
    vocab = Vocab.from_text("abcdefghij\n")
    torch.manual_seed(0)
    model = CharRNN(len(vocab), 64, num_layers=2, impl="fused").cuda()
    texts = [generate(model, vocab, "a", 200, sampling=Sampling(temperature=1.0, seed=7))
             for _ in range(2)]
    assert texts[0] == texts[1] and len(texts[0]) == 201
    other = generate(model, vocab, "a", 200, sampling=Sampling(temperature=1.0, seed=8))
    assert other != texts[0]  # the seed, not a constant, decides the text


@pytest.mark.parametrize("cell", CELLS)
def test_bench_cuda_rows(cell):
    rows, peak = bench.run_shape("smoke", torch.device("cuda"), repeats=2, cell=cell)
    assert peak > 0
    graphed = {bench.GRAPHED} if cell != "lstm" else set()  # the graphed row takes a one-tensor state
    assert {r.impl for r in rows} == {"CharRNN loop", "CharRNN fused", bench.yardstick_name(cell)} | graphed
    assert all(not r.note and r.chars_per_sec > 0 and r.peak_mem_mb >= 0 for r in rows), rows


def test_graphed_step_matches_eager_step():
    # The replayed graph must compute the same training step as the eager code it captured.
    V_, H_, B_, T_, L_ = bench.SHAPES["smoke"]
    steps = []
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for make in (bench.BenchStep, bench.GraphedStep):
            torch.manual_seed(0)
            step = make(CharRNN(V_, H_, L_, impl="fused"), V_, B_, T_, torch.device("cuda"), TrainConfig())
            if make is bench.BenchStep:
                step.h = step.model.init_hidden(B_)
            for _ in range(3):
                step()
            steps.append(step)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    eager, graphed = steps
    for a, b in zip(eager.params, graphed.params):
        assert rel_err(a.detach().cpu().numpy(), b.detach().cpu().numpy()) <= 1e-5
    assert rel_err(eager.h.cpu().numpy(), graphed.h.cpu().numpy()) <= 1e-5


@pytest.mark.parametrize("cell", CELLS)
def test_bench_cuda_train_step_rows(cell):
    # --train-steps: eager and captured whole steps, for CharRNN and the cuDNN module alike.
    device = torch.device("cuda")
    impls = bench.build_step_impls("smoke", device, cell=cell)
    rows, _ = bench.run_shape("smoke", device, repeats=2, cell=cell, impls=impls)
    assert [r.impl for r in rows] == bench.step_impl_names(device, cell)
    assert all(not r.note and r.chars_per_sec > 0 and r.peak_mem_mb >= 0 for r in rows), rows
