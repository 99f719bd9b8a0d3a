"""The one command, ``charrnn``, and its subcommands: arguments, dispatch and error reporting only.

    charrnn train | sample | fill | visualize | export | sweep | bench | plot | serve  [flags ...]

``COMMANDS`` is the one table of them. The ``charrnn`` console script (``main``), ``python -m
charrnn_torch`` and the thin ``scripts/<command>.py`` all dispatch through ``run``, each passing
the words the user typed (``prog``), so that usage lines and hints repeat the command as it was
run. Every value a flag takes is checked by its argparse ``type=`` (the validators below) or, for
config keys, by the config schema; a mistake is a ``UserError``, printed as one line ``error:
...`` on stderr with exit status 2. A run that fails under way (a full disk, diverging maths) is a
``RunFailed``: one ``error:`` line that names the last good checkpoint, exit status 1. Never a
traceback.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .tools import bench, data_bench, plots
from .training import checkpoint, config as config_mod, distributed, runs
from . import __version__, files
from .data import corpus, vocab as vocab_mod
from .sampling import dynamic, fill, sample
from .insight import export, gradients, visualize, viz_page
from .training.config import SEED_MAX
from .errors import RunFailed, UserError, one_line, tell
from .training.memory import retain_freed_memory
from .training.runtime import NEEDS_FLOAT64, resolve_device
from .tools.sweep import format_rows, run_sweep
from .training.trainer import Interrupted, train

STEP_MAX = 2**62  # a checkpoint's step number


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _report(fn):
    """fn()'s exit status, with every failure turned into one line on stderr."""
    try:
        return fn()
    except UserError as e:
        tell(f"error: {one_line(e)}")
        return 2
    except RunFailed as e:
        tell(f"error: {one_line(e)}")
        return 1
    except KeyboardInterrupt:
        tell("interrupted")
        return 130
    except BrokenPipeError:  # `... | head` closed stdout: not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


# ---------------------------------------------------------------- validators: the one place flags are checked
# Each returns a parser for argparse's type=. It raises UserError itself (argparse would otherwise
# reword the message), naming the flag and the value it got.

def int_arg(flag, lo, hi):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"{flag} must be an integer, got {text!r}") from None
        if value < lo:
            raise UserError(f"{flag} must be >= {lo}, got {value}")
        if value > hi:
            raise UserError(f"{flag} must be <= {hi}, got {value}")
        return value
    return parse


def float_arg(flag, gt=None, ge=None, le=None):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{flag} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {text}")
        if gt is not None and le is not None and not gt < value <= le:
            raise UserError(f"{flag} must be in ({gt:g}, {le:g}], got {value:g}")
        if gt is not None and le is None and not value > gt:
            raise UserError(f"{flag} must be > {gt:g}, got {value:g}")
        if ge is not None and not value >= ge:
            raise UserError(f"{flag} must be >= {ge:g}, got {value:g}")
        return value
    return parse


def int_list_arg(flag, lo, hi):
    """A comma-separated list of integers, each checked as int_arg() checks one."""
    one = int_arg(flag, lo, hi)
    return lambda text: [one(part) for part in text.split(",")]


def names_arg(flag, what, allowed):
    """A comma-separated list of names, each one of allowed."""
    def parse(text):
        items = [s for s in text.split(",") if s]
        bad = [s for s in items if s not in allowed] or ([] if items else [text])
        if bad:
            raise UserError(f"unknown {what} {bad[0]!r} in {flag}; choose from {', '.join(allowed)}")
        return items
    return parse


def device_arg(flag, no_mps=None):
    """A device name (config.is_device_name); no_mps: why this command cannot run on mps."""
    def parse(text):
        if not config_mod.is_device_name(text):
            raise UserError(f"{flag} must be {config_mod.DEVICE_NAMES}, got {text!r}")
        if text == "mps" and no_mps:
            raise UserError(f"{flag} mps: {no_mps}")
        return text
    return parse


def path_arg(flag, check=None):
    """A path (config.check_path: never empty), then check(Path) if given. Every flag that takes a
    path is built on this one; its is_path mark lets the tests find them all."""
    def parse(text):
        config_mod.check_path(flag, text)
        return check(Path(text)) if check else text
    parse.is_path = True
    return parse


def file_arg(flag, existing):
    """A file (never a directory): one that exists, or else one to write in a directory that exists."""
    def check(p):
        if p.is_dir():
            raise UserError(f"{flag} {p} is a directory, not a file")
        if existing:
            files.check_regular(p, flag)
        if existing and not p.is_file():
            raise UserError(f"{flag} {p}: file not found")
        if not existing and not p.parent.is_dir():
            raise UserError(f"{flag} {p}: directory {p.parent} does not exist")
        return p
    return path_arg(flag, check)


def dir_arg(flag):
    """A directory to write into (made if missing): not an existing file."""
    def check(p):
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {p} is a file, not a directory")
        return p
    return path_arg(flag, check)


