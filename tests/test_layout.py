"""Proves the house rules that keep the code readable, and that the front page tells the truth:

- every function is at most 60 lines;
- the layers: each subpackage imports only from those below it (LAYERS), the numpy reference
  imports nothing from the package, the model nothing from the config, the CLI no model code,
  and only the CLI, the Python API and the sweep reach the trainer;
- no module imports another module's private (_underscore) names;
- no module but files.py opens a file for writing: every file is written atomically, through
  files.write_file / writing / write_atomic (torch.save and savefig write into a buffer, buf);
- the three ways in (the ``charrnn`` console script, ``python -m charrnn_torch`` and the thin
  ``scripts/<command>.py``) offer the same commands, from cli.COMMANDS, and each prints its own
  name in its usage line;
- the README is at most 250 lines, and every command in its ```bash blocks is one this project
  has, with flags its parser accepts (and, for training, config keys and values the schema
  accepts). The commands are parsed, not run.
"""
import ast
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from charrnn_torch import cli
from charrnn_torch.training import config as config_mod
from conftest import ROOT

PACKAGE = ROOT / "charrnn_torch"
MAX_FUNCTION_LINES = 60
SCRIPTS_NOT_COMMANDS = {"gpu_summary.py"}  # the GPU run's own helper, called by gpu_check.sh


# Bottom to top: a module may import from its own layer and those before it, never after.
LAYERS = (("errors", "files"), ("model",), ("data",), ("sampling",), ("insight",), ("training",), ("tools",),
          ("api", "cli", "__init__", "__main__"))


def _modules():
    return sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def _package_modules():
    """dotted name under charrnn_torch -> path, for every module of the package."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(dotted):
    top = dotted.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _package_imports(dotted, path):
    """Every package module that `dotted` imports, as dotted names under charrnn_torch."""
    out = set()
    package = dotted.split(".")[:-1] if not path.name == "__init__.py" else dotted.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("charrnn_torch"):
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                name = ".".join(base + [alias.name])
                out.add(name if name in _package_modules() else ".".join(base))
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("charrnn_torch.")}
    return {m for m in out if m}


def test_functions_are_short():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} is {n} lines")
    assert not long, "\n".join(long)


def _imports(path):
    """(module, name) for every `from .module import name` and `from . import module` in path."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("charrnn_torch")):
            module = (node.module or "").replace("charrnn_torch.", "").replace("charrnn_torch", "")
            out += [(module, alias.name) for alias in node.names]
    return out


def test_no_module_imports_anothers_private_names():
    bad = [f"{path.name}: {module}.{name}" for path in _modules() + sorted((ROOT / "tests").glob("*.py"))
           for module, name in _imports(path)
           if name.startswith("_") and name != "__version__"]
    assert not bad, bad


WRITE_CALLS = {"write_text", "write_bytes", "mkstemp", "NamedTemporaryFile", "fdopen"}  # each writes a file
SHUTIL_WRITES = {"copyfile", "copy", "copy2", "copyfileobj", "move"}


def _dotted(node):
    """'torch.export.save' for the expression torch.export.save, '' for what is not a dotted name."""
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return node.id if isinstance(node, ast.Name) else ""


def _writes(node):
    """Why a call node writes a file other than through files.py, or None. torch.save, torch.export.save
    and savefig may write into a buffer named buf only (which files.py then writes)."""
    name = _dotted(node.func)
    last = name.rpartition(".")[2] or getattr(node.func, "attr", "")
    if last in WRITE_CALLS or name == "os.open" or (name.startswith("shutil.") and last in SHUTIL_WRITES):
        return name or last
    if name == "open" and not (node.args and _dotted(node.args[0]) == "os.devnull"):
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
            return f"open(..., {mode.value!r})"
    if name in ("torch.save", "torch.export.save") or last == "savefig":
        where = node.args[1] if last == "save" and len(node.args) > 1 else (node.args[0] if node.args else None)
        if not (isinstance(where, ast.Name) and where.id == "buf"):
            return f"{name or last} into something else than a buffer"
    return None


def test_every_write_goes_through_files():
    bad = [f"{path.relative_to(ROOT)}:{node.lineno} {why}" for path in _modules() if path.name != "files.py"
           for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call) and (why := _writes(node))]
    assert not bad, bad


def test_lower_layers_never_import_higher_ones():
    upward = [f"{dotted} imports {other}" for dotted, path in _package_modules().items()
              for other in _package_imports(dotted, path) if _layer(other) > _layer(dotted)]
    assert not upward, upward


def test_the_reference_imports_nothing_from_the_package():
    path = PACKAGE / "model" / "reference.py"
    assert not _package_imports("model.reference", path)
    assert "torch" not in {n.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                           if isinstance(node, ast.Import) for n in (a.name for a in node.names)}


def test_the_model_does_not_import_the_config():
    bad = [(d, o) for d, p in _package_modules().items() if d.startswith("model.")
           for o in _package_imports(d, p) if o.endswith("config")]
    assert not bad, bad


