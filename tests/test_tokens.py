"""Proves the token vocabularies, data.vocab=words and data.vocab=bpe, and bits per character:

- the words rule gives the text back when its tokens are joined, cuts as documented, caps the
  vocabulary at data.max_vocab (most frequent first, UNK at 0) and reads other words as UNK;
- the byte-level BPE (tokenizers, the [bpe] extra) round-trips any text, unseen characters too,
  spells exactly len(text) characters, trains the same from pieces as from the whole text, and
  matches tokenizers' own decoder;
- the token cache: built once from the training split (the validation split is the very
  characters a chars model validates on), reused, rebuilt when the text changes, one file per
  setting; it records each unknown token's length, so bits per character count every character;
- score() spreads the total nats over the characters the scored tokens spell; training logs
  bpc/val as exactly those nats over the characters its validation targets spell;
- sample, --score, the Python API, resume and beam search work with token models; visualize,
  export --format html and fill refuse in one line; resume refuses a changed vocabulary kind or size, and
  every bad value (data.max_vocab, data.bpe_vocab_size, bpe without tokenizers, fine-tuning a
  token model) is one error line with exit status 2.

CI sets CHARRNN_REQUIRE_BPE=1: the BPE tests fail, not skip, without tokenizers.

Run: pytest tests/test_tokens.py
"""
import math
import os
import sys

import pytest
import torch

import charrnn_torch as cr
from charrnn_torch.cli import main
from charrnn_torch.data import batchers, token_cache, tokens
from charrnn_torch.data.corpus import load_corpus, split
from charrnn_torch.data.vocab import Vocab, vocab_from_checkpoint
from charrnn_torch.sampling.sample import char_losses, score
from charrnn_torch.training import checkpoint
from charrnn_torch.training.config import build_config
from conftest import read_scalars, tiny_overrides

TINY = {"model.hidden_size": 7, "model.cell": "gru", "train.batch_size": 3, "train.seq_len": 5,
        "train.max_steps": 12, "train.eval_interval": 6, "train.sample_interval": 6, "train.sample_length": 9}
LN2 = math.log(2)


def require_tokenizers():
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        if os.environ.get("CHARRNN_REQUIRE_BPE") == "1":
            pytest.fail("tokenizers is not installed (pip install -e '.[dev]')")
        pytest.skip("tokenizers is not installed (pip install -e '.[bpe]')")


def quiet(*args, **kwargs):
    return None


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def train_tiny(corpus_file, out, **extra):
    overrides = tiny_overrides(corpus_file, out, **{**TINY, **extra})
    return cr.train("shakespeare.yaml", *overrides, progress=False, log=quiet)


# ---------------------------------------------------------------- words

def test_words_rule_cuts_as_documented_and_joins_back():
    assert tokens.WORDS.findall("First Citizen:\nBefore we  go, don't.\n\n  All") == [
        "First", " Citizen", ":", "\n", "Before", " we", " ", " go", ",", " don", "'", "t", ".", "\n\n ", " All"]
    text = "Ünïcode wörds_1 ... tabs\tand\r\nCRLF?! 3.14 😀\n   \n"
    assert "".join(tokens.WORDS.findall(text)) == text


def test_word_vocab_caps_and_reads_the_rest_as_unknown():
    text = "a b a c a b\n" * 2
    vocab = tokens.WordVocab.from_text(text, max_vocab=4)
    assert vocab.chars == [tokens.UNK, " a", " b", "\n"]  # counts 4, 4, then 2 each: "\n" < " c" < "a"
    ids, lengths = vocab.tokenize("a b c rare")
    assert ids.tolist() == [0, 2, 0, 0] and lengths.tolist() == [1, 2, 2, 5]
    assert vocab.decode(ids.tolist()) == f"{tokens.UNK} b{tokens.UNK}{tokens.UNK}" and vocab.unknown("rare") == []
    full = tokens.WordVocab.from_text(text, max_vocab=10**6)
    assert full.decode(full.encode(text).tolist()) == text and tokens.UNK not in full.chars[1:]


# ---------------------------------------------------------------- bpe

