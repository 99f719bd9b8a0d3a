"""The one command, ``charrnn``, and its subcommands: arguments, dispatch and error reporting only.

    charrnn train | sample | visualize | export | sweep | bench | plot  [flags ...]

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
import gc
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from .tools import bench, data_bench
from .training import checkpoint, config as config_mod
from . import __version__, files
from .data import corpus, vocab as vocab_mod
from .sampling import dynamic, sample
from .insight import export, visualize, viz_page
from .training.config import SEED_MAX
from .training.distributed import DistInfo, barrier
from .errors import RunFailed, UserError, one_line
from .files import could_not_write, write_atomic
from .tools.plots import plot_runs
from .training.runtime import resolve_device, retain_freed_memory
from .tools.sweep import format_rows, run_sweep
from .training.trainer import Interrupted, train

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEP_MAX = 2**62  # a checkpoint's step number


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _report(fn):
    """fn()'s exit status, with every failure turned into one line on stderr."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
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


def device_arg(flag):
    def parse(text):
        if not config_mod.is_device_name(text):
            raise UserError(f"{flag} must be auto, cpu, cuda or cuda:N, got {text!r}")
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
    p.add_argument("--device", type=device_arg("--device"), default=device_default,
                   help=f"auto | cpu | cuda | cuda:N (default {device_default})")


def find_config(name):
    """A config by path, or by bare name in ./configs, then in the package's configs/."""
    p = config_mod.resolve_config_path(name, "configs")
    if not p.exists() and PACKAGE_CONFIGS.is_dir():
        alt = config_mod.resolve_config_path(name, PACKAGE_CONFIGS)
        if alt.exists():
            return alt
    return p


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
        path = checkpoint.resolve(args.resume, names=("ckpt.pt", "best.pt"))
        resume = checkpoint.load(path)
        return config_mod.build_config(resume["config"], args.overrides), resume, path.parent
    name = "shakespeare.yaml" if args.config is None else args.config
    cfg = config_mod.build_config(config_mod.read_yaml(find_config(name)), args.overrides)
    if args.init_from is not None:
        cfg.train.init_from = args.init_from
    return cfg, None, None


def train_command(args, prog):
    cfg, resume, resume_dir = train_config(args)
    if args.print_config:
        sys.stdout.write(config_mod.dump_yaml_explained(cfg))
        return 0
    retain_freed_memory()
    dist_info = _dist_from_env(os.environ)
    if dist_info.world_size > 1:
        _init_distributed(cfg, dist_info)
    try:
        summary = train(cfg, out_dir_explicit="out_dir" in config_mod.override_keys(args.overrides),
                        force=args.force, resume=resume, resume_dir=resume_dir, dist_info=dist_info,
                        progress=not args.no_progress, log=_console_log if dist_info.is_main else _silent)
        # Rank 0 finishes last (hparams, final flush) and hosts the rendezvous store: a rank
        # that tears its process group down first can abort on the store's lost connection.
        barrier(dist_info)
    except Interrupted as e:
        if dist_info.is_main:
            print(f"interrupted at step {e.step}: checkpoint saved to {Path(e.out_dir) / 'ckpt.pt'}\n"
                  f"resume with: {prog} --resume {e.out_dir}", file=sys.stderr)
        return e.exit_code
    finally:
        finish_distributed(dist_info)
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
    return (f"done: {summary['step']} steps, val loss {summary['val_loss']:.4f} "
            f"(bpc {summary['val_loss'] / math.log(2):.4f}), best {summary['best_val']:.4f}; "
            f"trained {_duration(summary['train_seconds'])}{budget}, evaluated {_duration(summary['eval_seconds'])} "
            f"({passes} pass{'es' if passes != 1 else ''} over {summary['eval_chars']:,} "
            f"characters{cap}); run in {summary['out_dir']}")


def _duration(seconds):
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _dist_from_env(env):
    return DistInfo(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                    local_rank=int(env.get("LOCAL_RANK", 0)))


def _init_distributed(cfg, dist_info):
    # DDP imports torch._dynamo on its first use. Imported once a process group exists, it keeps
    # references to the group that destroy_process_group() cannot drop (see finish_distributed).
    import torch._dynamo  # noqa: F401
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                                         rank=dist_info.rank, world_size=dist_info.world_size)


