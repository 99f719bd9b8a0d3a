"""Proves one-step sampling's fast path changes no bit: a Stepper's logits and states equal
model(ids[:, None], state)'s exactly (torch.equal), step after step, for the three cells, impl
fused and fused_cpp, 1 and 2 layers, 1 and 3 streams, float32 and float64, also at the default
model's size; and sample_ids, which steps through it and draws its uniforms in blocks, gives the
same ids as the plain loop it replaced (the model called once per character, one draw per
character) for every way of drawing, across a block boundary.
"""
import pytest
import torch

from charrnn_torch.model.cells import CELLS, CharRNN
from charrnn_torch.model.stepper import Stepper, supports
from charrnn_torch.sampling.sample import DRAW_BLOCK, Sampling, filter_probs, pick, sample_ids

V, H = 11, 7


def _model(cell, impl, L, dtype=torch.float32, V=V, H=H):
    torch.manual_seed(0)
    model = CharRNN(V, H, L, impl=impl, cell=cell).to(dtype).build_kernels().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # weights strong enough that the state and the draws move from step to step
    return model


def _tensors(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("impl", ["fused", "fused_cpp"])
@pytest.mark.parametrize("cell", CELLS)
def test_stepper_equals_the_model_bit_for_bit(cell, impl, L, N, dtype):
    _steps_equal(_model(cell, impl, L, dtype), N, V)


@pytest.mark.parametrize("cell", CELLS)
def test_stepper_equals_the_model_at_the_default_size(cell):
    """At H = 512 BLAS takes other code paths than at H = 7 (and is alignment-sensitive there)."""
    _steps_equal(_model(cell, "fused", 2, V=65, H=512), 1, 65)


def _steps_equal(model, N, vocab_size):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, state = model(torch.randint(0, vocab_size, (N, 4), generator=g))
        stepper = Stepper(model, state)
        for _ in range(6):
            ids = torch.randint(0, vocab_size, (N,), generator=g)
            logits, state = model(ids[:, None], state)
            assert torch.equal(stepper(ids), logits[:, -1])
            assert all(torch.equal(a, b) for a, b in zip(_tensors(stepper.state()), _tensors(state), strict=True))


def test_what_it_runs():
    assert supports(_model("rnn", "fused", 1)) and supports(_model("gru", "fused_cpp", 2))
    assert not supports(_model("lstm", "loop", 1))
    torch.manual_seed(0)
    bidirectional = CharRNN(V, H, impl="fused", bidirectional=True)
    assert not supports(bidirectional)
    with pytest.raises(ValueError, match="impl fused or fused_cpp"):
        Stepper(bidirectional, bidirectional.init_hidden(1))


def _plain_sample_ids(model, prime_ids, length, sampling):
    """The loop sample_ids was: the model called once per character, one draw of N per character."""
    draw = sampling.draw()
    with torch.no_grad():
        logits, state = model(prime_ids)
        out = []
        for i in range(length):
            last = logits[:, -1]
            if sampling.greedy:
                nxt = last.argmax(-1)
            else:
                nxt = pick(filter_probs(last, sampling.temperature, sampling.top_k, sampling.top_p),
                           draw(prime_ids.shape[0]))
            out.append(nxt)
            logits, state = model(nxt[:, None], state)
    return torch.stack(out, 1)


@pytest.mark.parametrize("sampling", [Sampling(seed=1), Sampling(seed=2, top_k=4),
                                      Sampling(seed=3, top_p=0.8, temperature=1.3), Sampling(greedy=True)],
                         ids=["temperature", "top_k", "top_p", "greedy"])
@pytest.mark.parametrize("impl", ["loop", "fused", "fused_cpp"])
@pytest.mark.parametrize("cell", CELLS)
def test_sampling_gives_the_text_of_the_plain_loop(cell, impl, sampling):
    model = _model(cell, impl, 2)
    for N, length in ((1, 60), (3, 25)):
        prime = torch.randint(0, V, (N, 3), generator=torch.Generator().manual_seed(N))
        assert torch.equal(sample_ids(model, prime, length, sampling), _plain_sample_ids(model, prime, length, sampling))


@pytest.mark.parametrize("cell", CELLS)
def test_sampling_across_a_block_of_draws(cell):
    model, prime = _model(cell, "fused", 1), torch.tensor([[2, 5]])
    length = DRAW_BLOCK + 37
    assert torch.equal(sample_ids(model, prime, length, Sampling(seed=4)),
                       _plain_sample_ids(model, prime, length, Sampling(seed=4)))
