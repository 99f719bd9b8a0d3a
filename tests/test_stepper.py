"""Proves one-step sampling's fast path changes no bit: a Stepper's logits and states equal
model(ids[:, None], state)'s exactly (torch.equal), step after step, for the three cells, impl
fused and fused_cpp, 1 and 2 layers, 1 and 3 streams, float32 and float64, also at the default
model's size; and sample_ids, which steps through it and draws its uniforms in blocks, gives the
same ids as the plain loop it replaced (the model called once per character, one draw per
character) for every way of drawing, across a block boundary. For impl fused_cpp that loop runs
compiled (sample_loop.cpp) where its module builds: the same ids again, for every cell, way of
drawing, dtype and block boundary, at the default size too, and the same characters streamed;
with each draw beside the next step's recurrent products (two threads) as serially (one), for
every split of the products between the threads, a new split between blocks and under
inference_mode; its draw's buffers equal filter_probs' and pick's
bit for bit; and, what ``charrnn sample --impl fused_cpp`` promises a fused checkpoint, fused's ids
for rnn and gru.
"""
import os

import pytest
import torch

from charrnn_torch.model.cells import CELLS, CharRNN
from charrnn_torch.sampling import sample
from charrnn_torch.model.stepper import Stepper, supports
from charrnn_torch.sampling.sample import (COMPILED_BLOCK, DRAW_BLOCK, Sampling, compiled_blocks, filter_probs,
                                          pick, sample_ids)
from test_compiled import kernels  # noqa: F401 - the fixture: the compiled module, or a skip

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


@pytest.mark.parametrize("impl", ["fused", "fused_cpp"])
@pytest.mark.parametrize("cell", CELLS)
def test_sampling_across_a_block_of_draws(cell, impl):
    model, prime = _model(cell, impl, 1), torch.tensor([[2, 5]])
    length = DRAW_BLOCK + 37
    assert torch.equal(sample_ids(model, prime, length, Sampling(seed=4)),
                       _plain_sample_ids(model, prime, length, Sampling(seed=4)))


def _compiled_loop(model, N=1):
    with torch.no_grad():
        _, state = model(torch.zeros(N, 1, dtype=torch.long))
    work, probs, cdf = (torch.empty(N, model.vocab_size, dtype=torch.float64) for _ in range(3))
    return Stepper(model, state).compiled_loop(Sampling(), work, probs, cdf)


@pytest.mark.parametrize("cell", CELLS)
def test_fused_cpp_samples_through_the_compiled_loop(cell, kernels):  # noqa: F811
    assert _compiled_loop(_model(cell, "fused_cpp", 2)) is not None
    assert _compiled_loop(_model(cell, "fused", 2)) is None  # fused: the Python loop, no build needed


