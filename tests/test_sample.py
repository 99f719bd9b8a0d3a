"""Proves generation: the torch sampler picks exactly the numpy reference's characters
from the same uniforms; temperature/top-k/top-p do what they promise on hand-made logits;
beam search is exact where brute force can check it; the carried state equals a full
re-run; and the sample CLI works end to end (--impl fused_cpp too, with the same text), streams
its text while it samples, with every bad input answered.

Run: pytest tests/test_sample.py
"""
import itertools
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charrnn_torch import CharRNN
from charrnn_torch.cli import main
from charrnn_torch.model import reference
from charrnn_torch.training.config import build_config
from charrnn_torch.data.vocab import Vocab
from charrnn_torch.sampling.sample import Sampling, beam_search, filter_probs, generate, generate_batch, pick, sample_ids, score
from charrnn_torch.training.trainer import train
from conftest import ROOT, run_script, tiny_overrides
from test_compiled import kernels  # noqa: F401 - the fixture: the compiled module, or a skip

V, H = 11, 7


def model_from_reference(L=2, seed=0, V=V, scale=0.5):
    params = reference.init_params(V, H, L, rng=np.random.default_rng(seed), scale=scale)
    model = CharRNN(V, H, num_layers=L).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    return model, params


def test_sampler_matches_numpy_reference():
    model, params = model_from_reference()
    rng_ref, rng_torch = np.random.default_rng(5), np.random.default_rng(5)
    want = reference.sample(params, np.zeros((2, H)), seed_ix=3, n=200, rng=rng_ref)
    draw = lambda n: torch.tensor([rng_torch.random() for _ in range(n)], dtype=torch.float64)
    got = sample_ids(model, torch.tensor([[3]]), 200, Sampling(temperature=1.0), draw=draw)[0].tolist()
    assert got == want
    assert len(set(want)) > 3  # a real sample, not a constant


def test_temperature_to_zero_and_top_k_one_equal_greedy():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 2.5, -2.0]], dtype=torch.float64)
    greedy = logits.argmax(-1)
    for u in (0.0, 0.3, 0.999999):
        uu = torch.full((2,), u, dtype=torch.float64)
        assert torch.equal(pick(filter_probs(logits, temperature=1e-4), uu), greedy)
        assert torch.equal(pick(filter_probs(logits, top_k=1), uu), greedy)
    p = filter_probs(logits, temperature=1e-4)
    assert torch.allclose(p, F.one_hot(greedy, 4).double())


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-300])  # subnormal, the smallest float, tiny
def test_every_tiny_temperature_is_greedy(temperature):
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 2.5, -2.0], [1e4, -1e4, 0.0, 9999.0]],
                          dtype=torch.float32)
    p = filter_probs(logits, temperature=temperature)
    assert torch.equal(p, F.one_hot(logits.argmax(-1), 4).double())


def test_a_huge_temperature_is_uniform():
    p = filter_probs(torch.tensor([[0.1, 2.0, -1.0, 1.9]]), temperature=1e308)
    torch.testing.assert_close(p, torch.full((1, 4), 0.25, dtype=torch.float64))


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    p1, p_hot, p_cold = (filter_probs(logits, temperature=t)[0] for t in (1.0, 2.0, 0.5))
    assert p_cold[2] > p1[2] > p_hot[2]


def test_top_k_keeps_k_largest():
    p = filter_probs(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), top_k=2)[0]
    assert (p > 0).tolist() == [False, True, False, True]
    torch.testing.assert_close(p[[1, 3]], torch.softmax(torch.tensor([3.0, 2.0], dtype=torch.float64), 0))


