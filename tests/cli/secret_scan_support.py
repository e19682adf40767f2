"""What the end-to-end secret scan needs: the forms a secret can hide in, and readers for every
place Trellis keeps or shows something (JetStream streams, PostgreSQL tables, texts) that report
where a secret was found without ever printing it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import nats
from nats.js.errors import NotFoundError

from trellis_core.sealed import encoded_forms

CONTEXT_CHARS = 80  # how much text around a finding the report shows (the secret itself masked)


def secret_forms(secret: str) -> set[str]:
    """Every form the scan looks for: the agent's masking forms (the value, JSON-escaped,
    URL-encoded, base64 std/urlsafe as a whole and at each alignment inside longer base64)
    and the plain base64 of the value, padded or not."""
    raw = secret.encode()
    plain = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return encoded_forms(secret) | plain | {p.rstrip("=") for p in plain}


@dataclass
class Secret:
    """One secret the run handled, the forms it is looked for in, and what to call it in a
    report (never its value)."""

    label: str
    value: str = field(repr=False)
    forms: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.forms = secret_forms(self.value)


@dataclass
class Scan:
    """Every finding so far, as lines naming the place, the secret's label and the text
    around it with the form found replaced by `<label>`."""

    secrets: list[Secret]
    findings: list[str] = field(default_factory=list)
    places: int = 0  # how many texts were looked at: a scan that saw nothing proves nothing

    def text(self, place: str, text: str, *, skip: Iterable[str] = ()) -> None:
        """Look for every secret (but those labelled in `skip`) in `text`, found at `place`."""
        self.places += 1
        for secret in self.secrets:
            if secret.label in skip:
                continue
            for form in sorted(secret.forms, key=len, reverse=True):
                at = text.find(form)
                if at < 0:
                    continue
                self.findings.append(f"{place}: {secret.label}: {_around(text, at, form, secret)}")
                break

    def hide(self, text: str) -> str:
        """`text` with every form of every secret replaced by its label: what a failure may print."""
        for secret in self.secrets:
            for form in sorted(secret.forms, key=len, reverse=True):
                text = text.replace(form, f"<{secret.label}>")
        return text

    def data(self, place: str, data: bytes, *, skip: Iterable[str] = ()) -> None:
        self.text(place, data.decode("utf-8", errors="replace"), skip=skip)

    def report(self) -> str:
        return f"{len(self.findings)} place(s) hold a secret in clear:\n" + "\n".join(self.findings)


def _around(text: str, at: int, form: str, secret: Secret) -> str:
    """About CONTEXT_CHARS characters around a finding, every form of the secret replaced by its
    label. Each side is cut from a longer piece after the replacing, so a form cut by the edge
    of the window cannot leave a piece of the secret in the excerpt."""
    half, longest = CONTEXT_CHARS // 2, max(len(f) for f in secret.forms)
    label = f"<{secret.label}>"

    def hidden(piece: str) -> str:
        for other in sorted(secret.forms, key=len, reverse=True):
            piece = piece.replace(other, label)
        return piece

    before = hidden(text[max(0, at - half - longest) : at])[-half:]
    after = hidden(text[at + len(form) : at + len(form) + half + longest])[:half]
    excerpt = before + label + after
    if any(other in excerpt for other in secret.forms):
        return "(excerpt withheld: a piece of the secret is left in it)"
    return repr(excerpt)


async def scan_streams(nats_url: str, scan: Scan, *, skip_streams: Mapping[str, Iterable[str]] = {}) -> list[str]:
    """Every message kept in every JetStream stream (events, logs, work, dead letters, KV
    buckets and object stores with their chunks): subject, headers and body. Returns the names
    of the streams read. `skip_streams` maps a stream to the secret labels not looked for in it."""
    nc = await nats.connect(nats_url, name="secret-scan")
    names: list[str] = []
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            assert name is not None
            names.append(name)
            skip = tuple(skip_streams.get(name, ()))
            if not info.state.messages:
                continue
            for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(name, seq)
                except NotFoundError:
                    continue  # acked off a work queue, deleted, or purged
                headers = json.dumps(dict(msg.headers or {}))
                body = (msg.data or b"").decode("utf-8", errors="replace")
                place = f"stream {name} subject {msg.subject} seq {seq}"
                scan.text(place, f"{msg.subject}\n{headers}\n{body}", skip=skip)
    finally:
        await nc.close()
    return names


async def scan_tables(database_url: str, scan: Scan, *, skip_tables: Mapping[str, Iterable[str]] = {}) -> list[str]:
    """Every row of every table of the store's database, as PostgreSQL's text of the row.
    Returns the tables read. `skip_tables` maps a table to the secret labels not looked for in it."""
    conn = await asyncpg.connect(database_url)
    tables: list[str] = []
    try:
        rows = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
        for row in rows:
            table = f'"{row["schemaname"]}"."{row["tablename"]}"'
            tables.append(table)
            for n, record in enumerate(await conn.fetch(f"SELECT t::text AS row FROM {table} t")):
                skip = tuple(skip_tables.get(row["tablename"], ()))
                scan.text(f"table {table} row {n}", record["row"], skip=skip)
    finally:
        await conn.close()
    return tables
