"""The config schema: dataclasses with defaults, filled from YAML and dotted overrides.

Every value is checked here, before any file is touched, so a typo costs a
one-line error rather than a crashed run an hour in.
"""
import copy
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..data.code_corpus import DEFAULT_MAX_BYTES
from ..data import tokens
from ..data.corpus import DEFAULT_PATH
from ..data.vocab import MODES
from ..errors import UserError, one_line
from ..files import check_regular
from ..model.cells import CELLS, IMPLS

# The one list of each set of allowed values (the cells and impls are model.py's).
OPTIMIZERS = {"adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}
SCHEDULES = ("constant", "cosine", "step")
AMP = ("none", "bf16")
CUDA_GRAPHS = ("off", "on", "auto")  # on: refuse a run that cannot be captured; auto: fall back to eager steps
DTYPES = ("float32", "float64")  # names of torch dtypes
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"  # is_device_name's rule, as the messages say it
VOCABS = MODES  # data.vocab: chars, bytes (vocab.py), words, bpe (tokens.py)
INT_MAX = 2**63 - 1  # torch reads integers as int64: a larger one fails deep inside a call
SEED_BITS = 62  # every seed, config key or flag, is in [0, 2**62]: room for the per-rank and per-step seeds derived from it
SEED_MAX = 2**SEED_BITS

# The keys that take one of a list of values, and the list.
CHOICES = {"train.optimizer": OPTIMIZERS, "train.lr_schedule": SCHEDULES, "model.impl": IMPLS, "model.cell": CELLS,
           "train.amp": AMP, "train.cuda_graphs": CUDA_GRAPHS, "train.dtype": DTYPES, "data.vocab": VOCABS}

# What a resumed run may not change: the architecture, the data, its layout in streams, and
# whatever gives the saved state its meaning. Everything else (lr, schedule, max_steps, the
# budget, intervals, dropout, impl, ...) may be overridden on --resume.
# The config keys that hold a path. An empty one is an error wherever it is given (an unset shell
# variable expands to nothing), never read as "not given": train.init_from's default "" means not
# set, so an explicit empty value is caught where the overrides are read.
PATH_KEYS = ("data.path", "out_dir", "train.init_from")
LIST_KEYS = ("data.path",)  # the keys that take a list of values as well as one

FROZEN_ON_RESUME = ("out_dir", "data.", "model.hidden_size", "model.num_layers", "model.cell", "model.bidirectional",
                    "train.optimizer", "train.dtype", "train.batch_size", "train.seq_len", "train.stateful",
                    "train.init_from", "train.eval_chars")  # eval_chars: another subset, best.pt's loss would not compare


@dataclass
class DataConfig:
    path: object = DEFAULT_PATH  # a text file; a folder, glob or list of them (files_corpus.py); python-stdlib
    separator: str = "\n"  # after each file of a set of files (python-stdlib's too)
    val_fraction: float = 0.1  # the last 10% of the text, contiguous, as nanoGPT splits
    vocab: str = "chars"  # chars: the text's characters; bytes: its raw bytes (V = 256), any file; words; bpe (tokens.py)
    stdlib_max_bytes: int = DEFAULT_MAX_BYTES  # the size of the python-stdlib corpus; a text file is used whole
    max_vocab: int = 10000  # data.vocab=words: the unknown token and the max_vocab - 1 most frequent tokens
    bpe_vocab_size: int = 1024  # data.vocab=bpe: the 256 byte values and up to bpe_vocab_size - 256 merges


@dataclass
class ModelConfig:
    hidden_size: int = 512  # units in each layer's hidden state h
    num_layers: int = 1  # layers of cells, each reading the h of the one below
    dropout: float = 0.0  # on each layer's h where it feeds the layer above (needs num_layers >= 2)
    dropout_output: float = 0.0  # on the top layer's h before W_hy, as char-rnn: a 1-layer model regularises too
    variational_dropout: bool = False  # one mask per window for dropout and dropout_output, not one per step
    weight_drop: float = 0.0  # DropConnect on every W_hh, one mask per window (AWD-LSTM)
    impl: str = "fused"  # loop: the readable unroll; fused: hand-written BPTT; fused_cpp: + compiled kernels (the loops over time, sampling)
    cell: str = "rnn"  # rnn: the tutorial's tanh cell; lstm; gru
    bidirectional: bool = False  # a second stack reads each window backwards: a cloze model for `charrnn fill`


@dataclass
class TrainConfig:
    batch_size: int = 64  # number of parallel text streams (the global batch under DDP)
    seq_len: int = 128  # truncated-BPTT window
    max_steps: int = 2000  # optimizer steps; the run ends here or when train.max_minutes is spent
    max_minutes: float = 0.0  # a budget of training time (evaluation and sampling excluded); 0: none
    lr: float = 2e-3  # peak learning rate (after warmup, before the schedule's decay)
    optimizer: str = "adam"  # adagrad is the tutorial's; adamw decouples weight_decay from the gradient
    weight_decay: float = 0.0  # the optimizer's weight decay; 0: none
    grad_clip: float = 5.0  # max global grad norm; 0 disables
    lr_schedule: str = "cosine"  # cosine: to lr * min_lr_ratio when the steps or the budget end; step: see lr_step_size
    warmup_steps: int = 0  # steps of linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    lr_step_size: int = 1000  # step schedule: multiply lr by lr_gamma every lr_step_size steps
    lr_gamma: float = 0.5  # step schedule: the factor applied every lr_step_size steps
    stateful: bool = True  # carry h across windows of B contiguous streams; false: random windows, h0 = 0
    eval_interval: int = 250  # steps between validation passes (each also writes ckpt.pt)
    eval_chars: int = 0  # score the first N characters of the validation split at each evaluation; 0: all of it
    patience: int = 0  # stop after this many evaluations without a better loss/val (by > min_delta); 0: off
    min_delta: float = 0.0  # how much lower than its best loss/val must go to count as better, for patience
    log_interval: int = 10  # steps between TensorBoard's training scalars and the bar's loss
    sample_interval: int = 500  # 0 disables TensorBoard samples
    sample_length: int = 300  # characters in each TensorBoard sample
    seed: int = 1337  # seeds the weights, dropout and the random windows
    tf32: bool = True  # CUDA only: TF32 matmuls (faster, with a 10-bit mantissa)
    amp: str = "none"  # CUDA only: bf16 runs the forward under bf16 autocast
    cuda_graphs: str = "off"  # the whole training step as one CUDA graph (graphs.py); auto falls back to eager steps
    max_nonfinite: int = 10  # stop after this many consecutive NaN/Inf steps
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    dtype: str = "float32"  # the parameters' dtype; float64 for exactness experiments
    dynamic_eval: bool = False  # at the end, also score the validation split with dynamic evaluation (dynamic.py)
    keep_checkpoints: int = 0  # also keep ckpt-<step>.pt at the last N evaluations; 0: only ckpt.pt, best.pt
    init_from: str = ""  # fine-tune: start from this checkpoint's weights (set by train --init-from)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"  # auto (CUDA, then MPS, then the CPU) | cpu | cuda | cuda:N | mps (Apple-silicon GPUs)
    out_dir: str = "runs/shakespeare"  # the run directory (a taken one gives way to runs/shakespeare-2 unless named)


def _type_name(tp):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]