def given_flags(parser, argv):
    """The dests of the flags argv gives (a flag left at its default is not given), from a second
    parse of argv by parser with every default a marker no value can be."""
    unset = object()
    parser.set_defaults(**dict.fromkeys(vars(parser.parse_intermixed_args(argv)), unset))
    return {dest for dest, value in vars(parser.parse_intermixed_args(argv)).items() if value is not unset}


def refuse_unused(args, dests, why):
    """Refuse those flags of dests that were given (args.given), in one line: why says when they do nothing."""
    given = [d for d in dests if d in args.given]
    if given:
        names = ", ".join("--" + d.replace("_", "-") for d in given)
        raise UserError(f"{names} {'has' if len(given) == 1 else 'have'} no effect {why}")


def _conflicts(pairs):
    """pairs: (condition, message); the first true condition is the error."""
    for condition, message in pairs:
        if condition:
            raise UserError(message)


def _checkpoint_args(p, device_default="cpu"):
    """The flags of every command that reads a trained model: --checkpoint, --step, --device."""
    p.add_argument("--checkpoint", required=True, type=path_arg("--checkpoint"), help="a .pt file, or a run directory (best.pt, else ckpt.pt)")
    p.add_argument("--step", type=int_arg("--step", 0, STEP_MAX), default=None,
                   help="with a run directory: its ckpt-<step>.pt (kept by train.keep_checkpoints)")
    p.add_argument("--device", type=device_arg("--device", NEEDS_FLOAT64), default=device_default,
                   help=f"auto (CUDA, else the CPU) | cpu | cuda | cuda:N (default {device_default})")


def _impl_arg(p):
    """--impl, for the commands that sample a trained model (sample, serve)."""
    p.add_argument("--impl", choices=config_mod.CHOICES["model.impl"], default=None,
                   help="run the model as this impl (default: the checkpoint's). fused_cpp samples one stream "
                        "through a compiled loop, ~6x fused on CPU: for rnn and gru the same text as fused, for "
                        "lstm its own rounding (another text for a seed). Builds once (a C++ compiler and ninja)")


def _spare_inputs(args, outs, *inputs):
    """Refuse, before anything is read or written, an output path (outs) that is the checkpoint the
    command reads, another checkpoint of its run, or one of inputs ((path or None, what it is)).
    Returns the checkpoint file."""
    source = checkpoint.resolve(args.checkpoint, step=args.step)
    keep = checkpoint.kept_files(source) + [(path, what) for path, what in inputs if path]
    for out in outs:
        files.check_not_input("--out", out, keep)
    return source


# ---------------------------------------------------------------- train

