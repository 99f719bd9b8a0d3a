"""Generation and scoring: ancestral sampling (temperature, top-k, top-p), greedy, beam search;
and how ``charrnn sample`` prints them.

As in the tutorial, the prime text runs through the model once to build the
hidden state; after that each new character costs one step, with the state
carried. The prefix is never re-run. How each character is drawn is one ``Sampling`` value,
whose defaults are the CLI's.
"""
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.vocab import drop_unknown
from ..errors import UserError
from ..model.cells import evaluating, map_state
from ..model.stepper import Stepper, supports

DEFAULT_LENGTH = 500  # symbols generated after the prime, when not told: characters (tokens for words, bpe)


@dataclass(frozen=True)
class Sampling:
    """How each next character is drawn. temperature divides the logits; top_k keeps the k most
    likely (0: all); top_p keeps the smallest set whose probability reaches p (1: all); greedy takes
    the most likely, ignoring the rest. seed fixes the draws (None: fresh ones each time): the
    same seed gives the same text here, from ``charrnn sample --seed`` and from the Python API."""
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    seed: int = None

    def draw(self):
        """n -> n uniforms in [0, 1), from a CPU generator seeded by seed, so a seed gives the same
        text on any device."""
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return lambda n: torch.rand(n, generator=generator, dtype=torch.float64)


def check_prime(vocab, prime):
    bad = vocab.unknown(prime)
    if bad:
        raise UserError(f"prime character{'s' if len(bad) > 1 else ''} not in the vocabulary: "
                        f"{', '.join(repr(c) for c in bad)}")
    if not prime:
        raise UserError("prime text is empty")


def default_prime(vocab, char_counts=None):
    """A newline when the vocabulary has one, else its most frequent character
    (char_counts[i] counts vocab.chars[i] in the training text), else its first."""
    if "\n" in vocab:
        return "\n"
    if char_counts:
        return vocab.chars[max(range(len(vocab)), key=lambda i: char_counts[i])]
    return vocab.chars[0]


def filter_probs(logits, temperature=1.0, top_k=0, top_p=1.0, out=None):
    """(N, V) logits -> (N, V) float64 probabilities after temperature, top-k and top-p. The largest
    logit is subtracted before the division: every logit / temperature is then <= 0, so no positive
    temperature overflows it (1e-310 is greedy; logits / 1e-310 would be inf, and inf - inf NaN).
    out: two (N, V) float64 buffers (work, probabilities) for a caller that draws many times; the
    same aten calls either way, so the same bits."""
    work, probs = out or (None, None)
    z = logits.to(torch.float64, copy=True) if work is None else work.copy_(logits)
    z.sub_(z.amax(-1, keepdim=True)).div_(temperature)
    if top_k > 0 and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[:, -1:]
        z.masked_fill_(z < kth, float("-inf"))
    probs = torch.softmax(z, -1, out=probs)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        # Keep the smallest prefix whose mass reaches top_p: a token stays while
        # the mass of the tokens ranked above it is still short of top_p.
        keep_sorted = mass_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def pick(probs, u, out=None):
    """Inverse-CDF sampling: the first id whose cumulative probability exceeds u (N,), or (N, 1) float64
    for a caller that shaped its uniforms already. out: a (N, V) float64 buffer for the cumulative
    probabilities and a (N, 1) int64 one for the ids."""
    cdf, ids = out or (None, None)
    cdf = torch.cumsum(probs, -1, out=cdf)
    u = u if u.dim() == 2 else u.to(cdf.dtype)[:, None].contiguous()
    return torch.searchsorted(cdf, u, right=True, out=ids).clamp_(max=probs.shape[-1] - 1)[:, 0]


def _device(model):
    return next(model.parameters()).device


def one_step(model, state):
    """ids (N,) -> the next logits (N, V), the state carried from state on: a Stepper (the same bits
    as the model, without its per-call cost) where one runs the model, else the model itself."""
    if supports(model):
        return Stepper(model, state)
    carried = [state]

    def step(ids):
        logits, carried[0] = model(ids[:, None], carried[0])
        return logits[:, -1]
    return step


DRAW_BLOCK = 1024  # uniforms drawn per call, per stream: one draw(N * k) is the same numbers as k draw(N)


