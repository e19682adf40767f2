"""What the commands that work through the gateway share: settings, the client, exit codes
(2: the command line or a setting is wrong; 1: the gateway refused or could not be reached),
and plain-text tables."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from trellis_cli.gateway_client import GatewayClient, gateway_settings
from trellis_cli.run_progress import for_display
from trellis_core.errors import ConfigError, TrellisError
from trellis_core.settings import Settings

T = TypeVar("T")

Work = Callable[[GatewayClient, Settings], Coroutine[Any, Any, int]]


def run_on_gateway(command: str, work: Work, *, tenant: str | None = None) -> int:
    """Run `work` with a client of TRELLIS_GATEWAY_URL; errors are printed as `trellis COMMAND: ...`."""
    try:
        settings = gateway_settings(command, tenant)
    except ConfigError as exc:
        print(f"trellis {command}: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with GatewayClient(settings) as gw:
            return await work(gw, settings)

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        print(f"trellis {command}: {exc}", file=sys.stderr)
        return 2
    except TrellisError as exc:
        print(f"trellis {command}: {exc}", file=sys.stderr)
        return 1


def when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment is not None else "-"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, the last one unpadded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def output_lines(outputs: dict[str, dict[str, Any]], indent: str) -> list[str]:
    """`resource.name = value` for each output, sensitive ones and sealed tokens `********` (the
    gateway masks them already; what is printed does not depend on it)."""
    lines = []
    for resource, named in sorted(for_display(outputs).items()):
        for key, output in sorted(named.items()):
            value = output.get("value") if isinstance(output, dict) else output
            lines.append(f"{indent}{resource}.{key} = {value}")
    return lines


def show(command: str, path: str, type_: type[T], describe: Callable[[T], str], as_json: bool) -> int:
    """`trellis ... show`: the object at `path` described, or its JSON as the API answered it;
    either way with sensitive outputs and sealed tokens `********` (`for_display`)."""

    async def work(gw: GatewayClient, settings: Settings) -> int:
        if as_json:
            document = for_display(msgspec.json.decode(await gw.raw(path)))
            print(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())
            return 0
        value, _ = await gw.call("GET", path, type_)
        shown = msgspec.json.decode(msgspec.json.encode(for_display(msgspec.to_builtins(value))), type=type_)
        print(describe(shown))
        return 0

    return run_on_gateway(command, work)