def train_parser(prog):
    p = _Parser(prog=prog, description="Train a character-level RNN from a YAML config.", epilog=config_keys_help(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=path_arg("--config"), default=None,
                   help="a YAML file, or a bare name looked up in configs/ (default: shakespeare.yaml); "
                        "with --resume the run's own stored config is used instead")
    p.add_argument("--resume", metavar="RUN", type=path_arg("--resume"), help="continue a run: its directory or a checkpoint file")
    p.add_argument("--force", action="store_true", help="start over in an out_dir that holds a run")
    p.add_argument("--init-from", metavar="CKPT", type=path_arg("--init-from"), default=None,
                   help="fine-tune: start from this checkpoint's (or run directory's best) weights, on the "
                        "config's corpus, with a fresh optimizer and schedule (sets train.init_from)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, each key explained, and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=3e-3 device=cpu")
    return p


def config_keys_help():
    """train --help's list of every config key and what it means (config.key_help)."""
    import textwrap

    help_of = config_mod.key_help()
    width = max(map(len, help_of)) + 2
    lines = ["config keys (in the YAML file, or as key=value; --print-config shows their values):"]
    for key, text in help_of.items():
        lines += textwrap.wrap(text, 100, initial_indent=f"  {key:<{width}}", subsequent_indent=" " * (width + 2))
    return "\n".join(lines)


def train_config(args):
    """(config, the checkpoint to resume and its run directory, or None and None) from train's
    parsed arguments."""
    _conflicts([(args.resume and args.force, "--force and --resume contradict each other: --force starts a "
                                             "run over, --resume continues it"),
                (args.resume and args.init_from, "--init-from starts a new run from a checkpoint's weights; "
                                                 "--resume continues a run: give one")])
    if args.resume is not None:
        refuse_unused(args, ["config"], "with --resume: a run continues with its own config (change keys with "
                                        "key=value overrides)")
        path = checkpoint.resolve(args.resume, names=("ckpt.pt", "best.pt"))
        resume = checkpoint.load(path)
        return config_mod.build_config(resume["config"], args.overrides), resume, path.parent
    name = "shakespeare.yaml" if args.config is None else args.config
    cfg = config_mod.build_config(config_mod.read_yaml(config_mod.find_config(name)), args.overrides)
    if args.init_from is not None:
        cfg.train.init_from = args.init_from
    return cfg, None, None


def train_command(args, prog):
    cfg, resume, resume_dir = train_config(args)
    if args.print_config:
        sys.stdout.write(config_mod.dump_yaml_explained(cfg))
        return 0
    retain_freed_memory()
    dist_info = distributed.from_env(os.environ)
    if dist_info.world_size > 1:
        distributed.start(cfg.device, dist_info)
    try:
        summary = train(cfg, out_dir_explicit="out_dir" in config_mod.override_keys(args.overrides),
                        force=args.force, resume=resume, resume_dir=resume_dir, dist_info=dist_info,
                        progress=not args.no_progress, log=_console_log if dist_info.is_main else _silent)
        # Rank 0 finishes last (hparams, final flush) and hosts the rendezvous store: a rank
        # that tears its process group down first can abort on the store's lost connection.
        distributed.barrier(dist_info)
    except Interrupted as e:
        if dist_info.is_main:
            print(f"interrupted at step {e.step}: checkpoint saved to {Path(e.out_dir) / 'ckpt.pt'}\n"
                  f"resume with: {prog} --resume {e.out_dir}", file=sys.stderr)
        return e.exit_code
    finally:
        distributed.finish(dist_info)
    if dist_info.is_main:
        print(done_line(summary, cfg.train))
    return 0


def done_line(summary, train_cfg):
    """The run's last line: where it ended, and what its time went on. A budget counts training
    only, so a budgeted run says what its evaluations cost beside it, and how to cap them."""
    budget = f" (the budget: {_duration(60 * train_cfg.max_minutes)})" if train_cfg.max_minutes else ""
    passes = summary["evaluations"]
    cap = ("; train.eval_chars=N scores fewer" if train_cfg.max_minutes and not train_cfg.eval_chars
           and summary["eval_seconds"] > 0.1 * summary["train_seconds"] else "")
    what = "val cloze loss" if summary.get("cloze") else "val loss"  # a bidirectional model's is not a LM loss
    return (f"done: {summary['step']} steps, {what} {summary['val_loss']:.4f} "
            f"(bpc {summary['val_bpc']:.4f}), best {summary['best_val']:.4f}; "
            f"trained {_duration(summary['train_seconds'])}{budget}, evaluated {_duration(summary['eval_seconds'])} "
            f"({passes} pass{'es' if passes != 1 else ''} over {summary['eval_chars']:,} "
            f"characters{cap}); run in {summary['out_dir']}")


def _duration(seconds):
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _console_log(line):
    tqdm.write(line)  # above the progress bar, not through it
    sys.stdout.flush()


def _silent(*args, **kwargs):
    return None


# ---------------------------------------------------------------- sample

SAMPLE_DEFAULTS = {"length": sample.DEFAULT_LENGTH, "temperature": sample.Sampling.temperature, "top_k": sample.Sampling.top_k,
                   "top_p": sample.Sampling.top_p, "num_samples": 1, "beam_width": 0}


def sample_parser(prog):
    p = _Parser(prog=prog, description="Generate text from a trained checkpoint, or score a file.")
    _checkpoint_args(p)
    p.add_argument("--prime", default=None, help="text to condition on (default: a newline)")
    p.add_argument("--prime-file", type=file_arg("--prime-file", existing=True), default=None,
                   help="read the prime text from this file (UTF-8), for long primes")
    p.add_argument("--length", type=int_arg("--length", 0, 10**9),
                   help="characters to generate after the prime (tokens for a words or bpe model; default 500)")
    p.add_argument("--temperature", type=float_arg("--temperature", gt=0), help="default 0.8")
    p.add_argument("--top-k", type=int_arg("--top-k", 0, 2**31 - 1), help="sample only from the k most likely (0: all)")
    p.add_argument("--top-p", type=float_arg("--top-p", gt=0, le=1), help="nucleus sampling mass in (0, 1]")
    p.add_argument("--greedy", action="store_true", help="always take the most likely character")
    p.add_argument("--beam-width", type=int_arg("--beam-width", 0, 4096), help="beam search with this many beams")
    p.add_argument("--num-samples", type=int_arg("--num-samples", 1, 65536),
                   help="independent samples, drawn in one batch")
    p.add_argument("--seed", type=int_arg("--seed", 0, SEED_MAX), default=None,
                   help="the same seed gives the same text, on CPU and CUDA and in the exported playground "
                        "(default: a fresh one each time)")
    p.add_argument("--out", type=file_arg("--out", existing=False), default=None,
                   help="also write the text to this file")
    _impl_arg(p)
    p.add_argument("--score", metavar="FILE", type=file_arg("--score", existing=True), default=None,
                   help="print the model's loss and bits/char on FILE")
    defaults = dynamic.Settings()
    p.add_argument("--dynamic", action="store_true",
                   help="with --score: dynamic evaluation, the model adapting to the text as it scores it (Krause "
                        "et al. 2018); its gradient statistics come from the run's training text")
    p.add_argument("--dynamic-lr", type=float_arg("--dynamic-lr", ge=0), default=defaults.lr,
                   help=f"with --dynamic: the step size (default {defaults.lr:g}; 0 gives the plain score)")
    p.add_argument("--dynamic-decay", type=float_arg("--dynamic-decay", ge=0), default=defaults.decay,
                   help=f"with --dynamic: the pull back toward the trained weights (default {defaults.decay:g})")
    return p


def check_sample_args(args):
    """Refuse flags that contradict each other, then fill in the defaults of those not given."""
    given = {k for k in SAMPLE_DEFAULTS if getattr(args, k) is not None}
    sampling = {"temperature", "top_k", "top_p"} & given
    _conflicts([
        (args.prime is not None and args.prime_file, "--prime and --prime-file contradict each other: give one"),
        (args.score and (given or args.prime is not None or args.prime_file or args.greedy or args.out),
         "--score scores a file; it takes no generation flags (--prime, --prime-file, --length, --temperature, "
         "--top-k, --top-p, --greedy, --beam-width, --num-samples, --out)"),
        (args.dynamic and not args.score, "--dynamic changes how --score scores a file: give --score FILE"),

        (args.greedy and args.beam_width, "--greedy and --beam-width contradict each other (--beam-width 1 is "
                                          "greedy)"),
        (args.greedy and (sampling or "num_samples" in given),
         "--greedy takes the most likely character: --temperature, --top-k, --top-p and --num-samples "
         "have no effect with it"),
        (args.beam_width and (sampling or "num_samples" in given),
         "--beam-width returns the most likely text: --temperature, --top-k, --top-p and --num-samples "
         "have no effect with it"),
    ])
    if not args.dynamic:
        refuse_unused(args, ["dynamic_lr", "dynamic_decay"], "without --dynamic: dynamic evaluation is off")
    if args.greedy or args.beam_width or args.score:
        refuse_unused(args, ["seed"], "with --greedy, --beam-width or --score: nothing is drawn at random")
    for k, v in SAMPLE_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def sample_command(args, prog):
    check_sample_args(args)
    if args.out:
        _spare_inputs(args, [args.out], (args.prime_file, "the --prime-file it reads"))
    if args.prime_file:
        args.prime = corpus.read_corpus(args.prime_file)
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step, args.impl)
    checkpoint.refuse_bidirectional(model, args.checkpoint, "score text" if args.score else "generate text")
    if args.score:  # a byte-mode model reads the file's bytes, as its training did
        sample.print_score(_score(args, model, vocab, ckpt, corpus.read_corpus(args.score, vocab.mode)))
        return 0
    prime = sample.default_prime(vocab, ckpt.get("char_counts")) if args.prime is None else known_prime(vocab, args.prime)
    sampling = sample.Sampling(args.temperature, args.top_k, args.top_p, args.greedy, args.seed)
    if not args.out:
        sample.write_generation(model, vocab, prime, args.length, sampling, _emitter(None), args.num_samples,
                                args.beam_width)
        sys.stdout.flush()
        return 0
    with files.writing(args.out, mode=0o644) as write:  # in place once the whole text is
        sample.write_generation(model, vocab, prime, args.length, sampling,
                                _emitter(lambda text: write(text.encode("utf-8"))), args.num_samples, args.beam_width)
    sys.stdout.flush()
    return 0