def test_bpe_round_trips_any_text_and_counts_its_characters(tiny_text):
    require_tokenizers()
    vocab = tokens.BPEVocab.train(tiny_text, 300, progress=False)
    assert 256 < len(vocab) <= 300 and vocab.unknown("ж") == [] and "ж" in vocab
    for text in (tiny_text[:500], "naïve 😀 ж — unseen\ttext\n", "a"):
        ids, lengths = vocab.tokenize(text)
        assert vocab.decode(ids.tolist()) == text == vocab.tokenizer.decode(ids.tolist())
        assert int(lengths.sum()) == len(text)
        stream = vocab.streamer()
        assert "".join(stream(i) for i in ids.tolist()) == text
    assert set(tokens.byte_symbols().values()) == set(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())


def test_bpe_trains_the_same_from_pieces_and_again(tiny_text):
    require_tokenizers()
    whole = tokens.BPEVocab.train(tiny_text, 320, progress=False, piece=10**9)
    assert tokens.BPEVocab.train(tiny_text, 320, progress=False, piece=100).tokenizer_json == whole.tokenizer_json
    assert tokens.BPEVocab.train(tiny_text, 320, progress=False).tokenizer_json == whole.tokenizer_json
    assert "".join(tokens.pieces(tiny_text, 100)) == tiny_text


# ---------------------------------------------------------------- the token cache

def data_cfg(corpus_file, **values):
    return build_config({}, [f"data.path={corpus_file}", *(f"data.{k}={v}" for k, v in values.items())]).data


@pytest.mark.parametrize("values", [{"vocab": "words", "max_vocab": 10**6}, {"vocab": "bpe", "bpe_vocab_size": 300}])
def test_cache_holds_both_splits_of_the_same_validation_text(corpus_file, tiny_text, values):
    if values["vocab"] == "bpe":
        require_tokenizers()
    tiny_text += ".\n" * 500  # the validation split's tokens are shorter than the training split's
    corpus_file.write_text(tiny_text)
    cfg = data_cfg(corpus_file, **values)
    lines = []
    corpus = load_corpus(cfg, progress=False, log=lines.append)
    chars_val = split(Vocab.from_text(tiny_text).encode(tiny_text), cfg.val_fraction)[1]
    val_text = corpus.vocab.decode(corpus.val_ids.tolist())
    assert val_text == tiny_text[len(tiny_text) - len(chars_val):]  # the chars model's validation characters
    assert corpus.vocab.decode(corpus.train_ids.tolist()) + val_text == tiny_text
    assert corpus.train_chars == len(tiny_text) - len(chars_val) and int(corpus.val_lens.sum()) == len(val_text)
    (cached,) = [p for p in corpus_file.parent.iterdir() if p.name.startswith(f"corpus.txt.{values['vocab']}-")]
    assert len(lines) == 1 and str(cached) in lines[0]
    lines.clear()
    again = load_corpus(cfg, progress=False, log=lines.append)
    assert lines == [] and torch.equal(again.train_ids.long(), corpus.train_ids.long())
    corpus_file.write_text(tiny_text + "more text\n")
    load_corpus(cfg, progress=False, log=lines.append)
    assert len(lines) == 1 and [p for p in corpus_file.parent.iterdir() if p.name.endswith(".ids")] == [cached]


def test_unknown_words_keep_their_lengths(corpus_file, tiny_text):
    corpus_file.write_text(tiny_text + "zebras unheard-of xylophones\n" * 3)
    cfg = data_cfg(corpus_file, vocab="words", max_vocab=6)
    corpus = load_corpus(cfg, progress=False, log=quiet)
    val_text = token_cache.split_text(corpus_file.read_text(), cfg.val_fraction)[1]
    unknown = corpus.val_ids.long() == 0
    assert unknown.sum() > 10 and int(corpus.val_lens.sum()) == len(val_text)
    other = load_corpus(data_cfg(corpus_file, vocab="words", max_vocab=7), progress=False, log=quiet)
    assert len(other.vocab) == 7 and len(corpus.vocab) == 6
    assert len([p for p in corpus_file.parent.iterdir() if p.name.endswith(".ids")]) == 2


# ---------------------------------------------------------------- bits per character

