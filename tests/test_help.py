"""Proves that the command explains itself: `charrnn --version` names the package's version (the
one in pyproject.toml) and torch's; every flag and positional argument of every command has help
text.
"""
import tomllib

import pytest
import torch

from charrnn_torch import __version__, cli
from conftest import ROOT


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    assert cli.main([flag]) == 0
    out = capsys.readouterr().out
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == pyproject and out.startswith(f"charrnn_torch {__version__} (torch {torch.__version__}")


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_flag_has_help(name):
    parser = cli.COMMANDS[name][0](f"charrnn {name}")
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions if not a.help]
    assert missing == []


