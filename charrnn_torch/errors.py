"""The two kinds of failure a command reports, the one way a message is put on one line, and
torch's own chatter kept off the console."""
import contextlib
import logging
import sys
import warnings


class UserError(Exception):
    """A mistake in what the user gave us: the CLI prints 'error: <message>' and exits 2."""


class RunFailed(Exception):
    """The run could not go on (a full disk, a removed run directory, diverging maths): the CLI
    prints 'error: <message>', which names the last good checkpoint, and exits 1."""


def one_line(message):
    """A message (or an exception) as one line: every run of whitespace, newlines included, becomes one space."""
    return " ".join(str(message).split())


def tell(line):
    """line and its newline on stderr in one write: under PYTHONUNBUFFERED print writes them apart,
    and the ranks of a distributed run share one stderr, so their lines could interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def torch_quiet(logger_name):
    """torch's warnings, and its logger_name logger below ERROR, kept off the console for the block:
    they speak of torch's internals (deprecations, banners), nothing a user of a command can act on;
    what went wrong, the command says in its own one line."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
