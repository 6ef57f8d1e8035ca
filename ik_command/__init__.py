"""The one ``inferencekey`` command: the Manager's subcommands and the agent's, side by side.

It lives outside both so that neither ``manager`` nor ``worker_agent`` imports the other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from manager.cli import add_admin_commands, add_manager_command
from worker_agent.cli import add_agent_command

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inferencekey`` console script."""
    args = parse_args(argv)
    command: Command = args.command
    return command(args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; exits 2 on a usage error, as argparse does."""
    return _parser().parse_args(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferencekey",
        description="Self-hosted InferenceKey: run the Manager or a worker agent, and administer "
        "the Manager.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_manager_command(commands)
    add_agent_command(commands)
    add_admin_commands(commands)
    return parser
