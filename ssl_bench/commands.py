"""Subcommands that plugins add to ``ssl-bench`` (``register_commands``, as llm does).

A command is an object with a ``help`` line, ``add_arguments(parser)`` for its argparse
subparser and ``run(args) -> int`` (the exit status)::

    from ssl_bench import hookimpl
    from ssl_bench.commands import Command

    class Hello(Command):
        help = "say hello"

        def add_arguments(self, parser):
            parser.add_argument("name")

        def run(self, args):
            print(f"hello {args.name}")
            return 0

    @hookimpl
    def register_commands(register):
        register("hello", Hello())

A :class:`~ssl_bench.errors.UserError` raised by ``run`` is printed as one line; anything else
keeps its traceback.
"""

from __future__ import annotations

import argparse


class Command:
    """Base class of a plugin command (see the module docstring)."""

    help: str = ""
    description: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's arguments to its subparser."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError(f"{type(self).__name__}.run")
