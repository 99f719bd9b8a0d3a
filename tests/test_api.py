"""Proves the Python API (charrnn_torch.load, Model, train): the README's Python block runs as
written (apart from a tiny corpus and model added to its overrides); the same seed gives the same
text as ``charrnn sample --seed``; score and trace agree with the package's own scoring and
tracing; bad input raises UserError with a one-line message, as the CLI would report it.
"""
import re

import numpy as np
import pytest
import torch

import charrnn_torch as cr
from charrnn_torch.cli import main
from charrnn_torch.sampling.sample import char_losses
from conftest import ROOT, SHARED_CORPUS, TINY_TEXT, tiny_overrides

TINY = {"model.hidden_size": 7, "model.num_layers": 2, "train.max_steps": 12, "train.eval_interval": 6,
        "train.sample_interval": 0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny trained run for the module's tests, which only read it."""
    tmp = tmp_path_factory.mktemp("api")
    corpus_file = tmp / "corpus.txt"
    corpus_file.write_text(TINY_TEXT)
    overrides = tiny_overrides(corpus_file, tmp / "run", **TINY, **{"model.cell": "lstm"})
    summary = cr.train("shakespeare.yaml", *overrides, progress=False, log=lambda *a: None)
    assert summary["step"] == 12
    return summary["out_dir"]


@pytest.mark.slow
def test_the_readme_python_block_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"## Python API\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    if not SHARED_CORPUS.is_file():
        pytest.skip(f"needs {SHARED_CORPUS} (its first 20,000 characters: the block primes with ROMEO:)")
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(SHARED_CORPUS.read_text()[:20_000])
    real_train = cr.train
    tiny = tiny_overrides(corpus, "runs/api", **TINY)

    def train_tiny(config, *overrides, **kw):  # the block's own overrides last: they win
        return real_train(config, *tiny, *overrides, progress=False, log=lambda *a: None, **kw)

    monkeypatch.setattr(cr, "train", train_tiny)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ROMEO:") and float(out[-1]) > 0
    assert (tmp_path / "runs" / "api" / "ckpt.pt").is_file()


def test_same_seed_as_the_cli(run_dir, capsys):
    model = cr.load(run_dir)
    for seed, knobs in ((1, {}), (7, {"temperature": 1.3, "top_k": 5}), (3, {"top_p": 0.6})):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in knobs.items()]
        assert main(["sample", "--checkpoint", run_dir, "--seed", str(seed), "--length", "60", "--prime", "the",
                     *flags]) == 0
        text = model.sample("the", length=60, seed=seed, **knobs)
        assert capsys.readouterr().out == text + "\n"
        assert len(text) == 63
    assert model.sample(seed=2, length=5) == model.sample(seed=2, length=5)
    assert model.sample(seed=2, length=40) != model.sample(seed=3, length=40)


def test_score_and_trace(run_dir):
    model = cr.load(run_dir)
    text = "the quick brown fox"
    r = model.score(text)
    ids = model.vocab.encode(text)
    assert r["loss"] == pytest.approx(float(char_losses(model.net, ids).mean()), rel=1e-12)
    assert r["bpc"] == pytest.approx(r["loss"] / np.log(2), rel=1e-12) and r["count"] == len(text) - 1
    states = model.trace(text)
    assert set(states) == {"h", "c", "input", "forget", "candidate", "output", "text"}
    assert states["h"].shape == (2, len(text), 7)
    # the traced top layer's h at the last character is the state the model's forward returns
    _, (h, _) = model.net(ids[None])
    np.testing.assert_allclose(states["h"][:, -1], h[:, 0].double().detach().numpy(), rtol=1e-5, atol=1e-6)
    text_b, logp = model.beam("the", length=10, width=3)
    assert text_b.startswith("the") and len(text_b) == 13 and logp < 0


@pytest.mark.parametrize("call, says", [
    (lambda m: m.sample("the", temperature=0), "temperature=0"),
    (lambda m: m.sample("the", top_p=1.5), "top_p=1.5"),
    (lambda m: m.sample("the", length=-1), "length=-1"),
    (lambda m: m.sample("the", num_samples=0), "num_samples=0"),
    (lambda m: m.sample("Z€"), "not in the vocabulary"),
    (lambda m: m.trace("Z€"), "not in the vocabulary"),
    (lambda m: m.beam("the", width=0), "width=0"),
])
def test_bad_input_raises_one_line(run_dir, call, says):
    with pytest.raises(cr.UserError) as e:
        call(cr.load(run_dir))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_load_and_train_refuse_bad_paths(tmp_path):
    with pytest.raises(cr.UserError, match="checkpoint not found"):
        cr.load(tmp_path / "nothing")
    with pytest.raises(cr.UserError):
        cr.train(str(tmp_path / "missing.yaml"))
    with pytest.raises(cr.UserError, match="unknown config key"):
        cr.train("shakespeare.yaml", "train.nope=1")


def test_several_samples_and_the_net(run_dir):
    model = cr.load(run_dir)
    texts = model.sample("a", length=20, num_samples=3, seed=5)
    assert len(texts) == 3 and all(t.startswith("a") and len(t) == 21 for t in texts)
    assert isinstance(model.net, cr.CharRNN) and not model.net.training and model.step == 12
    assert "lstm 2x7" in repr(model)
    torch.testing.assert_close(model.net(model.vocab.encode("abc")[None])[0].sum(),
                               model.net(model.vocab.encode("abc")[None])[0].sum())
