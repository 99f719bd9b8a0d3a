"""Proves the encoded corpus cache and what rides on it: the cache of the real corpus holds exactly
the ids, vocabulary and counts of today's in-memory encoding; it is rebuilt when its source
changes and reused when not; a failed build leaves nothing that could pass for a cache; UTF-8
split across read chunks encodes right and bad UTF-8 is reported at its byte offset; byte mode
trains on any file, samples decode with replacement and scores count bytes; a large alphabet is
stored as uint16 and trains; fine-tuning carries the shared characters' weights over and says
which characters it adds (and refuses another architecture), fitting its batch to a small text and
saying so; step checkpoints are kept, pruned
and sampled from; --prime-file primes; and every bad cache or flag is one error line with exit
status 2 that leaves the files as they were. (Other users, odd files and crashes:
test_corpus_robustness.py.)

Run: pytest tests/test_corpus_cache.py
"""
import math
import os
import random

import numpy as np
import pytest
import torch

from charrnn_torch.data import cache
from charrnn_torch.training import checkpoint
from charrnn_torch.data import corpus as corpus_mod, vocab as vocab_mod
from charrnn_torch.sampling import sample
from charrnn_torch.cli import main
from charrnn_torch.training.config import build_config
from charrnn_torch.errors import UserError
from charrnn_torch.data.corpus import load_corpus
from charrnn_torch.training.trainer import Trainer, train
from conftest import SHARED_CORPUS, ROOT, tiny_overrides

REAL = ROOT / "data" / "tinyshakespeare.txt"


def quiet(*a, **k):
    return None


def test_cache_of_the_real_corpus_is_todays_encoding(tmp_path):
    source = REAL if REAL.exists() else SHARED_CORPUS
    if not source.exists():
        pytest.skip("tiny shakespeare is not on this machine")
    copy = tmp_path / "tinyshakespeare.txt"
    copy.write_bytes(source.read_bytes())
    text = copy.read_text(encoding="utf-8")
    vocab = vocab_mod.Vocab.from_text(text)
    want = vocab.encode(text)

    path, header, _ = cache.ensure(copy, "chars", progress=False, log=quiet)
    assert path == tmp_path / "tinyshakespeare.txt.chars.ids"
    assert header["vocab"] == vocab.chars and header["length"] == len(text) == 1_115_394
    assert header["dtype"] == "uint8"
    assert header["counts"] == torch.bincount(want, minlength=len(vocab)).tolist()
    ids = torch.from_numpy(cache.open_ids(path, header))
    assert torch.equal(ids.long(), want)

    corpus = load_corpus(build_config({}, [f"data.path={copy}"]).data, progress=False, log=quiet)
    old_train, old_val = corpus_mod.split(want, 0.1)
    assert torch.equal(corpus.train_ids.long(), old_train) and torch.equal(corpus.val_ids.long(), old_val)
    assert corpus.val_ids.untyped_storage().data_ptr() == corpus.train_ids.untyped_storage().data_ptr()  # views