def known_prime(vocab, prime):
    """The one rule for characters outside the vocabulary, in a prime (here and in the playground)
    as in a scored file: dropped and reported, never mapped to another character; a prime with
    none left is refused."""
    if not prime:
        raise UserError("--prime is empty; leave it out for the default prime")
    kept, unknown = vocab_mod.drop_unknown(vocab, prime)
    if not kept:
        raise UserError(f"no character of the prime is in the vocabulary (not in it: {_listed(unknown)})")
    if unknown:
        n = len(prime) - len(kept)
        print(f"note: {n} prime character{'s' if n > 1 else ''} not in the vocabulary, dropped: {_listed(unknown)}",
              file=sys.stderr)
    return kept


def _listed(chars):
    return ", ".join(repr(c) for c in chars)


def _score(args, model, vocab, ckpt, text):
    if not args.dynamic:
        return sample.score(model, vocab, text)
    run = runs.run_corpus(ckpt, "gather dynamic evaluation's gradient statistics")
    settings = dynamic.Settings(lr=args.dynamic_lr, decay=args.dynamic_decay)
    return dynamic.score(model, vocab, text, run.train_ids, settings, run.lut)


# ---------------------------------------------------------------- fill

def fill_parser(prog):
    p = _Parser(prog=prog, description="Repair text: replace each mask character with the model's most likely "
                                       "character there, the surest gap first, each fill conditioning the next. A "
                                       "bidirectional model reads both sides of a gap; a left-to-right model its "
                                       "left context, rescored by the characters after the gap. Each mask is "
                                       "exactly one missing character: gaps of unknown length are out of scope.")
    _checkpoint_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", default=None, help='the text, e.g. "th_ c_t s_t on the m_t"')
    src.add_argument("--text-file", type=file_arg("--text-file", existing=True), default=None,
                     help="read the text from this file (UTF-8)")
    p.add_argument("--mask-char", default="_", help="the character that marks a gap (default _); every one is a gap")
    p.add_argument("--top-k", type=int_arg("--top-k", 0, 2**31 - 1), default=0,
                   help="also print each gap's k best candidates with their probabilities")
    p.add_argument("--rescore", type=int_arg("--rescore", 0, 4096), default=None,
                   help=f"left-to-right models: rescore each gap's candidates by the likelihood of the next N "
                        f"characters (default {fill.RESCORE}; 0: left context only)")
    return p