@pytest.mark.parametrize("sampling", [Sampling(seed=5), Sampling(seed=6, top_k=3, top_p=0.9), Sampling(greedy=True)],
                         ids=["temperature", "top_k_top_p", "greedy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_the_compiled_loop_gives_the_ids_of_the_python_loop(cell, dtype, sampling, kernels):  # noqa: F811
    # (fused_cpp's LSTM kernels round apart from fused's aten calls: the reference is the same model)
    model, length = _model(cell, "fused_cpp", 2, dtype), 2 * COMPILED_BLOCK + 5  # a last block part-full
    for N in (1, 3):
        prime = torch.randint(0, V, (N, 3), generator=torch.Generator().manual_seed(N))
        assert torch.equal(sample_ids(model, prime, length, sampling), _plain_sample_ids(model, prime, length, sampling))


@pytest.mark.parametrize("cell", CELLS)
def test_the_compiled_loop_at_the_default_size(cell, kernels):  # noqa: F811
    """At H = 512 BLAS takes other code paths than at H = 7; one layer and two (layer 1's addmm)."""
    for L in (1, 2):
        model, prime = _model(cell, "fused_cpp", L, V=65, H=512), torch.tensor([[3, 1, 4]])
        assert torch.equal(sample_ids(model, prime, 300, Sampling(seed=7)),
                           _plain_sample_ids(model, prime, 300, Sampling(seed=7)))


def test_the_compiled_loop_streams_every_character_in_order(tiny_text, kernels):  # noqa: F811
    from charrnn_torch.data.vocab import Vocab
    vocab = Vocab.from_text(tiny_text)
    model = _model("lstm", "fused_cpp", 1, V=len(vocab))
    streamed, length = [], COMPILED_BLOCK + 9
    text = sample.generate(model, vocab, "the ", length, Sampling(seed=2), on_text=streamed.append)
    plain = _plain_sample_ids(model, vocab.encode("the ")[None], length, Sampling(seed=2))[0]
    assert "the " + "".join(streamed) == text == "the " + vocab.decode(plain.tolist())


@pytest.mark.parametrize("cell", CELLS)
def test_the_compiled_loop_draws_beside_the_next_product_and_gives_the_same_ids(cell, kernels):  # noqa: F811
    """With two threads each draw runs beside the next step's h W_hh^T, where the loop's check finds
    this BLAS gives the same bits that way; with one thread it runs serially. The same ids both ways."""
    model, prime, length = _model(cell, "fused_cpp", 2, V=65, H=512), torch.tensor([[3, 1, 4]]), COMPILED_BLOCK + 30
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not _compiled_loop(model).overlaps()
        serial = sample_ids(model, prime, length, Sampling(seed=8, top_k=20))
        torch.set_num_threads(2)
        _overlaps_or_skip(_compiled_loop(model), "its own split", model)
        overlapped = sample_ids(model, prime, length, Sampling(seed=8, top_k=20))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, overlapped)
    assert torch.equal(overlapped, _plain_sample_ids(model, prime, length, Sampling(seed=8, top_k=20)))


def _overlaps_or_skip(loop, how, model):
    """Skip where the loop's check finds that one step on two threads rounds apart from the serial step
    (a BLAS may round a product made apart, split, or on one thread, another way), unless
    CHARRNN_REQUIRE_OVERLAP=1 (CI) and the serial step itself gives the same bits on one thread as on
    two: then the BLAS cannot be what rounds apart, so a failed check is a bug in the overlapped step."""
    if loop.overlaps():
        return
    why = (f"the loop's check keeps it serial ({how}): one step on two threads rounds apart from the serial "
           f"step on this CPU, or cannot run there")
    if os.environ.get("CHARRNN_REQUIRE_OVERLAP") == "1" and not _serial_steps_round_by_threads(model):
        pytest.fail(f"CHARRNN_REQUIRE_OVERLAP=1 but {why}, where the serial step gives one thread's bits on two")
    pytest.skip(f"{why}: here the serial step itself rounds apart on one thread and on two")


def _serial_steps_round_by_threads(model, steps=3):
    """Whether the Stepper's serial steps (aten's calls) give other logits and states on one thread
    than on two. The loop's second thread makes its share of each step on one thread, inside a parallel
    region, so where this BLAS rounds by thread count the loop's check rightly keeps it serial."""
    threads, runs = torch.get_num_threads(), []
    with torch.no_grad():
        _, state = model(torch.tensor([[3, 1, 4]]))  # one start for both
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                step = Stepper(model, state)
                outs = [step(torch.tensor([i])).clone() for i in range(steps)]
            runs.append(torch.cat([o.reshape(-1) for o in outs] + [s.reshape(-1) for s in step.states]))
    finally:
        torch.set_num_threads(threads)
    return not torch.equal(*runs)


def _split_sample_ids(model, prime, length, sampling, splits=None):
    """sample_ids through the compiled loop, the drawing thread's columns of each product set to splits
    (None: the loop's own choice): (ids (N, length), the loop, its last logits)."""
    with torch.no_grad():
        logits, state = model(prime)
    step, (N, V) = Stepper(model, state), (prime.shape[0], model.vocab_size)
    loop = step.compiled_loop(sampling, *(torch.empty(N, V, dtype=torch.float64) for _ in range(3)))
    if splits is not None:
        loop.set_splits(splits)
    step.logits.copy_(logits[:, -1])
    ids = torch.empty(length, N, dtype=torch.long)
    compiled_blocks(loop, ids.view(length, N, 1), sampling.greedy, sampling.draw(), None)
    return ids.t(), loop, step.logits


@pytest.mark.parametrize("cell", CELLS)
def test_every_split_of_the_products_between_the_threads_gives_the_same_ids(cell, kernels):  # noqa: F811
    """The drawing thread makes the first columns of each product, as many as balance the threads by
    a timing (so a run's split is any of these): every multiple of 16, from none to all, gives the
    serial loop's ids, for 1 and 3 streams; a split elsewhere is refused."""
    model, length = _model(cell, "fused_cpp", 2, V=65, H=512), COMPILED_BLOCK + 30
    columns = [c.W_hh.shape[0] for c in model.cells]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for N, splits in ((1, [0, 0]), (1, [16, 0]), (1, [0, 16]), (1, [176, 96]), (1, [c - 16 for c in columns]),
                          (1, columns), (3, [48, 32])):
            prime = torch.randint(0, 65, (N, 3), generator=torch.Generator().manual_seed(N))
            ids, loop, _ = _split_sample_ids(model, prime, length, Sampling(seed=10, top_k=30), splits)
            _overlaps_or_skip(loop, f"split at {splits}", model)
            assert loop.splits() == splits
            assert torch.equal(ids, _plain_sample_ids(model, prime, length, Sampling(seed=10, top_k=30)))
        chosen = _compiled_loop(model).splits()
        assert all(0 <= s <= c and s % 16 == 0 for s, c in zip(chosen, columns, strict=True)), chosen
        with pytest.raises(RuntimeError, match="multiple of 16"):
            loop.set_splits([8, 0])
    finally:
        torch.set_num_threads(threads)


class _Resplit:
    """A compiled loop whose split changes before every block (set_splits re-runs the loop's check)."""

    def __init__(self, loop, splits, model):
        self.loop, self.splits, self.calls, self.model = loop, splits, 0, model

    def run(self, pairs, us, step_last):
        self.loop.set_splits(self.splits[self.calls % len(self.splits)])
        _overlaps_or_skip(self.loop, f"split at {self.splits[self.calls % len(self.splits)]}", self.model)
        self.calls += 1
        self.loop.run(pairs, us, step_last)


@pytest.mark.parametrize("cell", CELLS)
def test_a_new_split_between_blocks_and_inference_mode_keep_the_ids(cell, kernels):  # noqa: F811
    """The loop's check between two blocks puts back what the next draw needs (the pending head); and
    under torch.inference_mode the other thread runs in the caller's mode, so it overlaps there too."""
    model, length = _model(cell, "fused_cpp", 2, V=65, H=512), 3 * COMPILED_BLOCK + 5
    prime, sampling = torch.tensor([[4, 2]]), Sampling(seed=13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            logits, state = model(prime)
        step = Stepper(model, state)
        loop = _Resplit(step.compiled_loop(sampling, *(torch.empty(1, 65, dtype=torch.float64) for _ in range(3))),
                        [[0, 0], [32, 16]], model)
        step.logits.copy_(logits[:, -1])
        ids = torch.empty(length, 1, dtype=torch.long)
        compiled_blocks(loop, ids.view(length, 1, 1), False, sampling.draw(), None)
        plain = _plain_sample_ids(model, prime, length, sampling)
        assert loop.calls == 4 and torch.equal(ids.t(), plain)
        with torch.inference_mode():
            _overlaps_or_skip(_compiled_loop(model), "under inference_mode", model)
            assert torch.equal(sample_ids(model, prime, length, sampling), plain)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("sampling", [Sampling(seed=11, temperature=0.7), Sampling(seed=12, top_k=5, top_p=0.9)],
                         ids=["temperature", "top_k_top_p"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_draw_writes_filter_probs_and_picks_bits(dtype, sampling, kernels):  # noqa: F811
    """The compiled draw writes out filter_probs' first calls and pick's: its work, probabilities and
    cumulative sums for the last character equal aten's bit for bit (an id changes only where a
    uniform falls in a rounding's width; these do not wait for that)."""
    model, N, length = _model("gru", "fused_cpp", 1, dtype, V=65, H=64), 3, 50
    prime = torch.randint(0, 65, (N, 2), generator=torch.Generator().manual_seed(3))
    work, probs, cdf = (torch.empty(N, 65, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        logits, state = model(prime)
    step = Stepper(model, state)
    loop = step.compiled_loop(sampling, work, probs, cdf)
    step.logits.copy_(logits[:, -1])
    ids = torch.empty(length, N, dtype=torch.long)
    compiled_blocks(loop, ids.view(length, N, 1), False, sampling.draw(), None)
    last_u = sampling.draw()(N * length)[-N:]  # one draw(N * k) is k draws of N
    want = [torch.empty_like(work) for _ in range(3)] + [torch.empty(N, 1, dtype=torch.long)]
    p = filter_probs(step.logits, sampling.temperature, sampling.top_k, sampling.top_p, out=want[:2])
    assert torch.equal(pick(p, last_u, out=(want[2], want[3])), ids[-1])
    assert torch.equal(work, want[0]) and torch.equal(cdf, want[2])
    if sampling.top_p == 1.0:  # top-p's probabilities are a fresh tensor, not the buffer
        assert torch.equal(probs, want[1])


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_fused_cpp_samples_the_text_of_fused_for_rnn_and_gru(cell, kernels):  # noqa: F811
    """What charrnn sample --impl fused_cpp promises a fused checkpoint of these cells: the same ids
    (only the LSTM's step has kernels of its own, which round apart)."""
    fused, cpp = _model(cell, "fused", 2, V=65, H=512), _model(cell, "fused_cpp", 2, V=65, H=512)
    assert all(torch.equal(a, b) for a, b in zip(fused.parameters(), cpp.parameters()))
    prime = torch.tensor([[2, 7, 1]])
    assert torch.equal(sample_ids(cpp, prime, 200, Sampling(seed=9)), sample_ids(fused, prime, 200, Sampling(seed=9)))
