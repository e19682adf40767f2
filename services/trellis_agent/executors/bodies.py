"""HTTP response bodies read to their end or to a byte limit, saying whether they were cut."""

from __future__ import annotations

from typing import NamedTuple

import aiohttp


class Body(NamedTuple):
    data: bytes  # at most the limit
    truncated: bool  # the response had more than the limit; the rest was not read


async def read_body(stream: aiohttp.StreamReader, limit: int) -> Body:
    """Read until EOF or one byte past `limit` (to know there was more), whichever comes first.

    One `read(n)` returns what has arrived so far, up to n: a body spread over packets or
    chunks needs the loop. Past the limit the rest stays unread: closing the response drops it.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return Body(data[:limit], size > limit)