def fill_command(args, prog):
    if len(args.mask_char) != 1:
        raise UserError(f"--mask-char must be a single character, got {args.mask_char!r}")
    text = corpus.read_corpus(args.text_file) if args.text_file else args.text
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step)
    if model.bidirectional and args.rescore is not None:
        raise UserError("--rescore is for left-to-right models: a bidirectional model reads both sides of a gap")
    how = fill.Fill(rescore=fill.RESCORE if args.rescore is None else args.rescore)
    result = fill.fill(model, vocab, text, args.mask_char, args.top_k, how, ckpt.get("char_counts"))
    sys.stdout.write(result["text"] + ("" if result["text"].endswith("\n") else "\n"))
    for gap in result["gaps"] if args.top_k else ():
        shown = ", ".join(f"{fill.shown(c)} {q:.3f}" for c, q in gap["candidates"])
        print(f"gap at {gap['position']} (filled {gap['order'] + 1}{_ordinal(gap['order'] + 1)}): {shown}")
    return 0


def _ordinal(n):
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


STREAM_FLUSH_S = 0.05  # a streamed sample reaches the terminal this often: it reads as it comes, and
# costs no write per character (at tens of thousands of characters a second those are the cost)


def _emitter(write_out):
    flushed = [time.monotonic()]

    def emit(text):
        sys.stdout.write(text)
        if time.monotonic() - flushed[0] >= STREAM_FLUSH_S:
            sys.stdout.flush()
            flushed[0] = time.monotonic()
        if write_out:
            write_out(text)
    return emit


# ---------------------------------------------------------------- sweep

def sweep_parser(prog):
    p = _Parser(prog=prog, description="Train one run per combination of a grid.")
    p.add_argument("--config", type=path_arg("--config"), default="shakespeare.yaml",
                   help="the config every run starts from: a YAML file, or a bare name looked up in configs/ "
                        "(default shakespeare.yaml)")
    p.add_argument("--grid", nargs="+", required=True, metavar="key=v1,v2",
                   help="e.g. --grid train.lr=1e-3,3e-3 model.hidden_size=256,512; the first entry and every "
                        "list are axes (one value: a grid of one), later single values apply to every run")
    p.add_argument("--parallel", type=int_arg("--parallel", 1, 256), default=1, help="runs at a time (default 1)")
    p.add_argument("--sweep-dir", type=dir_arg("--sweep-dir"), default=None,
                   help="default: runs/sweep-<config name>")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    return p


def split_grid(entries):
    """(axes, overrides) of --grid's entries. argparse hands key=value overrides that follow the
    grid to --grid too: an entry with a comma-separated list is an axis, one with a single value
    an override; but the first entry is always an axis, so `--grid train.lr=1e-3` is a grid of one."""
    axes = [g for i, g in enumerate(entries) if i == 0 or "," in g.partition("=")[2]]
    return axes, [g for g in entries if g not in axes]


def sweep_command(args, prog):
    grid, overrides = split_grid(args.grid)
    overrides += args.overrides
    sweep_dir, fields, rows = run_sweep(config_mod.find_config(args.config), grid, overrides, args.sweep_dir, args.parallel)
    print()
    print(format_rows(fields, rows))
    print(f"\nsummary: {sweep_dir / 'summary.csv'}; compare runs with: tensorboard --logdir {sweep_dir}")
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


# ---------------------------------------------------------------- bench