@pytest.mark.parametrize("top_p,kept", [(0.5, [0]), (0.75, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    order = torch.tensor([[2, 0, 3, 1]])  # shuffled, so the test cannot pass by position
    logits = torch.empty_like(probs).scatter_(1, order, probs.log())
    p = filter_probs(logits, top_p=top_p)[0]
    kept_ids = sorted(order[0, kept].tolist())
    assert sorted(torch.nonzero(p).flatten().tolist()) == kept_ids
    assert p.sum().item() == pytest.approx(1.0)
    expected = probs[0, kept] / probs[0, kept].sum()
    torch.testing.assert_close(p[order[0, kept]], expected)


def test_inverse_cdf_pick():
    probs = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    assert [pick(probs, torch.tensor([u], dtype=torch.float64)).item() for u in (0.0, 0.19, 0.2, 0.69, 0.7, 0.99)] == \
        [0, 0, 1, 1, 2, 2]


def brute_force_best(model, prime_ids, length, V):
    best, best_lp = None, -float("inf")
    for seq in itertools.product(range(V), repeat=length):
        ids = torch.tensor([prime_ids + list(seq)])
        logp = F.log_softmax(model(ids)[0][0].double(), -1)
        P = len(prime_ids)
        lp = sum(logp[P - 1 + i, c].item() for i, c in enumerate(seq))
        if lp > best_lp:
            best, best_lp = list(seq), lp
    return best, best_lp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_exact_against_brute_force(seed):
    # V=3, length 4: a beam of width V**(length-1) = 27 keeps every prefix, so it is
    # provably exact; width 9 is exact on these models too (checked, not guaranteed).
    model, _ = model_from_reference(L=1, seed=seed, V=3, scale=1.5)
    vocab = Vocab("abc")
    best, best_lp = brute_force_best(model, [0], 4, 3)
    for width in (9, 27):
        text, lp = beam_search(model, vocab, "a", 4, width)
        assert text == "a" + vocab.decode(best)
        assert lp == pytest.approx(best_lp, abs=1e-9)


def test_beam_search_never_below_greedy_and_width_one_is_greedy():
    model, _ = model_from_reference(L=2, seed=3, scale=1.0)
    vocab = Vocab("abcdefghijk")
    greedy = generate(model, vocab, "abc", 30, Sampling(greedy=True))
    text1, lp1 = beam_search(model, vocab, "abc", 30, 1)
    assert text1 == greedy
    ids = vocab.encode(greedy)[None]
    logp = F.log_softmax(model(ids)[0][0].double(), -1)
    greedy_lp = sum(logp[2 + i, ids[0, 3 + i]].item() for i in range(30))
    assert lp1 == pytest.approx(greedy_lp, abs=1e-9)
    for width in (2, 5, 16):
        assert beam_search(model, vocab, "abc", 30, width)[1] >= greedy_lp - 1e-9


def test_state_carries_through_generation():
    torch.manual_seed(0)
    model = CharRNN(V, 32, num_layers=2)  # float32
    step_logits = []
    orig = model.forward

    def spy(x, h0=None):
        logits, h = orig(x, h0)
        step_logits.append(logits[:, -1])
        return logits, h

    model.forward = spy
    vocab = Vocab("abcdefghijk")
    text = generate(model, vocab, "abcde", 50, sampling=Sampling(seed=1))
    model.forward = orig
    assert len(step_logits) == 50  # the prime once, then one step per new character (the last needs none)
    full = model(vocab.encode(text[:-1])[None])[0][0]  # (P + 49, V)
    torch.testing.assert_close(torch.cat(step_logits), full[4:], rtol=1e-6, atol=1e-6)


def test_seed_reproducible_and_batch():
    model, _ = model_from_reference()
    vocab = Vocab("abcdefghijk")
    a = generate_batch(model, vocab, "ab", 40, num_samples=3, sampling=Sampling(seed=7))
    b = generate_batch(model, vocab, "ab", 40, num_samples=3, sampling=Sampling(seed=7))
    assert a == b and len(a) == 3 and len(set(a)) == 3 and all(s.startswith("ab") and len(s) == 42 for s in a)


def test_score_reports_unknown_characters():
    model, _ = model_from_reference()
    vocab = Vocab("abcdefghijk")
    r = score(model, vocab, "abcXdefgZhij")
    assert r["unknown_chars"] == 2 and r["unknown_set"] == ["X", "Z"] and r["count"] == 9
    ids = vocab.encode("abcdefghij")[None]
    want = F.cross_entropy(model(ids[:, :-1])[0][0], ids[0, 1:]).item()
    assert r["loss"] == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samplerun")
    corpus = tmp / "corpus.txt"
    corpus.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 40)
    cfg = build_config({}, tiny_overrides(corpus, tmp / "run", **{"train.max_steps": 20, "train.sample_interval": 0}))
    train(cfg, progress=False, log=lambda *a: None)
    return tmp / "run"


def test_cli_sample_stream_and_out_file(run_dir, tmp_path):
    out = tmp_path / "o.txt"
    args = ["--checkpoint", run_dir, "--prime", "ROMEO:", "--length", "60", "--seed", "3",
            "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--out", out]
    r = run_script("sample.py", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout) == len("ROMEO:") + 60 + 1
    assert out.read_text() == r.stdout
    assert run_script("sample.py", *args).stdout == r.stdout  # same seed, same text


def test_cli_sample_streams_text_while_it_samples(run_dir):
    """Text reaches the pipe while sampling goes on, not only at the end (it is flushed every
    STREAM_FLUSH_S, not once per character)."""
    p = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sample.py"), "--checkpoint", str(run_dir),
                          "--length", "300000", "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        first = p.stdout.read1(1 << 16)  # whatever has arrived, as soon as anything has
        assert first and p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_cli_temperature_1e_310_is_the_greedy_text(run_dir, capsys):
    from charrnn_torch.cli import main

    texts = []
    for flags in (["--temperature", "1e-310", "--seed", "4"], ["--greedy"]):
        assert main(["sample", "--checkpoint", str(run_dir), "--prime", "RO", "--length", "40", *flags]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(set(texts[0])) > 3


def test_cli_impl_fused_cpp_samples_the_checkpoints_text(run_dir, capsys, kernels):  # noqa: F811
    texts = []
    for flags in ([], ["--impl", "fused_cpp"]):
        assert main(["sample", "--checkpoint", str(run_dir), "--length", "300", "--seed", "6", *flags]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) == 1 + 300 + 1


@pytest.mark.slow
def test_cli_greedy_beam_samples_score(run_dir, tmp_path):
    greedy = run_script("sample.py", "--checkpoint", run_dir / "ckpt.pt", "--prime", "RO", "--length", "20", "--greedy")
    beam1 = run_script("sample.py", "--checkpoint", run_dir, "--prime", "RO", "--length", "20", "--beam-width", "1")
    beam4 = run_script("sample.py", "--checkpoint", run_dir, "--prime", "RO", "--length", "20", "--beam-width", "4")
    assert greedy.returncode == beam1.returncode == beam4.returncode == 0
    assert greedy.stdout == beam1.stdout
    assert "log-probability" in beam4.stderr
    many = run_script("sample.py", "--checkpoint", run_dir, "--prime", "RO", "--length", "30", "--num-samples", "3",
                      "--seed", "1")
    assert many.returncode == 0
    parts = re.split(r"^----- sample (\d+) -----\n", many.stdout, flags=re.M)  # ['', '1', text, '2', text, ...]
    assert parts[0] == "" and parts[1::2] == ["1", "2", "3"]  # sample 1 has its header too
    texts = [t[:-2] for t in parts[2:-1:2]] + [parts[-1][:-1]]  # a blank line between samples, a newline after each
    assert all(t.startswith("RO") and len(t) == 2 + 30 for t in texts), parts
    text = tmp_path / "t.txt"
    text.write_text("ROMEO: but soft! #")
    s = run_script("sample.py", "--checkpoint", run_dir, "--score", text)
    assert s.returncode == 0 and "bits/char" in s.stdout and "2 characters not in the vocabulary" in s.stdout


@pytest.mark.parametrize("args,needle", [
    (["--prime", "@@"], "no character of the prime is in the vocabulary (not in it: '@')"),
    (["--prime", ""], "--prime is empty; leave it out for the default prime"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--temperature", "-1"], "--temperature must be > 0"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--length", "-1"], "--length must be >= 0"),
    (["--bogus"], "unrecognized arguments"),
])
def test_cli_bad_input(run_dir, args, needle, capsys):
    # In this process: the command's own parsing and reporting (test_reliability runs a bad
    # sample command in a real process, traceback-free).
    assert main(["sample", "--checkpoint", str(run_dir), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_unknown_prime_characters_are_dropped_and_said(run_dir):
    """The one rule (also --score's and the playground's): dropped and reported, never mapped."""
    r = run_script("sample.py", "--checkpoint", run_dir, "--prime", "RO@ME@Oé", "--length", "5", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "note: 3 prime characters not in the vocabulary, dropped: '@', 'é'\n"
    same = run_script("sample.py", "--checkpoint", run_dir, "--prime", "ROMEO", "--length", "5", "--seed", "3")
    assert r.stdout == same.stdout and r.stdout.startswith("ROMEO")


def test_cli_bad_checkpoints(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    cases = [(tmp_path / "missing.pt", "checkpoint not found"), (empty, "no checkpoint in"), ]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    cases.append((junk, "truncated or corrupt"))
    for path, needle in cases:
        r = run_script("sample.py", "--checkpoint", path)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_default_prime_is_newline_else_most_frequent():
    from charrnn_torch.sampling.sample import default_prime
    assert default_prime(Vocab("\nab")) == "\n"
    assert default_prime(Vocab("abc"), char_counts=[1, 7, 3]) == "b"
    assert default_prime(Vocab("abc")) == "a"  # no counts stored: the first character


def test_checkpoint_stores_char_counts(run_dir):
    from charrnn_torch.training import checkpoint
    ck = checkpoint.load(run_dir / "ckpt.pt")
    assert len(ck["char_counts"]) == len(ck["vocab"]) and ck["char_counts"][ck["vocab"].index(" ")] > 0