@torch.no_grad()
def sample_ids(model, prime_ids, length, sampling=Sampling(), draw=None, on_step=None):
    """prime_ids (N, P) -> generated ids (N, length), each drawn as sampling says. draw(n) returns n
    uniforms in [0, 1) (default: sampling.draw()), a stream whose n * k come out the same however
    they are asked for.

    on_step(block) is called with the new ids, a (k, N) block of k >= 1 characters a stream, in order,
    as soon as they exist: one character at a time, or COMPILED_BLOCK of them from a compiled loop.
    """
    draw = draw or sampling.draw()
    N = prime_ids.shape[0]
    with evaluating(model):
        logits, state = model(prime_ids.to(_device(model)))
        last, step = logits[:, -1], one_step(model, state)
        ids = torch.empty(length, N, dtype=torch.long, device=last.device)
        work, probs, cdf = (torch.empty(N, last.shape[1], dtype=torch.float64, device=last.device) for _ in range(3))
        loop = step.compiled_loop(sampling, work, probs, cdf) if isinstance(step, Stepper) else None
        if loop is not None:
            step.logits.copy_(last)
            compiled_blocks(loop, ids.view(length, N, 1), sampling.greedy, draw, on_step)
            return ids.t().cpu()
        # Every view the loop needs, made up front in one call each: at ~4 us an indexing, a
        # character's few would cost as much as its arithmetic.
        columns, column_pairs, blocks = ids.unbind(0), ids.view(length, N, 1).unbind(0), ids.split(1)
        for i, (column, pair, block) in enumerate(zip(columns, column_pairs, blocks)):
            if sampling.greedy:
                torch.argmax(last, -1, keepdim=True, out=pair)
            else:
                if i % DRAW_BLOCK == 0:
                    us = draw(N * min(DRAW_BLOCK, length - i)).view(-1, N, 1).to(last.device).unbind(0)
                p = filter_probs(last, sampling.temperature, sampling.top_k, sampling.top_p, out=(work, probs))
                pick(p, us[i % DRAW_BLOCK], out=(cdf, pair))
            if on_step is not None:
                on_step(block)
            if i + 1 < length:
                last = step(column)  # one step, state carried
    return ids.t().cpu()


COMPILED_BLOCK = 64  # characters per call of a compiled loop: on_step hears of them a block at a time


def compiled_blocks(loop, pairs, greedy, draw, on_step):
    """sample_ids' loop as a Stepper's compiled_loop runs it: the same draws, COMPILED_BLOCK
    characters a call (it divides DRAW_BLOCK), then on_step with the block of them."""
    length, N, _ = pairs.shape
    for start in range(0, length, COMPILED_BLOCK):
        stop = min(start + COMPILED_BLOCK, length)
        if not greedy and start % DRAW_BLOCK == 0:
            us = draw(N * min(DRAW_BLOCK, length - start)).to(torch.float64).view(-1, N, 1)  # as pick promotes it
        offset = start % DRAW_BLOCK
        loop.run(pairs[start:stop], None if greedy else us[offset:offset + stop - start], stop < length)
        if on_step is not None:
            on_step(pairs[start:stop, :, 0])


def generate_batch(model, vocab, prime, length, num_samples=1, sampling=Sampling(), on_step=None):
    """num_samples independent continuations of prime, in one batch; each string includes prime."""
    check_prime(vocab, prime)
    prime_ids = vocab.encode(prime)[None].expand(num_samples, -1)
    ids = sample_ids(model, prime_ids, length, sampling, on_step=on_step)
    return [prime + vocab.decode(row.tolist()) for row in ids]


def generate(model, vocab, prime, length=DEFAULT_LENGTH, sampling=Sampling(), on_text=None):
    """One continuation of prime (prime included). on_text(str) receives the new text as it is drawn:
    a character at a time, or a block of them from a compiled loop (sample_ids' on_step)."""
    if on_text is not None:
        text_of = vocab.streamer()  # bytes mode: waits for a character's last byte before printing it
        on_step = lambda block: on_text("".join(map(text_of, block[:, 0].tolist())))  # noqa: E731  one stream
    else:
        on_step = None
    return generate_batch(model, vocab, prime, length, 1, sampling, on_step)[0]


@torch.no_grad()
def beam_search(model, vocab, prime, length, beam_width):
    """The most likely continuation of `length` characters found by beam search.

    Returns (text including prime, log-probability of the continuation in nats).
    With beam_width=1 it is greedy decoding.
    """
    check_prime(vocab, prime)
    with evaluating(model):
        logits, h = model(vocab.encode(prime)[None].to(_device(model)))  # h: (L, 1, H)
        logp = F.log_softmax(logits[:, -1].double(), -1)  # (K, V), K beams (1 at first)
        scores = torch.zeros(1, dtype=torch.float64, device=logp.device)
        seqs = torch.zeros(1, 0, dtype=torch.long, device=logp.device)
        V = logp.shape[-1]
        for i in range(length):
            cand = (scores[:, None] + logp).reshape(-1)  # (K * V,)
            scores, flat = cand.topk(min(beam_width, cand.numel()))
            beam, char = flat // V, flat % V
            seqs = torch.cat([seqs[beam], char[:, None]], 1)
            if i + 1 < length:
                logits, h = model(char[:, None], map_state(lambda s: s[:, beam], h))
                logp = F.log_softmax(logits[:, -1].double(), -1)
    best = int(scores.argmax()) if length else 0
    text = prime + vocab.decode(seqs[best].tolist()) if length else prime
    return text, float(scores[best]) if length else 0.0