def bench_parser(prog):
    p = _Parser(prog=prog, description="Training throughput of every implementation, side by side in one run.")
    p.add_argument("--device", type=device_arg("--device", "the bench measures CPUs and CUDA devices"), default="cpu",
                   help="cpu | cuda | cuda:N")
    p.add_argument("--shapes", type=names_arg("--shapes", "shape", bench.SHAPES), default=None,
                   help=f"comma-separated, from {', '.join(bench.SHAPES)}")
    p.add_argument("--precisions", type=names_arg("--precisions", "precision", bench.PRECISIONS), default=None,
                   help=f"comma-separated, from {', '.join(bench.PRECISIONS)} (default: fp32, tf32, bf16 on CUDA; fp32 on "
                        f"CPU; tf32, fp16 with --train-steps on CUDA); tf32 changes nothing on a CPU")
    p.add_argument("--cells", type=names_arg("--cells", "cell", bench.CELLS), default=["rnn"],
                   help=f"comma-separated, from {', '.join(bench.CELLS)} (default rnn); each against its torch module")
    p.add_argument("--repeats", type=int_arg("--repeats", 1, 1000), default=5,
                   help="timed rounds per implementation (median reported)")
    p.add_argument("--threads", type=int_arg("--threads", 0, 4096), default=0,
                   help="torch intra-op threads (0: torch's default)")
    p.add_argument("--small-threads", type=int_arg("--small-threads", 1, 4096), default=1,
                   help="threads for the tutorial shape, where thread hand-offs cost more than they save")
    p.add_argument("--malloc", choices=("retain", "default"), default="retain",
                   help="retain: keep freed memory for reuse, as training does (default); default: glibc's "
                        "own policy, to see what that setting is worth")
    p.add_argument("--json", type=file_arg("--json", existing=False), default=None,
                   help="also write the results to this file")
    p.add_argument("--train-steps", action="store_true",
                   help="whole training steps as train.py runs them (Adam, the non-finite check), eager and as one "
                        "CUDA graph, against the torch module eager and graphed (default shapes: gpu, gpu-512)")
    p.add_argument("--config", type=path_arg("--config"), default=None,
                   help="the training step's optimizer and settings come from this config's train section (a "
                        "YAML file or a name in configs/; default: the trainer's own defaults)")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile of the loop impl and of the torch module, as rows of their own, their "
                        "compile time apart (minutes on a CPU)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a fresh process per row on CPU): for quick runs")
    p.add_argument("--corpus-mb", type=int_list_arg("--corpus-mb", 1, 100_000), default=None, metavar="MB,...",
                   help="instead of the model rows: the corpus benchmark, tiny shakespeare repeated to each "
                        "size (start-up with and without the cache, peak RSS, cache build speed)")
    p.add_argument("--work", type=dir_arg("--work"), default=None,
                   help="directory for the corpus benchmark's generated files (default: a temporary one)")
    p.add_argument("--no-ddp", action="store_true", help="corpus benchmark: skip the 2-rank run")
    p.add_argument("--serve", metavar="URL", default=None,
                   help="instead of the model rows: a load test of a running `charrnn serve` at URL (e.g. "
                        "http://127.0.0.1:8000): latency percentiles and throughput (the [serve] extra)")
    p.add_argument("--clients", type=int_arg("--clients", 1, 256), default=8,
                   help="--serve: concurrent clients (default 8)")
    p.add_argument("--requests", type=int_arg("--requests", 1, 10**6), default=200,
                   help="--serve: requests in all (default 200)")
    p.add_argument("--serve-length", type=int_arg("--serve-length", 0, 10**6), default=200,
                   help="--serve: characters generated per request (default 200)")
    return p


def bench_serve(args):
    """The load test of a running server: its table, and --json's file."""
    _, serve_load = serve_modules()
    h = serve_load.reach(args.serve)
    print(f"load test of {args.serve} ({h['checkpoint']}, {h['cell']} {h['num_layers']}x{h['hidden_size']}, "
          f"{h['device']}): {args.clients} clients, {args.requests} requests of {args.serve_length} characters",
          flush=True)
    out = serve_load.run_load(args.serve, args.clients, args.requests, args.serve_length)
    s = serve_load.summary(out)
    print(serve_load.format_table(s))
    for i, reason in out["failures"][:5]:
        print(f"request {i} failed: {reason}")
    if args.json:
        files.write_file(args.json, files.json_text(s, indent=1).encode())
    return 1 if out["failures"] else 0


BENCH_MODEL_FLAGS = ("device", "shapes", "precisions", "cells", "repeats", "threads", "small_threads", "malloc",
                     "train_steps", "no_memory", "config", "compile")  # what the model rows take, the corpus benchmark not
BENCH_CORPUS_FLAGS = ("work", "no_ddp")


def bench_command(args, prog):
    _conflicts([(args.serve and args.corpus_mb, "--serve and --corpus-mb are two different benchmarks: give one")])
    if args.serve:
        return bench_serve(args)
    if args.corpus_mb:
        refuse_unused(args, BENCH_MODEL_FLAGS, "with --corpus-mb: the corpus benchmark trains one small CPU model")
    else:
        refuse_unused(args, BENCH_CORPUS_FLAGS, "without --corpus-mb: the corpus benchmark is not run")
    if not args.corpus_mb:
        values = {} if args.config is None else config_mod.read_yaml(config_mod.find_config(args.config))
        return bench.main(args, resolve_device(args.device, mps=False), config_mod.build_config(values).train)
    seed = corpus.ensure_corpus(corpus.DEFAULT_PATH)
    with tempfile.TemporaryDirectory(prefix="charrnn-corpus-bench-") as tmp:
        data_bench.main(args.corpus_mb, args.work or tmp, seed, ddp=not args.no_ddp, json_path=args.json)
    return 0


# ---------------------------------------------------------------- plot

PLOT_TITLE = "validation loss against minutes of training"
PLOT_OUT = "runs.png"


def plot_parser(prog):
    p = _Parser(prog=prog, description="Validation loss against minutes of training, runs side by side.")
    p.add_argument("runs", nargs="+", metavar="RUN", type=path_arg("RUN"),
                   help="run directories (TensorBoard events), or a folder of runs such as a sweep's; other files "
                        "and folders (summary.csv) are skipped, and so are runs not yet evaluated, each named")
    p.add_argument("--out", type=file_arg("--out", existing=False), default=PLOT_OUT,
                   help=f"the figure to write, in the format of its extension: {', '.join(plots.FORMATS)} "
                        f"(default: {PLOT_OUT}, in the current folder)")
    p.add_argument("--labels", default=None, help="comma-separated, one per run found (default: the directory names)")
    p.add_argument("--title", default=None, help=f"the figure's title (default: {PLOT_TITLE}; with --gradients: "
                                                 f"how far back the loss reaches)")
    p.add_argument("--gradients", action="store_true",
                   help="instead: each run's gradient norm ||dl_T/dh_t|| against the distance T - t, trained and "
                        "at step 0, on its validation text, one panel per run")
    return p