def test_rebuilt_when_the_source_changes_and_reused_when_not(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("hello world\n" * 50)
    path, first, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    stamp = os.stat(path).st_mtime_ns
    assert cache.ensure(src, "chars", progress=False, log=quiet)[1] == first
    assert os.stat(path).st_mtime_ns == stamp  # reused, not rewritten

    src.write_text("hello there\n" * 50)  # the same size, other content
    said = []
    _, second, _ = cache.ensure(src, "chars", progress=False, log=said.append)
    assert said and "rebuilding" in said[0]
    ids = torch.from_numpy(cache.open_ids(path, second)).long()
    assert vocab_mod.Vocab(second["vocab"]).decode(ids.tolist()) == "hello there\n" * 50


def test_a_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    src = tmp_path / "c.txt"
    src.write_text("abc\n" * 1000)

    def broken(*a, **k):
        yield np.zeros(3, dtype=np.uint8)
        raise KeyboardInterrupt  # killed half way

    monkeypatch.setattr(cache, "encoded_chunks", broken)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(src, "chars", progress=False, log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_utf8_split_across_chunks_and_bad_bytes_at_their_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK", 5)
    text = "aé€😀b\n" * 20  # 1-, 2-, 3- and 4-byte characters, cut at every chunk boundary in turn
    src = tmp_path / "u.txt"
    src.write_text(text, encoding="utf-8")
    path, header, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    ids = torch.from_numpy(cache.open_ids(path, header)).long()
    assert vocab_mod.Vocab(header["vocab"]).decode(ids.tolist()) == text

    raw = text.encode("utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(raw[:23] + b"\xff" + raw[23:])
    with pytest.raises(UserError, match=r"bad byte at offset 23\b.*data\.vocab=bytes"):
        cache.ensure(bad, "chars", progress=False, log=quiet)
    cut = tmp_path / "cut.txt"
    cut.write_bytes(raw + "€".encode()[:2])
    with pytest.raises(UserError, match=rf"ends inside a character, at offset {len(raw)}\b"):
        cache.ensure(cut, "chars", progress=False, log=quiet)
    assert not (tmp_path / "bad.txt.chars.ids").exists() and not (tmp_path / "cut.txt.chars.ids").exists()


def test_byte_mode_trains_on_any_file_and_samples_decode(tmp_path, capsys):
    rng = random.Random(0)
    blob = ("naïve café ".encode("utf-8") + bytes([0xff, 0xfe, 0x80]) + bytes(rng.randrange(256) for _ in range(20)))
    src = tmp_path / "bin.dat"
    src.write_bytes(blob * 200)
    path, header, _ = cache.ensure(src, "bytes", progress=False, log=quiet)
    assert header["vocab"] is None and header["dtype"] == "uint8" and len(header["counts"]) == 256
    assert bytes(cache.open_ids(path, header)) == blob * 200

    out = tmp_path / "run"
    assert main(["train", "--no-progress", *tiny_overrides(src, out, **{"data.vocab": "bytes", "train.max_steps": 10})]) == 0
    ck = checkpoint.load(out / "ckpt.pt")
    assert ck["vocab_mode"] == "bytes" and ck["model_args"]["vocab_size"] == 256
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--length", "200", "--seed", "3", "--prime", "naïve"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("naïve") and len(printed) > 20  # bytes decoded (U+FFFD where not UTF-8)


def test_byte_mode_scores_bytes(tmp_path, capsys):
    """A byte-mode model scores the file it trained on, UTF-8 or not, per byte: a file of N bytes
    makes N - 1 predictions."""
    rng = random.Random(2)
    src = tmp_path / "bin.dat"
    src.write_bytes(bytes(rng.randrange(256) for _ in range(3000)))  # not UTF-8
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *tiny_overrides(src, out, **{"data.vocab": "bytes", "train.max_steps": 4,
                                                                         "train.sample_interval": 0})]) == 0
    model, _, _ = checkpoint.load_model(out)
    utf8 = tmp_path / "u.txt"
    utf8.write_text("naïve café, déjà vu — " * 40, encoding="utf-8")
    assert len(utf8.read_text(encoding="utf-8")) < len(utf8.read_bytes())
    for f in (src, utf8):
        raw = f.read_bytes()
        want = float(sample.char_losses(model, torch.tensor(list(raw))).sum()) / (len(raw) - 1)
        capsys.readouterr()
        assert main(["sample", "--checkpoint", str(out), "--score", str(f)]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out == (f"loss {want:.4f} nats/byte | {want / math.log(2):.4f} bits/byte | "
                                           f"{len(raw) - 1} bytes scored\n")


def test_a_large_alphabet_is_uint16_and_trains(tmp_path):
    rng = random.Random(1)
    symbols = [chr(0x4E00 + i) for i in range(3000)]  # 3000 CJK ideographs
    text = "".join(rng.choice(symbols) + ("\n" if rng.random() < 0.05 else "") for _ in range(30000))
    src = tmp_path / "zh.txt"
    src.write_text(text, encoding="utf-8")
    path, header, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    vocab = vocab_mod.Vocab.from_text(text)
    assert header["dtype"] == "uint16" and header["vocab"] == vocab.chars and len(vocab) > 2900
    assert torch.equal(torch.from_numpy(cache.open_ids(path, header)).long(), vocab.encode(text))
    summary = train(build_config({}, tiny_overrides(src, tmp_path / "run", **{"train.max_steps": 6,
                                                                               "train.eval_interval": 3})),
                    progress=False, log=quiet)
    assert summary["step"] == 6 and np.isfinite(summary["val_loss"])
    assert cache.smallest_dtype(256) == np.uint8 and cache.smallest_dtype(257) == np.uint16
    assert cache.smallest_dtype(70000) == np.uint32


def test_fine_tuning_carries_the_shared_characters_over(tmp_path, corpus_file):
    src_run = tmp_path / "src"
    train(build_config({}, tiny_overrides(corpus_file, src_run, **{"train.max_steps": 10})), progress=False, log=quiet)
    old = checkpoint.load(src_run / "best.pt")
    letters = tmp_path / "letters.txt"
    letters.write_text("Dear Sir, the fox is QUICK; yours, Z.\n" * 100)  # new: D S , Q U I C K ; Z ...
    cfg = build_config({}, tiny_overrides(letters, tmp_path / "ft", **{"train.max_steps": 10}))
    cfg.train.init_from = str(src_run)
    said = []
    trainer = Trainer(cfg, progress=False, log=said.append)
    vocab, model = trainer.corpus.vocab, trainer.model
    n_old = len(old["vocab"])
    assert vocab.chars[:n_old] == old["vocab"] and set(vocab.chars[n_old:]) == set("DS,QUICK;Z") - set(old["vocab"])
    new = vocab.chars[n_old:]  # the growth is said, not silent
    assert f"vocabulary extended by {len(new)} characters: {', '.join(map(repr, new))}" in said, said
    W = old["model"]
    assert torch.equal(model.cells[0].W_xh[:, :n_old], W["cells.0.W_xh"])
    assert torch.equal(model.W_hy[:n_old], W["W_hy"]) and torch.equal(model.b_y[:n_old], W["b_y"])
    assert torch.equal(model.cells[0].W_hh, W["cells.0.W_hh"])
    assert not torch.equal(model.cells[0].W_xh[:, n_old], torch.zeros_like(model.cells[0].W_xh[:, n_old]))
    assert trainer.opt.state_dict()["state"] == {} and trainer.state.step == 0
    # the batches are in the run's vocabulary: decoding them gives the new text back
    x, _, _ = trainer.batcher.next()
    assert vocab.decode(x[0].tolist()) in letters.read_text() * 2
    summary = trainer.run()
    ck = checkpoint.load(tmp_path / "ft" / "ckpt.pt")
    assert ck["config"]["train"]["init_from"] == str(src_run) and ck["vocab"] == vocab.chars
    assert summary["step"] == 10
    # resuming the fine-tuned run keeps its vocabulary
    assert main(["train", "--resume", str(tmp_path / "ft"), "--no-progress", "train.max_steps=12"]) == 0


def test_fine_tuning_fits_the_batch_to_a_small_text(tmp_path, corpus_file):
    """A config written for a big corpus fine-tunes on a text too small for its batch: the batch
    shrinks to the streams the text fills, said in one line and recorded in the run's config; a
    fresh run on the same text still refuses it (its config is the user's own)."""
    src_run = tmp_path / "src"
    train(build_config({}, tiny_overrides(corpus_file, src_run, **{"train.max_steps": 4})), progress=False, log=quiet)
    letters = tmp_path / "letters.txt"
    letters.write_text("Dear Sir, the fox is quick.\n" * 20)  # 560 characters: 504 to train on
    cfg = build_config({}, tiny_overrides(letters, tmp_path / "ft", **{"train.max_steps": 4, "train.batch_size": 64}))
    cfg.train.init_from = str(src_run)
    said = []
    summary = train(cfg, progress=False, log=said.append)
    fit = 504 // 17  # streams of seq_len + 1 = 17 characters
    assert (f"fine-tuning on 504 training characters, which fill {fit} streams of train.seq_len + 1 = 17 "
            f"characters: training with train.batch_size={fit} (not 64)") in said
    assert summary["step"] == 4
    assert checkpoint.load(tmp_path / "ft" / "ckpt.pt")["config"]["train"]["batch_size"] == fit
    fresh = build_config({}, tiny_overrides(letters, tmp_path / "fresh", **{"train.batch_size": 64}))
    with pytest.raises(UserError, match="do not fill one batch of 64 streams"):
        train(fresh, progress=False, log=quiet)


def test_step_checkpoints_are_kept_pruned_and_sampled(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    train(build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 40, "train.keep_checkpoints": 2})),
          progress=False, log=quiet)
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-30.pt", "ckpt-40.pt"]
    assert checkpoint.load(out / "ckpt-30.pt")["step"] == 30
    assert main(["sample", "--checkpoint", str(out), "--step", "30", "--length", "10", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--step", "10", "--length", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint of step 10") and "30, 40" in err and err.count("\n") == 1


def test_prime_file(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    train(build_config({}, tiny_overrides(corpus_file, out, **{"train.max_steps": 10})), progress=False, log=quiet)
    prime = tmp_path / "prime.txt"
    prime.write_text(corpus_file.read_text()[:3000])
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--prime-file", str(prime), "--length", "20", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(prime.read_text()) and len(printed) == 3000 + 20 + 1
    assert main(["sample", "--checkpoint", str(out), "--prime-file", str(prime), "--prime", "x"]) == 2
    assert "contradict" in capsys.readouterr().err


def _error_of(argv, capsys):
    capsys.readouterr()
    code = main(["train", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_caches_are_refused_and_left_alone(tmp_path, corpus_file, capsys):
    path, header, _ = cache.ensure(corpus_file, "chars", progress=False, log=quiet)
    good = path.read_bytes()
    args = ["--no-progress", *tiny_overrides(corpus_file, tmp_path / "run", **{"train.max_steps": 2})]

    path.write_bytes(good[:-10])  # truncated
    assert "is truncated or damaged" in _error_of(args, capsys)
    assert path.read_bytes() == good[:-10] and not (tmp_path / "run").exists()

    path.write_bytes(b"NOT-A-CACHE" + good[11:])  # a header that does not match
    assert "header does not match" in _error_of(args, capsys)
    path.write_bytes(good[:12] + good[12:20] + b"{]" + good[22:])  # the magic, then a broken header
    assert "corrupt or foreign header" in _error_of(args, capsys)

    path.write_bytes(good)  # a cache given directly as data.path whose source has since changed
    corpus_file.write_text(corpus_file.read_text() + "more\n")
    direct = ["--no-progress", *tiny_overrides(path, tmp_path / "run", **{"train.max_steps": 2})]
    assert "is stale" in _error_of(direct, capsys)
    assert path.read_bytes() == good


def test_a_cache_alone_trains_when_its_source_is_gone(tmp_path, tiny_text):
    src = tmp_path / "c.txt"
    src.write_text(tiny_text)
    path, _, _ = cache.ensure(src, "chars", progress=False, log=quiet)
    src.unlink()
    summary = train(build_config({}, tiny_overrides(path, tmp_path / "run", **{"train.max_steps": 4})),
                    progress=False, log=quiet)
    assert summary["step"] == 4


def test_bad_fine_tuning_and_data_flags(tmp_path, corpus_file, capsys):
    src_run = tmp_path / "src"
    train(build_config({}, tiny_overrides(corpus_file, src_run, **{"train.max_steps": 4})), progress=False, log=quiet)
    base = ["--no-progress", *tiny_overrides(corpus_file, tmp_path / "ft", **{"train.max_steps": 2})]
    err = _error_of(["--init-from", str(corpus_file), *base], capsys)
    assert "truncated or corrupt" in err or "not a charrnn_torch checkpoint" in err
    err = _error_of(["--init-from", str(src_run), *base, "model.hidden_size=48"], capsys)
    assert "fine-tuning keeps the architecture" in err
    assert "--resume" in _error_of(["--init-from", str(src_run), "--resume", str(src_run)], capsys)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1") * 10)
    err = _error_of(["--no-progress", *tiny_overrides(bad, tmp_path / "b", **{"train.max_steps": 2})], capsys)
    assert "bad byte at offset 3" in err and "data.vocab=bytes" in err
    assert "data.vocab" in _error_of(["--no-progress", *tiny_overrides(corpus_file, tmp_path / "c",
                                                                       **{"data.vocab": "letters"})], capsys)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "b").exists()


def test_the_build_message_is_meaningful_at_small_sizes(tmp_path):
    """A small corpus's build says its size in bytes and no speed (a speed over a few milliseconds
    of start-up says nothing); from 10 MB up it gives MB and MB/s."""
    small = tmp_path / "letters.txt"
    small.write_text("Dear Sir,\n" * 123)
    said = []
    cache.ensure(small, "chars", progress=False, log=said.append)
    assert said[-1].startswith(f"encoded {small} (1,230 bytes) into ") and "MB" not in said[-1]
    big = tmp_path / "big.txt"
    big.write_text("the quick brown fox\n" * 520_000)  # 10.4 MB
    cache.ensure(big, "chars", progress=False, log=said.append)
    assert said[-1].startswith(f"encoded {big} (10.4 MB) into ") and said[-1].endswith(" MB/s)")