def test_the_cli_imports_no_model_code():
    assert not [o for o in _package_imports("cli", PACKAGE / "cli.py") if o.startswith("model")]


def test_only_the_cli_the_api_and_the_sweep_import_the_trainer():
    users = {d for d, p in _package_modules().items() if "training.trainer" in _package_imports(d, p)}
    assert users <= {"cli", "api", "tools.sweep"}, users


def test_one_table_of_commands_behind_every_way_in():
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py") if p.name not in SCRIPTS_NOT_COMMANDS}
    assert scripts == set(cli.COMMANDS)
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry_points == {"charrnn": "charrnn_torch.cli:main"}
    listing = subprocess.run([sys.executable, "-m", "charrnn_torch", "--help"], capture_output=True, text=True,
                             cwd=ROOT).stdout
    assert all(re.search(rf"^  {name} ", listing, re.M) for name in cli.COMMANDS), listing
    # Every script run as __main__ with --help, all in one process (torch is imported once, not per script).
    runner = ("import runpy, sys\n"
              "for path in sys.argv[1:]:\n"
              "    sys.argv = [path, '--help']\n"
              "    try:\n"
              "        runpy.run_path(path, run_name='__main__')\n"
              "    except SystemExit as e:\n"
              "        print(f'@@ {path} exit {e.code}', flush=True)\n")
    scripts = [ROOT / "scripts" / f"{name}.py" for name in cli.COMMANDS]
    done = subprocess.run([sys.executable, "-c", runner, *map(str, scripts)], capture_output=True, text=True, cwd=ROOT)
    outputs = re.split(r"^@@ .* exit (.*)\n", done.stdout, flags=re.M)  # [help, code, help, code, ..., '']
    assert done.returncode == 0 and len(outputs) == 2 * len(scripts) + 1, done.stdout + done.stderr
    for name, script, text, code in zip(cli.COMMANDS, scripts, outputs[0::2], outputs[1::2]):
        assert code == "0" and text.startswith(f"usage: python scripts/{name}.py"), (name, code, text[:200])
        assert f'run("{name}", sys.argv[1:], "python scripts/{name}.py")' in script.read_text()


def test_unknown_or_missing_command_is_one_error_line(capsys):
    for argv in (["trian"], []):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "train, sample" in err


# ---------------------------------------------------------------- the README

README = ROOT / "README.md"


def readme_commands():
    """Every command of every ```bash block of the README: one list of words per command."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for line in (ln.strip() for block in blocks for ln in block.splitlines()):
        if line and not line.startswith("#"):
            assert not line.endswith("\\"), f"one command per line: {line}"
            commands += [shlex.split(part) for part in line.split("&&")]
    return commands


def command_of(words):
    """(cli command, its arguments) for a command of this project, else None."""
    if words[0] == "charrnn":
        return words[1], words[2:]
    if words[:3] == ["python", "-m", "charrnn_torch"]:
        return words[3], words[4:]
    if words[0] == "python" and words[1].startswith("scripts/") and words[1].endswith(".py"):
        return Path(words[1]).stem, words[2:]
    return None


def _check_other(words):
    """The commands around ours: installing, testing, TensorBoard, the GPU script."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    if words[:2] == ["pip", "install"]:
        for word in words[2:]:
            wanted = re.findall(r"\[(.*?)\]", word)
            assert all(set(w.split(",")) <= extras for w in wanted), f"unknown extra in {word}"
    elif words[:3] == ["python", "-m", "pytest"] or words[0] == "tensorboard":
        pass
    elif words[0] == "bash":
        assert (ROOT / words[1]).is_file(), words
    else:
        pytest.fail(f"the README runs a command this test does not know: {' '.join(words)}")


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 250


def test_every_readme_command_parses(tmp_path, monkeypatch):
    # Parsed where a user runs them after training: a checkout with a runs/ folder.
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert commands, "the README has no ```bash block"
    for words in commands:
        ours = command_of(words)
        if ours is None:
            _check_other(words)
            continue
        name, argv = ours
        assert name in cli.COMMANDS, f"no command {name!r}: {' '.join(words)}"
        args = cli.parse(name, argv)
        if name == "train" and not args.resume:
            config_mod.build_config(config_mod.read_yaml(config_mod.find_config(args.config or "shakespeare.yaml")),
                                    args.overrides)
        with pytest.raises(SystemExit) as done:
            cli.parse(name, ["--help"])
        assert done.value.code == 0


def test_readme_shows_the_one_command():
    assert any(command_of(words) and words[0] == "charrnn" for words in readme_commands())


@pytest.mark.parametrize("text", ["issue", "session"])
def test_readme_speaks_to_a_reader(text):
    # A reader cannot place "issue 14" or "an earlier session".
    hits = [ln for ln in README.read_text().splitlines() if re.search(rf"\b{text}s?\b", ln, re.I)]
    assert not hits, hits
