"""The `trellis` command: one subcommand a module, each registering itself on the parser."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trellis_core.errors import TrellisError

# Each module exposes `register(subparsers)`; add a command by adding its module here.
COMMAND_MODULES: tuple[str, ...] = (
    "trellis_cli.dev_cmd",
    "trellis_cli.schemas_cmd",
    "trellis_cli.template_cmd",
    "trellis_cli.compiler_cmd",
    "trellis_cli.agent_cmd",
    "trellis_cli.scheduler_cmd",
    "trellis_cli.store_cmd",
    "trellis_cli.gateway_cmd",
    "trellis_cli.run_cmd",
    "trellis_cli.logs_cmd",
    "trellis_cli.cancel_cmd",
    "trellis_cli.env_cmd",
    "trellis_cli.runs_cmd",
    "trellis_cli.approve_cmd",
    "trellis_cli.keys_cmd",
    "trellis_cli.tenant_cmd",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` one command's module imported (start-up stays fast)."""
    parser = argparse.ArgumentParser(
        prog="trellis",
        description="Self-service environments: templates compile into a DAG of activities that agents run.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if only is None or name == only:
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    module = f"trellis_cli.{command}_cmd"
    parser = build_parser(module if module in COMMAND_MODULES else None)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except TrellisError as exc:
        print(f"trellis: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