def plot_command(args, prog):
    labels = args.labels.split(",") if args.labels else None
    plots.out_format(args.out)  # a .png, .svg or .pdf: never one of the runs' own files
    if args.gradients:
        print(plots.plot_gradients(args.runs, args.out, labels, args.title or "how far back the loss reaches"))
        return 0
    print(plots.plot_runs(args.runs, args.out, labels, args.title or PLOT_TITLE))
    return 0


# ---------------------------------------------------------------- visualize

VIZ_MAX_CHARS = 3000
VIZ_FILES = ("index.html", "insight.json")  # what visualize writes into --out


def visualize_parser(prog):
    p = _Parser(prog=prog, description="Write an HTML page of what a trained model learned: per-character "
                                       "surprise, interpretable units, saturation.")
    _checkpoint_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", type=file_arg("--text", existing=True), default=None, help="the text to look at")
    src.add_argument("--from-val", type=int_arg("--from-val", 2, 10**9), default=None, metavar="N",
                     help="the first N characters of the run's validation split (the default, N = --max-chars)")
    p.add_argument("--max-chars", type=int_arg("--max-chars", 2, 10**6), default=VIZ_MAX_CHARS,
                   help=f"cap on the characters shown (default {VIZ_MAX_CHARS}); the page holds every unit's "
                        "activation for each")
    p.add_argument("--out", type=dir_arg("--out"), default=Path("viz"),
                   help="directory for index.html and insight.json (default viz)")
    return p


def visualize_command(args, prog):
    _spare_inputs(args, [args.out / name for name in VIZ_FILES], (args.text, "the --text it reads"))
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step)
    checkpoint.refuse_bidirectional(model, args.checkpoint, "be looked inside by this page")
    if vocab.mode != "chars":
        raise UserError(f"the page shows characters: it needs a model trained with data.vocab=chars (this one "
                        f"models {vocab.mode})")
    if args.text is not None:
        raw, source = corpus.read_corpus(args.text), str(args.text)
    else:
        raw, source = runs.validation_text(ckpt, args.from_val or args.max_chars)
    text, info = visualize.prepare_text(vocab, raw, args.max_chars)
    if info["truncated_from"]:
        source += f" (the first {len(text):,} of {info['truncated_from']:,} characters)"
    if info["unknown_removed"]:
        source += f" ({info['unknown_removed']} characters outside the vocabulary removed)"
    page, acts = visualize.page_data(model, vocab, ckpt, checkpoint.resolve(args.checkpoint, step=args.step), text,
                                     source)
    if len(text) >= 3:  # how far back the loss reaches, trained and at step 0, on the page's own text
        page["gradients"] = gradients.report(model, runs.initial_model(ckpt, model), vocab.encode(text))
    files.make_dir(args.out)
    files.write_file(args.out / "index.html", viz_page.render(page, acts).encode())
    files.write_file(args.out / "insight.json", files.json_text(page).encode())
    print(f"wrote {args.out / 'index.html'} and {args.out / 'insight.json'}: {len(text):,} characters, "
          f"{page['header']['mean_bits']:.3f} bits/char")
    width = max(map(len, page["search"]))
    for name, f in page["search"].items():
        if f["occurs"]:
            b = f["units"][0]
            print(f"  {name:<{width}} {b['state']} layer {b['layer']} unit {b['unit']:<4} corr {b['corr']:+.3f}")
    return 0


# ---------------------------------------------------------------- export

def export_parser(prog):
    p = _Parser(prog=prog, description="Take a trained model anywhere: its one-step function as ONNX or a "
                                       "torch.export program, or a self-contained HTML page that runs it.")
    _checkpoint_args(p)
    p.add_argument("--format", required=True, choices=export.FORMATS,
                   help="onnx (needs the [export] extra) | pt2 (torch.export.save) | html (the playground)")
    p.add_argument("--out", required=True, type=file_arg("--out", existing=False), help="the file to write")
    p.add_argument("--half", action="store_true", help="html: embed the weights as float16 (half the size)")
    return p


def export_command(args, prog):
    _conflicts([(args.half and args.format != "html", "--half is for --format html: onnx and pt2 keep the "
                                                      "checkpoint's dtype")])
    if args.format == "onnx":
        export.require_onnx()
    source = _spare_inputs(args, [args.out])
    model, vocab, ckpt = checkpoint.load_model(source, args.device)
    checkpoint.refuse_bidirectional(model, args.checkpoint, "be exported as a one-step function")
    data, what = export.export(model, vocab, ckpt, source, args.format, args.half)
    files.write_file(args.out, data)
    print(f"wrote {args.out} ({len(data):,} bytes): {what}")
    return 0


# ---------------------------------------------------------------- serve

