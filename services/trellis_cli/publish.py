"""Publishing a bundle to the gateway (`trellis template publish`, `trellis run` through it): the
template texts as `trellis run` reads them, in one `POST /v1/templates`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import msgspec

from trellis_cli.gateway_client import GatewayClient
from trellis_cli.sources import read_files, read_sources
from trellis_core.errors import ConfigError
from trellis_core.events import Problem, SourceFile
from trellis_core.settings import Settings
from trellis_store.api import TemplateDocument


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """`201` of `POST /v1/templates`: what is stored, and the validator's warnings."""

    documents: tuple[TemplateDocument, ...]
    warnings: tuple[Problem, ...] = ()


class PublishBody(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /v1/templates`."""

    sources: tuple[SourceFile, ...]


async def publish(gw: GatewayClient, paths: Sequence[str], settings: Settings) -> tuple[TemplateDocument, ...]:
    """Every document the gateway stored; a 422 names every template problem with its file:line:col."""
    sources = tuple(read_sources(paths))
    try:
        beside = read_files(paths, settings)
    except ConfigError:
        beside = ()
    if beside:
        print(
            f"note: {len(beside)} file(s) beside the templates are not published (the gateway keeps template "
            "texts only); `trellis run` without TRELLIS_GATEWAY_URL takes them along",
            file=sys.stderr,
        )
    answer, _ = await gw.call("POST", "/v1/templates", Published, body=PublishBody(sources=sources))
    for warning in answer.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return answer.documents