def test_score_spreads_the_nats_over_the_characters(corpus_file, tmp_path):
    run = train_tiny(corpus_file, tmp_path / "w", **{"data.vocab": "words", "data.max_vocab": 8})
    model = cr.load(run["out_dir"])
    text = "the lazy xylophone jumps over the quick dog. "
    r = model.score(text)
    ids = model.vocab.encode(text)
    total = float(char_losses(model.net, ids).sum())
    first = tokens.WORDS.findall(text)[0]
    assert r["count"] == len(ids) - 1 and r["chars"] == len(text) - len(first)
    assert r["loss"] == pytest.approx(total / r["count"], rel=1e-12)
    assert r["bpc"] == pytest.approx(total / (len(text) - len(first)) / LN2, rel=1e-12)
    assert r["unknown_tokens"] == int((ids[1:] == 0).sum()) > 0


def test_training_logs_bits_per_character_of_the_scored_text(corpus_file, tmp_path):
    run = train_tiny(corpus_file, tmp_path / "w", **{"data.vocab": "words", "data.max_vocab": 10**6})
    corpus = load_corpus(build_config({}, [f"data.path={corpus_file}", "data.vocab=words",
                                           "data.max_vocab=1000000"]).data, progress=False, log=quiet)
    n_eval = batchers.eval_stream_count(len(corpus.val_ids), 3, 5, 1)
    targets = [y for _, y in batchers.eval_windows(corpus.val_ids, n_eval, 5)]
    scored = torch.cat([y.flatten() for y in targets]).tolist()
    chars = sum(len(corpus.vocab.chars[i]) for i in scored)  # no unknown word here: every token spells itself
    _, scalars = read_scalars(run["out_dir"])
    for (_, loss), (_, bpc) in zip(scalars["loss/val"], scalars["bpc/val"]):
        assert bpc == pytest.approx(loss * len(scored) / chars / LN2, rel=1e-6)
    assert run["val_bpc"] == pytest.approx(run["val_loss"] * len(scored) / chars / LN2, rel=1e-12)
    assert checkpoint.load(f"{run['out_dir']}/ckpt.pt")["val_bpc"] == run["val_bpc"]


# ---------------------------------------------------------------- the commands

def test_words_model_samples_scores_and_resumes(corpus_file, tmp_path, capsys):
    out = tmp_path / "w"
    train_tiny(corpus_file, out, **{"data.vocab": "words", "data.max_vocab": 20})
    assert main(["sample", "--checkpoint", str(out), "--prime", "the lazy", "--length", "6", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    model = cr.load(out)
    assert printed == model.sample("the lazy", length=6, seed=3) + "\n" and printed.startswith("the lazy")
    assert main(["sample", "--checkpoint", str(out), "--score", str(corpus_file)]) == 0
    assert " nats/token | " in capsys.readouterr().out
    text, logp = model.beam("the", length=4, width=3)
    assert text.startswith("the") and logp < 0
    assert main(["train", "--resume", str(out), "--no-progress", "train.max_steps=18"]) == 0
    assert checkpoint.load(out / "ckpt.pt")["step"] == 18


def test_bpe_model_samples_scores_and_keeps_its_merges(corpus_file, tmp_path, capsys):
    require_tokenizers()
    out = tmp_path / "b"
    train_tiny(corpus_file, out, **{"data.vocab": "bpe", "data.bpe_vocab_size": 290})
    ckpt = checkpoint.load(out / "ckpt.pt")
    vocab = vocab_from_checkpoint(ckpt)
    assert ckpt["vocab_mode"] == "bpe" and vocab.tokenizer_json == ckpt["tokenizer"] and len(vocab) == 290
    assert len(set(ckpt["vocab"])) == 290  # distinct labels: a checkpoint that repeats one does not load
    model = cr.load(out)
    text = model.sample("naïve fox", length=7, seed=5)
    assert text.startswith("naïve fox")
    r = model.score("the quick brown fox")
    assert r["chars"] == len("the quick brown fox") - len(vocab.decode(vocab.encode("the quick brown fox")[:1].tolist()))
    assert main(["sample", "--checkpoint", str(out), "--score", str(corpus_file)]) == 0
    assert " bits/char | " in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["visualize"], "the page shows characters: it needs a model trained with data.vocab=chars (this one models words)"),
    (["export", "--format", "html", "--out", "page.html"], "(this one models words; export it as onnx or pt2)"),
    (["fill", "--text", "the l_zy dog"], "fill works on characters: it needs a model trained with data.vocab=chars "
                                          "(this one models words"),
])
def test_pages_refuse_token_models_in_one_line(corpus_file, tmp_path, capsys, argv, says, monkeypatch):
    out = tmp_path / "w"
    train_tiny(corpus_file, out, **{"data.vocab": "words", "train.max_steps": 6})
    monkeypatch.chdir(tmp_path)
    assert main([argv[0], "--checkpoint", str(out), *argv[1:]]) == 2
    assert says in one_error_line(capsys)
    assert not (tmp_path / "page.html").exists() and not (tmp_path / "viz").exists()


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("override, says", [
    ("data.vocab=chars", "cannot change data.vocab when resuming (the checkpoint has 'words')"),
    ("data.max_vocab=50", "cannot change data.max_vocab when resuming (the checkpoint has 20)"),
])
def test_resume_refuses_another_vocabulary(corpus_file, tmp_path, capsys, override, says):
    out = tmp_path / "w"
    train_tiny(corpus_file, out, **{"data.vocab": "words", "data.max_vocab": 20, "train.max_steps": 6})
    before = sorted(p.name for p in corpus_file.parent.iterdir())
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress", override]) == 2
    printed = capsys.readouterr()
    assert says in printed.err and printed.err.count("\n") == 1
    assert "encoded" not in printed.out  # refused before any corpus is encoded for it
    assert sorted(p.name for p in corpus_file.parent.iterdir()) == before