def serve_parser(prog):
    p = _Parser(prog=prog, description="Keep a model loaded and sample or score it on request over HTTP (the "
                                       "[serve] extra): POST /sample, POST /score, GET /health, and a page at /.")
    _checkpoint_args(p)
    _impl_arg(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1: this machine only; one that is not a loopback "
                        "address is warned about)")
    p.add_argument("--port", type=int_arg("--port", 0, 65535), default=8000, help="default 8000; 0: any free port")
    p.add_argument("--max-length", type=int_arg("--max-length", 1, 10**6), default=10_000,
                   help="the most characters one request may generate (default 10000)")
    p.add_argument("--max-body-kb", type=int_arg("--max-body-kb", 1, 2**20), default=1024,
                   help="the largest request body, in KiB (default 1024): it bounds a prime and a text to score")
    p.add_argument("--queue", type=int_arg("--queue", 1, 4096), default=16,
                   help="requests admitted at once, running or waiting (the model answers one at a time); one more "
                        "is answered 429 (default 16)")
    return p


def serve_modules():
    """tools.serve and tools.serve_load, or a UserError naming the extra they need."""
    try:
        from .tools import serve, serve_load
    except ImportError as e:
        missing = (e.name or "a package").split(".")[0]
        raise UserError(f"the server and its load test need {missing}, not installed: "
                        f"pip install -e '.[serve]'") from None
    return serve, serve_load


def serve_setup(args):
    """(the app, the socket it listens on, a line that names the model) of serve's parsed arguments:
    all that `charrnn serve` does but serve."""
    serve, _ = serve_modules()
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step, args.impl)
    checkpoint.refuse_bidirectional(model, args.checkpoint, "generate text")
    source = checkpoint.resolve(args.checkpoint, step=args.step)
    defaults = {k: SAMPLE_DEFAULTS[k] for k in ("temperature", "top_k", "top_p")}
    served = serve.Served(model=model, vocab=vocab, checkpoint=str(source), step=ckpt.get("step"),
                          defaults=dict(defaults, length=min(SAMPLE_DEFAULTS["length"], args.max_length)),
                          default_prime=sample.default_prime(vocab, ckpt.get("char_counts")))
    limits = serve.Limits(max_length=args.max_length, max_body=args.max_body_kb * 1024, queue=args.queue)
    sock = serve.listen(args.host, args.port)
    what = (f"{source} (step {ckpt.get('step', 'n/a')}, {model.cell} {model.num_layers}x{model.hidden_size} "
            f"{model.impl}, {len(vocab)} symbols, {next(model.parameters()).device})")
    return serve.make_app(served, limits), sock, what


def serve_command(args, prog):
    serve, _ = serve_modules()
    app, sock, what = serve_setup(args)
    print(f"serving {what} at {serve.url_of(sock)}; Ctrl-C stops it", flush=True)
    serve.server_for(app).run(sockets=[sock])
    return 0


# ---------------------------------------------------------------- the table, and dispatch

# name -> (parser(prog), command(args, prog), one line for `charrnn --help`)
COMMANDS = {
    "train": (train_parser, train_command, "train a model from a YAML config (or resume, or fine-tune one)"),
    "sample": (sample_parser, sample_command, "generate text from a checkpoint, or score a file"),
    "fill": (fill_parser, fill_command, "repair text: fill each masked character from its context"),
    "visualize": (visualize_parser, visualize_command, "write an HTML page of what a model learned"),
    "export": (export_parser, export_command, "a model as ONNX, a torch.export program or an HTML playground"),
    "sweep": (sweep_parser, sweep_command, "train one run per combination of a grid"),
    "bench": (bench_parser, bench_command, "training throughput of every implementation, side by side"),
    "plot": (plot_parser, plot_command, "draw runs' validation loss against minutes of training"),
    "serve": (serve_parser, serve_command, "keep a model loaded and sample or score it over HTTP on this machine"),
}


def parse(name, argv, prog=None):
    """A command's arguments, checked (a UserError for any mistake), without running it. Flags and
    key=value overrides may come in any order."""
    parser = COMMANDS[name][0](prog or f"charrnn {name}")
    args = parser.parse_intermixed_args(argv)
    args.given = given_flags(parser, argv)
    return args


def run(name, argv, prog):
    """Run one command as the user typed it (prog: the words before its arguments); its exit status."""
    return _report(lambda: COMMANDS[name][1](parse(name, argv, prog), prog))


def usage(prog):
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} {{{','.join(COMMANDS)}}} ...", "", "commands:"]
    lines += [f"  {name:<{width}}  {entry[2]}" for name, entry in COMMANDS.items()]
    return "\n".join(lines + ["", f"{prog} COMMAND --help shows a command's flags; {prog} --version the versions"])


def main(argv=None, prog="charrnn"):
    """The charrnn console script: charrnn COMMAND [flags ...]."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage(prog))
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(f"charrnn_torch {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})")
        return 0
    if not argv or argv[0] not in COMMANDS:
        got = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"error: {got}; choose from {', '.join(COMMANDS)} ({prog} --help lists them)", file=sys.stderr)
        return 2
    return run(argv[0], argv[1:], f"{prog} {argv[0]}")