def _coerce(key, value, tp):
    # bool is an int in Python; a YAML `true` for hidden_size is still a mistake.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and abs(value) > INT_MAX:
            raise UserError(f"{key}: must be between -2**63 and 2**63 - 1, got {value}")
    elif tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; a number is what anyone writing it means.
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise UserError(f"{key}: must be a finite number, got {value}")
    else:
        if isinstance(value, bool):
            # YAML 1.1 reads on/off (and yes/no, true/false) as booleans; as a string, on/off is meant.
            value = "on" if value else "off"
        ok = isinstance(value, str)
    if not ok:
        raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _coerce_list(key, value):
    """A LIST_KEYS value: one string, or a non-empty list of non-empty strings."""
    if not isinstance(value, list):
        return _coerce(key, value, str)
    if not value:
        raise UserError(f"{key}: an empty list; give a file, a folder, a glob or a list of them")
    for item in value:
        if not isinstance(item, str):
            raise UserError(f"{key}: every entry of its list must be a path (a string), got {item!r}")
        check_path(key, item)
    return value


def _fill(obj, values, prefix):
    if not isinstance(values, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    by_name = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key not in by_name:
            section = prefix.rstrip(".") or "top level"
            raise UserError(f"unknown config key {prefix}{key!s}; valid keys in {section}: "
                            f"{', '.join(by_name)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, f"{prefix}{key}.")
        elif f"{prefix}{key}" in LIST_KEYS:
            setattr(obj, key, _coerce_list(f"{prefix}{key}", value))
        else:
            setattr(obj, key, _coerce(f"{prefix}{key}", value, type(current)))


def validate(cfg):
    train = cfg.train

    def need(cond, key, what):
        if not cond:
            raise UserError(f"{key}: {what}, got {get_key(cfg, key)!r}")

    for key in ("model.hidden_size", "model.num_layers", "train.batch_size", "train.seq_len",
                "train.max_steps", "train.eval_interval", "train.log_interval", "train.max_nonfinite"):
        need(get_key(cfg, key) > 0, key, "must be > 0")
    need(math.isfinite(train.lr) and train.lr > 0, "train.lr", "must be > 0")
    need(math.isfinite(train.max_minutes) and train.max_minutes >= 0, "train.max_minutes", "must be >= 0 (0: no budget)")
    need(math.isfinite(train.grad_clip) and train.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables)")
    need(0 < cfg.data.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
    need(cfg.data.stdlib_max_bytes > 0, "data.stdlib_max_bytes", "must be a positive number of bytes")
    need(cfg.data.max_vocab > 1, "data.max_vocab", "must be > 1 (the unknown token and at least one word)")
    need(tokens.BPE_MIN <= cfg.data.bpe_vocab_size <= tokens.BPE_MAX, "data.bpe_vocab_size",
         f"must be in [{tokens.BPE_MIN}, {tokens.BPE_MAX}] (the 256 byte values and at least one merge)")
    for key in ("model.dropout", "model.dropout_output", "model.weight_drop"):
        need(0 <= get_key(cfg, key) < 1, key, "must be in [0, 1)")
    need(train.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(train.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    need(0 <= train.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
    need(train.lr_step_size > 0, "train.lr_step_size", "must be > 0")
    need(0 < train.lr_gamma <= 1, "train.lr_gamma", "must be in (0, 1]")
    need(train.sample_interval >= 0, "train.sample_interval", "must be >= 0 (0 disables)")
    need(train.sample_length > 0, "train.sample_length", "must be > 0")
    need(train.patience >= 0, "train.patience", "must be >= 0 (0: no early stopping)")
    need(train.min_delta >= 0, "train.min_delta", "must be >= 0")
    need(train.eval_chars >= 0, "train.eval_chars", "must be >= 0 (0 scores the whole validation split)")
    need(train.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0 (0 keeps only ckpt.pt and best.pt)")
    need(0 <= train.threads <= 4096, "train.threads", "must be in [0, 4096] (0 keeps torch's default)")
    need(0 <= train.seed <= SEED_MAX, "train.seed", f"must be in [0, 2**{SEED_BITS}]")
    for key, choices in CHOICES.items():
        need(get_key(cfg, key) in choices, key, f"must be one of {', '.join(choices)}")
    need(is_device_name(cfg.device), "device", f"must be {DEVICE_NAMES}")
    if cfg.model.bidirectional:
        check_bidirectional(train)
    if cfg.data.vocab == "bpe":
        tokens.require_tokenizers()
    check_path("out_dir", cfg.out_dir)
    if isinstance(cfg.data.path, str):
        check_path("data.path", cfg.data.path)
    return cfg


# What a bidirectional model cannot take, and why: key -> (the value it needs, the reason).
BIDIRECTIONAL_NEEDS = {
    "train.stateful": (False, "its windows start from zero states, since the backward stack cannot carry "
                              "its state from one window into the next"),
    "train.dynamic_eval": (False, "dynamic evaluation scores text left to right, as a language model"),
    "train.cuda_graphs": ("off", "the captured step carries the state between windows"),
}


def check_bidirectional(train_cfg):
    """model.bidirectional: refuse, in one line, the first setting it cannot take."""
    for key, (needed, why) in BIDIRECTIONAL_NEEDS.items():
        value = getattr(train_cfg, key.split(".")[1])
        if value != needed:
            shown = lambda v: str(v).lower() if isinstance(v, bool) else v  # noqa: E731 - as YAML writes it
            raise UserError(f"model.bidirectional=true needs {key}={shown(needed)} ({why}), got {shown(value)}")


def check_path(name, value):
    """The one rule for every path, flag (name: --init-from) or config key (name: data.path): it
    may not be empty."""
    if value == "":
        raise UserError(f"{name} is an empty path; give a path (an unset shell variable expands to nothing)")
    return value


def is_device_name(name):
    """The one rule for a device name (config key and --device flags alike): DEVICE_NAMES."""
    return name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())


def check_resume(stored, new_values):
    """Refuse a resumed config (new_values: to_dict of it) that changes a FROZEN_ON_RESUME key of the
    checkpoint's config (a dict)."""
    old, new = flatten(stored), flatten(new_values)
    for key, value in new.items():
        frozen = any(key == f or (f.endswith(".") and key.startswith(f)) for f in FROZEN_ON_RESUME)
        if frozen and key in old and old[key] != value:
            raise UserError(f"cannot change {key} when resuming (the checkpoint has {old[key]!r}); "
                            f"start a new run instead")


def get_key(cfg, dotted):
    """cfg's value at a dotted key such as train.lr."""
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_override(text):
    """'train.lr=3e-3' -> ('train.lr', 0.003); the value is read as a YAML scalar (a list too, for
    LIST_KEYS). A path that is not valid YAML (a glob such as **/*.md: * begins a YAML alias) is
    its text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"malformed override {text!r}: expected key=value, e.g. train.lr=3e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        if key.strip() not in PATH_KEYS or raw.lstrip().startswith("["):
            raise UserError(f"malformed override {text!r}: cannot parse value ({one_line(e)})") from None
        value = raw
    if isinstance(value, dict) or (isinstance(value, list) and key.strip() not in LIST_KEYS):
        raise UserError(f"malformed override {text!r}: expected a single value")
    return key.strip(), value


def _nest(key, value):
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def resolve_config_path(name, config_dir):
    """A bare name is looked up in configs/; a path (or a name with a directory) is used as is."""
    p = Path(name)
    if p.exists() or p.parent != Path("."):
        return p
    for candidate in (Path(config_dir) / name, Path(config_dir) / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    return p


PACKAGE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the checkout's configs/, for any working folder


def find_config(name):
    """A config by path, or by bare name in ./configs, then in the package's configs/."""
    p = resolve_config_path(name, "configs")
    if not p.exists() and PACKAGE_CONFIGS.is_dir():
        alt = resolve_config_path(name, PACKAGE_CONFIGS)
        if alt.exists():
            return alt
    return p


def read_yaml(path):
    path = Path(path)
    check_regular(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {one_line(e)}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {one_line(e)}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, got {type(values).__name__}")
    return values


def build_config(values=None, overrides=()):
    """Defaults <- YAML values (a dict) <- 'key=value' overrides; checked and returned."""
    merged = copy.deepcopy(values or {})  # the caller's dict (a checkpoint's config, say) stays as it was
    for text in overrides:
        key, value = parse_override(text)
        if key in PATH_KEYS:
            check_path(key, value)
        _merge(merged, _nest(key, value))
    cfg = Config()
    _fill(cfg, merged, "")
    return validate(cfg)


def override_keys(overrides):
    return [parse_override(o)[0] for o in overrides]


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_yaml(cfg):
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def key_help():
    """{dotted key: what it means}, from the comment beside each field above (the one place a key is
    explained), with its allowed values from CHOICES: what --print-config and train --help show."""
    import ast
    import io
    import tokenize

    source = Path(__file__).read_text(encoding="utf-8")
    comments = {t.start[0]: t.string.lstrip("# ").strip() for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT}
    sections = {f.default_factory.__name__: f.name for f in fields(Config) if f.default_factory is not dataclasses.MISSING}
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in (*sections, "Config"):
            prefix = f"{sections[node.name]}." if node.name in sections else ""
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and item.lineno in comments:
                    key = prefix + item.target.id
                    choices = CHOICES.get(key)
                    out[key] = comments[item.lineno] + (f" (one of {', '.join(choices)})" if choices else "")
    return out


def dump_yaml_explained(cfg):
    """dump_yaml's YAML with each key's help as a comment beside it (still YAML: it loads the same)."""
    help_of, lines = key_help(), []
    for section, value in to_dict(cfg).items():
        if not isinstance(value, dict):
            lines.append(_explained_line(section, value, help_of.get(section), ""))
            continue
        lines.append(f"{section}:")
        lines += [_explained_line(k, v, help_of.get(f"{section}.{k}"), "  ") for k, v in value.items()]
    return "\n".join(lines) + "\n"


def _explained_line(key, value, help_text, indent):
    text = indent + yaml.safe_dump({key: value}, default_flow_style=True, width=10**6).strip()[1:-1]
    return f"{text}  # {help_text}" if help_text else text