def test_resume_refuses_a_text_that_gives_other_tokens(corpus_file, tmp_path, tiny_text, capsys):
    out = tmp_path / "w"
    train_tiny(corpus_file, out, **{"data.vocab": "words", "train.max_steps": 6})
    corpus_file.write_text(tiny_text.replace("fox", "cat"))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    assert "differs from the checkpoint's" in one_error_line(capsys)


@pytest.mark.parametrize("override, says", [
    ("data.max_vocab=1", "data.max_vocab: must be > 1 (the unknown token and at least one word), got 1"),
    ("data.max_vocab=-3", "data.max_vocab: must be > 1"),
    ("data.bpe_vocab_size=256", "data.bpe_vocab_size: must be in [257, 262144] (the 256 byte values and at least "
                                "one merge), got 256"),
    ("data.bpe_vocab_size=262145", "data.bpe_vocab_size: must be in [257, 262144]"),
    ("data.vocab=pieces", "data.vocab: must be one of chars, bytes, words, bpe, got 'pieces'"),
])
def test_bad_token_settings_are_one_line(corpus_file, tmp_path, capsys, override, says):
    assert main(["train", "--no-progress", *tiny_overrides(corpus_file, tmp_path / "r"), override]) == 2
    assert says in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_bpe_without_tokenizers_names_the_extra(corpus_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ImportError
    assert main(["train", "--no-progress", *tiny_overrides(corpus_file, tmp_path / "r"), "data.vocab=bpe"]) == 2
    assert one_error_line(capsys) == ('error: data.vocab=bpe needs the tokenizers package (Hugging Face), not '
                                      'installed: pip install -e ".[bpe]"\n')
    assert not any(p.name.endswith(".ids") for p in corpus_file.parent.iterdir())
    assert main(["train", "--print-config", "data.vocab=bpe"]) == 2  # refused with the config, before any file
    assert "the tokenizers package" in one_error_line(capsys)


def test_fine_tuning_a_token_model_is_refused(corpus_file, tmp_path, capsys):
    out = tmp_path / "w"
    train_tiny(corpus_file, out, **{"data.vocab": "words", "train.max_steps": 6})
    argv = ["train", "--no-progress", "--init-from", str(out), *tiny_overrides(corpus_file, tmp_path / "ft", **TINY),
            "data.vocab=words"]
    assert main(argv) == 2
    assert "fine-tuning needs data.vocab=chars or bytes" in one_error_line(capsys)