@torch.no_grad()
def char_losses(model, ids, chunk_len=1024, keep_logits=False):
    """The loss (nats, float64) of each character ids[1:] given those before it: (N-1,), state
    carried across chunks of chunk_len from the zero state. With keep_logits, also the (N-1, V)
    logits that predicted them."""
    with evaluating(model):
        ids = ids.to(_device(model))
        losses, kept, h = [], [], None
        for i in range(0, len(ids) - 1, chunk_len):
            y = ids[i + 1:i + 1 + chunk_len][None]
            logits, h = model(ids[i:i + y.shape[1]][None], h)
            losses.append(F.cross_entropy(logits[0].double(), y[0], reduction="none"))
            if keep_logits:
                kept.append(logits[0])
    losses = torch.cat(losses).cpu()
    return (losses, torch.cat(kept).cpu()) if keep_logits else losses


def score(model, vocab, text, chunk_len=1024, total_nats=None):
    """Mean loss per symbol (nats/char; nats/byte for a data.vocab=bytes model, whose text may be
    bytes; nats/token for words and bpe) and bits per character of the model on text, state
    carried across chunks. "count" is the number of predictions: every symbol but the first;
    "chars" the characters they spell, over which "bpc" spreads the total (for chars and bytes,
    count: bpc is the loss in bits). total_nats(ids) replaces the plain model's summed loss
    (dynamic evaluation's, say).

    Characters outside a chars vocabulary are removed before scoring and reported (count and
    set), never mapped to some other id; a words model reads an unknown word as its unknown token,
    as training did, and "unknown_tokens" counts those scored.
    """
    kept, unknown = drop_unknown(vocab, text)
    ids, lengths = vocab.tokenize(kept)
    if len(ids) < 2:
        raise UserError(f"nothing to score: the text has {len(ids)} in-vocabulary {vocab.unit}s (need >= 2)")
    total = total_nats(ids) if total_nats else float(char_losses(model, ids, chunk_len).sum())
    count = len(ids) - 1
    loss = total / count
    chars = count if lengths is None else int(lengths[1:].sum())
    bpc = loss / math.log(2) if lengths is None else total / max(chars, 1) / math.log(2)
    unk = 0 if vocab.unk_id is None else int((ids[1:] == vocab.unk_id).sum())
    return {"loss": loss, "bpc": bpc, "count": count, "chars": chars, "unit": vocab.unit, "total_nats": total,
            "unknown_chars": len(text) - len(kept), "unknown_set": unknown, "unknown_tokens": unk}


# ---------------------------------------------------------------- what charrnn sample prints

def write_generation(model, vocab, prime, length, sampling, emit, num_samples=1, beam_width=0):
    """charrnn sample's text through emit(str): one sample as it is drawn, several each under its
    header, or beam search's best text, its log-probability on stderr."""
    if beam_width:
        text, logp = beam_search(model, vocab, prime, length, beam_width)
        emit(text + "\n")
        print(f"log-probability {logp:.4f} nats ({-logp / max(length, 1):.4f} nats/{vocab.unit})", file=sys.stderr)
    elif num_samples == 1:
        emit(prime)
        generate(model, vocab, prime, length, sampling, on_text=emit)
        emit("\n")
    else:
        texts = generate_batch(model, vocab, prime, length, num_samples, sampling)
        for i, text in enumerate(texts):  # every sample under its header, the first one too
            emit(("\n" if i else "") + f"----- sample {i + 1} -----\n" + text + "\n")


def print_score(result):
    """charrnn sample --score's lines, from score()'s result (or dynamic evaluation's)."""
    unit, dynamic = result["unit"], "dynamic " if result.get("dynamic") else ""
    if unit == "token":
        print(f"{dynamic}loss {result['loss']:.4f} nats/token | {result['bpc']:.4f} bits/char | {result['count']} "
              f"tokens ({result['chars']} characters) scored")
    else:
        print(f"{dynamic}loss {result['loss']:.4f} nats/{unit} | {result['bpc']:.4f} bits/{unit} | {result['count']} "
              f"{'characters' if unit == 'char' else 'bytes'} scored")
    if result.get("unknown_tokens"):
        print(f"{result['unknown_tokens']} of those tokens were words outside the vocabulary, scored as its unknown "
              f"token: bits/char leave out what spelling them would cost")
    if result["unknown_chars"]:
        print(f"{result['unknown_chars']} characters not in the vocabulary, dropped: "
              f"{', '.join(repr(c) for c in result['unknown_set'])}")
