"""The corpus of a token vocabulary (data.vocab=words or bpe, tokens.py): its vocabulary built from
the training split, its ids, written once in cache.py's format and memory-mapped from then on.

The text is split first, by characters: the first (1 - data.val_fraction) for training, the rest
for validation, the very characters a chars model validates on. The vocabulary is built from the
training split alone (a BPE is trained once, on it), and each split is encoded on its own, so no
token straddles them.

The cache lives where cache.py puts a corpus's (beside it, else in the user's cache folder), named
for the settings it was built with (corpus.txt.words-<key>.ids, key: a hash of SETTINGS' values),
and is rebuilt when its source changes (cache.py's fingerprint). Besides cache.py's header (the
tokens, their counts, the source) it records, under "tokens": the settings, the BPE's tokenizer
JSON, where the splits meet, the characters of the training split, and the length of every
unknown token of the validation split, which bits per character need (a words model's UNK stands
for words of any length). The ids and the vocabulary that gave them are one file, written
atomically, so they cannot disagree. Encoding holds the text in memory once, while it is built.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from . import cache, tokens
from .. import files
from ..errors import UserError

VERSION = 1  # of the "tokens" record; another value is another cache
SETTINGS = {"words": "max_vocab", "bpe": "bpe_vocab_size"}  # the data key each vocabulary is built with


def settings(data_cfg):
    """What a token cache is built from besides its text: other values are another cache."""
    key = SETTINGS[data_cfg.vocab]
    return {"vocab": data_cfg.vocab, key: getattr(data_cfg, key), "val_fraction": data_cfg.val_fraction,
            "version": VERSION}


def cache_mode(wanted):
    """The cache's name for these settings: words-<key>, as in corpus.txt.words-<key>.ids."""
    key = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:12]
    return f"{wanted['vocab']}-{key}"


def split_text(text, val_fraction):
    """(training text, validation text): corpus.split's rule, on characters."""
    n_val = int(len(text) * val_fraction)
    return text[:len(text) - n_val], text[len(text) - n_val:]


def build_vocab(train_text, data_cfg, progress, log):
    if data_cfg.vocab == "words":
        return tokens.WordVocab.from_text(train_text, data_cfg.max_vocab)
    vocab = tokens.BPEVocab.train(train_text, data_cfg.bpe_vocab_size, progress)
    if len(vocab) < data_cfg.bpe_vocab_size:
        log(f"data.bpe_vocab_size={data_cfg.bpe_vocab_size}: the training split has pairs for {len(vocab) - 256} "
            f"merges only, so the vocabulary has {len(vocab)} tokens")
    return vocab


def encode(source, data_cfg, read_text, progress=True, log=print):
    """(the cache's header, the ids as a numpy array) of the text file source, read by read_text."""
    fp = cache.fingerprint(source)
    train, val = split_text(read_text(source), data_cfg.val_fraction)
    vocab = build_vocab(train, data_cfg, progress, log)
    train_ids, _ = vocab.tokenize(train)
    val_ids, val_lens = vocab.tokenize(val)
    dtype = cache.smallest_dtype(len(vocab))
    ids = torch.cat([train_ids, val_ids]).numpy().astype(dtype)
    unk = [] if vocab.unk_id is None else val_lens[val_ids == vocab.unk_id].tolist()
    header = {"version": cache.VERSION, "vocab_mode": data_cfg.vocab, "length": len(ids), "dtype": dtype.name,
              "vocab": vocab.chars, "counts": np.bincount(ids, minlength=len(vocab)).tolist(),
              "source": {"path": str(Path(source).resolve()), **fp},
              "tokens": {"settings": settings(data_cfg), "tokenizer": vocab.tokenizer_json,
                         "train_length": len(train_ids), "train_chars": len(train), "unk_lengths": unk}}
    if cache.fingerprint(source) != fp:
        raise UserError(f"data file {source} changed while it was being encoded; run again")
    return header, ids


def _current(dest, source, wanted):
    """Whether dest is a finished token cache of source, as it is now, with these settings.
    OSError: it cannot be read."""
    if not dest.exists():
        return False
    header = cache.read_header(dest)
    return (header.get("tokens", {}).get("settings") == wanted and not cache.is_stale(header)
            and header["source"]["path"] == str(source.resolve()))


def load(source, data_cfg, read_text, progress=True, log=print, install=True):
    """(ids, header, pending), as cache.load returns them, for a token vocabulary: the cache of
    source (a text file, read by read_text when it must be encoded) with data_cfg's settings,
    built where cache.cache_places allows, or kept in memory for this run where none does."""
    source, wanted = Path(source), settings(data_cfg)
    problems, writable = [], []
    for dest in cache.cache_places(source, cache_mode(wanted)):
        files.remove_abandoned(dest)
        try:
            if _current(dest, source, wanted):
                return cache.load(dest, data_cfg.vocab, progress, log)
        except OSError as e:  # never replaced: it may be someone else's, private to them
            problems.append(f"cannot read {dest} ({e.strerror or e})")
            continue
        writable.append(dest)
    header, ids = encode(source, data_cfg, read_text, progress, log)
    for dest in writable:
        try:
            path, header = cache.write(dest, header, ids, source, install)
        except OSError as e:
            problems.append(f"cannot write {dest} ({e.strerror or e})")
            continue
        log(f"encoded {source} into {len(ids):,} tokens of a {len(header['vocab']):,}-token {data_cfg.vocab} "
            f"vocabulary, cached in {dest}")
        return ids, header, (None if install else (path, dest))
    log(f"no place for the token cache of {source} ({'; '.join(problems)}); its ids are kept in memory for this run")
    return ids, header, None


def train_length(header):
    """Where a token corpus's splits meet (ids of the training split); None for chars and bytes."""
    return header.get("tokens", {}).get("train_length")


def char_counts(header, vocab, val_ids):
    """(the characters of the training split, the characters each validation id spells) of a
    token corpus, for bits per character; (None, None) for chars and bytes, one per id."""
    record = header.get("tokens")
    if record is None:
        return None, None
    val_ids = val_ids.long()
    lens = vocab.lengths[val_ids]
    if vocab.unk_id is not None:
        unknown = val_ids == vocab.unk_id
        if int(unknown.sum()) != len(record["unk_lengths"]):
            raise UserError(f"the token cache of {header['source']['path']} is corrupt (it records "
                            f"{len(record['unk_lengths'])} unknown tokens where its ids hold {int(unknown.sum())}); "
                            f"delete it to have it rebuilt")
        lens[unknown] = torch.tensor(record["unk_lengths"], dtype=torch.long)
    return record["train_chars"], lens
