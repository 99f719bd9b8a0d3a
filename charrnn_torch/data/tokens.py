"""The token vocabularies: words (data.vocab=words) and byte-level BPE (data.vocab=bpe).

They offer what vocab.py's do (mode, unit, chars, encode, decode, streamer, unknown, len), and
tokenize(text) -> (ids, lengths): lengths[i] is the number of characters of text that token i
spells, which bits per character count. Both are built from a training text (the corpus cache,
token_cache.py, builds them from the training split) and rebuilt from what a checkpoint records.

words: the text cut by one rule, WORDS. A token is a word (a run of letters, digits or
underscores: regex \\w+) or a single punctuation mark, either with the one space before it when
there is one, or else a run of whitespace (the last space of a run before a word goes with the
word). Joining the tokens gives the text back. The vocabulary is the unknown token UNK, then the
data.max_vocab - 1 most frequent tokens of the training text (equal counts in sorted order); any
other token reads as UNK, so a word model never pays to spell a word it does not know.

bpe: GPT-2's byte-level BPE, trained by Hugging Face ``tokenizers`` (the [bpe] extra) to
data.bpe_vocab_size tokens: the 256 byte values, then the merges learned, in order (fewer when the
text has no more pairs to merge). Any text encodes; none is unknown.
"""
import codecs
import re
from collections import Counter

import torch

from ..errors import UserError

MODES = ("words", "bpe")  # the token vocabularies; vocab.MODES is the list of every data.vocab
WORDS = re.compile(r" ?\w+| ?[^\w\s]|\s+(?= \S)|\s+")
UNK = "<unk>"  # never a token of WORDS (it cuts "<", "unk", ">"), so it names no real text
BPE_MIN = 257  # the 256 byte values and at least one merge: fewer is data.vocab=bytes
BPE_MAX = 2**18
EXTRA = 'pip install -e ".[bpe]"'


def require_tokenizers():
    """The tokenizers module, or a UserError naming the extra that installs it."""
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"data.vocab=bpe needs the tokenizers package (Hugging Face), not installed: {EXTRA}") from None
    return tokenizers


class WordVocab:
    """data.vocab=words: tokens (chars[0] is UNK) <-> ids."""

    mode = "words"
    unit = "token"
    tokenizer_json = None

    def __init__(self, tokens):
        self.chars = list(tokens)
        if not self.chars or self.chars[0] != UNK:
            raise UserError(f"a words vocabulary starts with {UNK}")
        self.stoi = {t: i for i, t in enumerate(self.chars)}
        self.unk_id = 0
        self.lengths = torch.tensor([0] + [len(t) for t in self.chars[1:]], dtype=torch.long)  # UNK's: unknown

    @classmethod
    def from_text(cls, text, max_vocab):
        counts = Counter(WORDS.findall(text))
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_vocab - 1]
        return cls([UNK] + [t for t, _ in top])

    def __len__(self):
        return len(self.chars)

    def __contains__(self, token):
        return token in self.stoi

    def unknown(self, text):
        return []  # an unknown word is read as UNK, as training read it, never refused

    def tokenize(self, text):
        pieces = WORDS.findall(text)
        ids = torch.tensor([self.stoi.get(p, 0) for p in pieces], dtype=torch.long)
        return ids, torch.tensor([len(p) for p in pieces], dtype=torch.long)

    def encode(self, text):
        return self.tokenize(text)[0]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def streamer(self):
        return self.chars.__getitem__


def byte_symbols():
    """GPT-2's byte -> printable character table, the alphabet byte-level BPE writes its tokens
    in (tokenizers uses it but does not expose it): a token's string, mapped back, is its bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


class BPEVocab:
    """data.vocab=bpe: a trained byte-level BPE (its tokenizers JSON) <-> ids. chars holds each token
    as tokenizers writes it, in GPT-2's byte alphabet ("Ġthe" is " the"): distinct labels, where
    their text would repeat U+FFFD for every token that ends inside a character."""

    mode = "bpe"
    unit = "token"
    unk_id = None

    def __init__(self, tokenizer_json):
        self.tokenizer = require_tokenizers().Tokenizer.from_str(tokenizer_json)
        self.tokenizer_json = tokenizer_json
        byte_of = {s: b for b, s in byte_symbols().items()}
        by_id = sorted((i, s) for s, i in self.tokenizer.get_vocab().items())
        self.token_bytes = [bytes(byte_of[c] for c in s) for _, s in by_id]
        self.chars = [s for _, s in by_id]
        # A character starts at every byte that is not a UTF-8 continuation byte (0b10xxxxxx).
        self.lengths = torch.tensor([sum((c & 0xC0) != 0x80 for c in b) for b in self.token_bytes], dtype=torch.long)

    @classmethod
    def train(cls, text, vocab_size, progress=True, piece=1 << 16):
        """A byte-level BPE of up to vocab_size tokens learned from text (read in pieces of about
        piece characters, counted in parallel)."""
        tk = require_tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()  # for whoever loads the JSON with tokenizers itself
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=progress, special_tokens=[],
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(pieces(text, piece), trainer)
        return cls(tokenizer.to_str())

    def __len__(self):
        return len(self.token_bytes)

    def __contains__(self, text):
        return True

    def unknown(self, text):
        return []

    def tokenize(self, text):
        ids = torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)
        return ids, self.lengths[ids]

    def encode(self, text):
        return self.tokenize(text)[0]

    def decode(self, ids):
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def streamer(self):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda i: decoder.decode(self.token_bytes[i])


CUT = re.compile(r"(?<=\S)\n(?=\S)")  # a newline between two non-spaces: GPT-2's pre-tokenizer cuts it the same alone


def pieces(text, size):
    """text in pieces of about size characters for tokenizers to count in parallel, each cut
    after a newline that GPT-2's pre-tokenizer reads the same at the end of a piece as inside the
    text (CUT), so the pieces give the counts the whole text would."""
    start = 0
    while start < len(text):
        cut = CUT.search(text, start + size)
        end = len(text) if cut is None else cut.end()
        yield text[start:end]
        start = end
