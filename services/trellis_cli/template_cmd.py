"""`trellis template validate|compile|publish`: check templates, print the compiled DAG, or
publish them to the gateway (TRELLIS_GATEWAY_URL)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from trellis_cli.sources import template_files
from trellis_core.events import Problem
from trellis_templates.compiler import compile_bundle, read_bundle, sorted_problems, validate_bundle
from trellis_templates.mermaid import to_mermaid


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("template", help="validate and compile environment templates")
    sub = parser.add_subparsers(dest="template_command", required=True)

    validate = sub.add_parser("validate", help="check template files: every problem, with where it is")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories")
    validate.add_argument("--json", action="store_true", help="print a JSON report")
    validate.set_defaults(func=run_validate)

    comp = sub.add_parser("compile", help="print the activity DAG of one environment's run")
    comp.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories")
    comp.add_argument("--environment", "-e", required=True, metavar="NAME")
    comp.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a run variable")
    comp.add_argument("--action", choices=("deploy", "destroy"), default="deploy")
    comp.add_argument("--format", choices=("json", "mermaid"), default="json")
    comp.set_defaults(func=run_compile)

    publish = sub.add_parser(
        "publish",
        help="publish the templates to the gateway (TRELLIS_GATEWAY_URL, TRELLIS_TOKEN)",
        description="Validate and store every document at PATH as a published version: a version, once "
        "published, keeps its content (publish a changed template under a new spec.version).",
    )
    publish.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories")
    publish.set_defaults(func=run_publish)


def _print_problems(errors: tuple[Problem, ...], warnings: tuple[Problem, ...]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in errors:
        print(str(e), file=sys.stderr)


def _report(errors: tuple[Problem, ...], warnings: tuple[Problem, ...]) -> str:
    report = {"valid": not errors, "errors": errors, "warnings": warnings}
    return msgspec.json.format(msgspec.json.encode(report), indent=2).decode()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _files(paths: list[str]) -> list[str]:
    """The template files under `paths` (one walk, as `trellis run` reads them); the paths
    themselves when none is found, so the loader reports that they hold no documents."""
    return template_files(paths) or list(paths)


def run_validate(args: argparse.Namespace) -> int:
    count, errors, warnings = validate_bundle(_files(args.paths))
    if args.json:
        print(_report(errors, warnings))
    else:
        _print_problems(errors, warnings)
        if errors:
            summary = _count(len(errors), "error") + (f", {_count(len(warnings), 'warning')}" if warnings else "")
            print(summary, file=sys.stderr)
        else:
            print(f"{count} documents: valid" + (f" ({len(warnings)} warnings)" if warnings else ""))
    return 1 if errors else 0


def parse_vars(pairs: list[str]) -> dict[str, str] | str:
    """`name=value` pairs, or the message for the first malformed one."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            return f"--var {pair!r}: write NAME=VALUE"
        out[name] = value
    return out


def run_compile(args: argparse.Namespace) -> int:
    variables = parse_vars(args.var)
    if isinstance(variables, str):
        print(variables, file=sys.stderr)
        return 2
    docs, unreadable, problems = read_bundle(_files(args.paths))
    result = compile_bundle(docs, args.environment, variables, args.action, unreadable=unreadable)
    if problems.errors:  # with the compile errors of what could be read, in one list
        errors = sorted_problems([*problems.errors, *result.errors])
        _print_problems(errors, sorted_problems([*problems.warnings, *result.warnings]))
        return 1
    _print_problems(result.errors, tuple(problems.warnings) + result.warnings)
    if result.workflow is None:
        return 1
    if args.format == "mermaid":
        sys.stdout.write(to_mermaid(result.workflow))
    else:
        print(msgspec.json.format(msgspec.json.encode(result.workflow), indent=2).decode())
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from trellis_cli.gateway_common import run_on_gateway
    from trellis_cli.publish import publish

    async def work(gw: Any, settings: Any) -> int:
        documents = await publish(gw, args.paths, settings)
        for doc in documents:
            print(f"published {doc.kind} {doc.name}" + (f" {doc.version}" if doc.version else ""))
        return 0

    return run_on_gateway("template publish", work)
