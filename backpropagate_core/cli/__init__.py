"""`backprop`: the command line. Each submodule registers its commands on the app."""

import sys

from backpropagate_core.cli.app import app
from backpropagate_core.cli import data, evaluate, export, feedback, hardware, info, multirun, runs, train, ui  # noqa: F401  (register commands)


def main() -> None:
    from backpropagate_core.cli.app import main as run
    sys.exit(run())