def finish_distributed(dist_info):
    """Free the process group before Python exits, its threads joined. A group still alive at exit
    keeps gloo's worker threads running; one that then releases the last collective's tensors
    needs the GIL while the interpreter is finalizing, and the process aborts ("terminate called
    without an active exception", pytorch/pytorch#190489). So nothing may still hold the group:
    not the run's DDP wrapper (dropped by the trainer, and in reference cycles until collected),
    not torch._dynamo (imported before the group, in _init_distributed)."""
    if dist_info.world_size > 1 and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


def _console_log(line):
    tqdm.write(line)  # above the progress bar, not through it
    sys.stdout.flush()


def _silent(*args, **kwargs):
    return None


# ---------------------------------------------------------------- sample

SAMPLE_DEFAULTS = {"length": 500, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "num_samples": 1, "beam_width": 0}


def sample_parser(prog):
    p = _Parser(prog=prog, description="Generate text from a trained checkpoint, or score a file.")
    _checkpoint_args(p)
    p.add_argument("--prime", default=None, help="text to condition on (default: a newline)")
    p.add_argument("--prime-file", type=file_arg("--prime-file", existing=True), default=None,
                   help="read the prime text from this file (UTF-8), for long primes")
    p.add_argument("--length", type=int_arg("--length", 0, 10**9),
                   help="characters to generate after the prime (default 500)")
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
    for k, v in SAMPLE_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def sample_command(args, prog):
    check_sample_args(args)
    if args.prime_file:
        args.prime = corpus.read_corpus(args.prime_file)
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step)
    if args.score:  # a byte-mode model reads the file's bytes, as its training did
        return _print_score(_score(args, model, vocab, ckpt, corpus.read_corpus(args.score, vocab.mode)))
    prime = sample.default_prime(vocab, ckpt.get("char_counts")) if args.prime is None else known_prime(vocab, args.prime)
    generator = torch.Generator()
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()
    out_file = open(args.out, "w", encoding="utf-8") if args.out else None
    try:
        _generate(args, model, vocab, prime, generator, _emitter(out_file))
    finally:
        if out_file:
            out_file.close()
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
    run = checkpoint.run_corpus(ckpt, "gather dynamic evaluation's gradient statistics")
    settings = dynamic.Settings(lr=args.dynamic_lr, decay=args.dynamic_decay)
    return dynamic.score(model, vocab, text, run.train_ids, settings, run.lut)


def _print_score(r):
    unit = r["unit"]
    print(f"{'dynamic ' if r.get('dynamic') else ''}loss {r['loss']:.4f} nats/{unit} | {r['bpc']:.4f} bits/{unit} | "
          f"{r['count']} {'characters' if unit == 'char' else 'bytes'} scored")
    if r["unknown_chars"]:
        print(f"{r['unknown_chars']} characters not in the vocabulary, dropped: {_listed(r['unknown_set'])}")
    return 0


def _emitter(out_file):
    def emit(text):
        sys.stdout.write(text)
        sys.stdout.flush()
        if out_file:
            out_file.write(text)
    return emit


def _generate(args, model, vocab, prime, generator, emit):
    if args.beam_width:
        text, logp = sample.beam_search(model, vocab, prime, args.length, args.beam_width)
        emit(text + "\n")
        print(f"log-probability {logp:.4f} nats ({-logp / max(args.length, 1):.4f} nats/char)", file=sys.stderr)
    elif args.num_samples == 1:
        emit(prime)
        sample.generate(model, vocab, prime, args.length, args.temperature, args.top_k, args.top_p,
                        generator=generator, greedy=args.greedy, on_text=emit)
        emit("\n")
    else:
        texts = sample.generate_batch(model, vocab, prime, args.length, args.num_samples, args.temperature,
                                      args.top_k, args.top_p, generator=generator, greedy=args.greedy)
        for i, text in enumerate(texts):  # every sample under its header, the first one too
            emit(("\n" if i else "") + f"----- sample {i + 1} -----\n" + text + "\n")


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
    sweep_dir, fields, rows = run_sweep(find_config(args.config), grid, overrides, args.sweep_dir, args.parallel)
    print()
    print(format_rows(fields, rows))
    print(f"\nsummary: {sweep_dir / 'summary.csv'}; compare runs with: tensorboard --logdir {sweep_dir}")
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


# ---------------------------------------------------------------- bench

def bench_parser(prog):
    p = _Parser(prog=prog, description="Training throughput of every implementation, side by side in one run.")
    p.add_argument("--device", type=device_arg("--device"), default="cpu", help="cpu | cuda | cuda:N")
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
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a fresh process per row on CPU): for quick runs")
    p.add_argument("--corpus-mb", type=int_list_arg("--corpus-mb", 1, 100_000), default=None, metavar="MB,...",
                   help="instead of the model rows: the corpus benchmark, tiny shakespeare repeated to each "
                        "size (start-up with and without the cache, peak RSS, cache build speed)")
    p.add_argument("--work", type=dir_arg("--work"), default=None,
                   help="directory for the corpus benchmark's generated files (default: a temporary one)")
    p.add_argument("--no-ddp", action="store_true", help="corpus benchmark: skip the 2-rank run")
    return p


def bench_command(args, prog):
    if not args.corpus_mb:
        return bench.main(args, resolve_device(args.device))
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
                   help=f"the PNG to write (default: {PLOT_OUT}, in the current folder)")
    p.add_argument("--labels", default=None, help="comma-separated, one per run found (default: the directory names)")
    p.add_argument("--title", default=PLOT_TITLE, help=f"the figure's title (default: {PLOT_TITLE})")
    return p


def plot_command(args, prog):
    labels = args.labels.split(",") if args.labels else None
    print(plot_runs(args.runs, args.out, labels, args.title))
    return 0


# ---------------------------------------------------------------- visualize

VIZ_MAX_CHARS = 3000


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


def validation_text(ckpt, n):
    """The first n characters of the run's validation split, through load_corpus, as training read it."""
    run = checkpoint.run_corpus(ckpt, "show its validation split (pass --text FILE)")
    text = run.vocab.decode(vocab_mod.as_ids(run.val_ids[:n], run.lut).tolist())
    return text, f"the first {len(text):,} characters of the validation split of {ckpt['config']['data']['path']}"


def visualize_command(args, prog):
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step)
    if vocab.mode != "chars":
        raise UserError("the page shows characters: it needs a model trained with data.vocab=chars")
    if args.text is not None:
        raw, source = corpus.read_corpus(args.text), str(args.text)
    else:
        raw, source = validation_text(ckpt, args.from_val or args.max_chars)
    text, info = visualize.prepare_text(vocab, raw, args.max_chars)
    if info["truncated_from"]:
        source += f" (the first {len(text):,} of {info['truncated_from']:,} characters)"
    if info["unknown_removed"]:
        source += f" ({info['unknown_removed']} characters outside the vocabulary removed)"
    page, acts = visualize.page_data(model, vocab, ckpt, checkpoint.resolve(args.checkpoint, step=args.step), text,
                                     source)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "index.html", viz_page.render(page, acts).encode())
    write_atomic(args.out / "insight.json", json.dumps(page).encode())
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
    model, vocab, ckpt = checkpoint.load_model(args.checkpoint, args.device, args.step)
    source = checkpoint.resolve(args.checkpoint, step=args.step)
    data, what = export.export(model, vocab, ckpt, source, args.format, args.half)
    with could_not_write(args.out):
        write_atomic(args.out, data)
    print(f"wrote {args.out} ({len(data):,} bytes): {what}")
    return 0


# ---------------------------------------------------------------- the table, and dispatch

# name -> (parser(prog), command(args, prog), one line for `charrnn --help`)
COMMANDS = {
    "train": (train_parser, train_command, "train a model from a YAML config (or resume, or fine-tune one)"),
    "sample": (sample_parser, sample_command, "generate text from a checkpoint, or score a file"),
    "visualize": (visualize_parser, visualize_command, "write an HTML page of what a model learned"),
    "export": (export_parser, export_command, "a model as ONNX, a torch.export program or an HTML playground"),
    "sweep": (sweep_parser, sweep_command, "train one run per combination of a grid"),
    "bench": (bench_parser, bench_command, "training throughput of every implementation, side by side"),
    "plot": (plot_parser, plot_command, "draw runs' validation loss against minutes of training"),
}


def parse(name, argv, prog=None):
    """A command's arguments, checked (a UserError for any mistake), without running it. Flags and
    key=value overrides may come in any order."""
    parser = COMMANDS[name][0](prog or f"charrnn {name}")
    return parser.parse_intermixed_args(argv)


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
