"""What a process-executor command may learn of the agent that started it: as little as Linux allows.

A command runs as the agent's user and `/proc/$PPID/environ` shows the environment the agent was
STARTED with. Credentials belong in a file (TRELLIS_NATS_CREDS_FILE); one given in a variable is
overwritten in that start-up block once the agent is connected.
"""

from __future__ import annotations

import ctypes
import os
import sys
import urllib.parse
from collections.abc import Mapping

from trellis_core.logs import get_logger

PR_SET_DUMPABLE = 4
URL_VARIABLES = ("TRELLIS_NATS_URL", "TRELLIS_DATABASE_URL")
log = get_logger("agent.guard")


def credentials_in_environment(environ: Mapping[str, str]) -> list[str]:
    """The variables of `environ` that carry a secret in the environment itself."""
    found = []
    for name in URL_VARIABLES:
        url = urllib.parse.urlsplit(environ.get(name, ""))
        if url.password or url.username:
            found.append(name)
    return found


def guard_agent_process() -> None:
    """Scrub credentials from this process's start-up environment, and make it non-dumpable so
    that its `/proc/<pid>/environ` and memory are closed to processes of a (non-root) same user."""
    if not sys.platform.startswith("linux"):
        return
    for name in credentials_in_environment(os.environ):
        scrub_initial_variable(name)
        os.environ.pop(name, None)
        log.warning(
            "credentials_in_environment",
            variable=name,
            hint="scrubbed from the agent's environment, but whatever started the agent still shows "
            "them; give NATS credentials through TRELLIS_NATS_CREDS_FILE",
        )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("not_made_non_dumpable", errno=ctypes.get_errno())


def scrub_initial_variable(name: str) -> bool:
    """Overwrite the value of `name` where the C environment holds it: for a variable never set
    since start-up, the block the kernel shows as /proc/<pid>/environ. True if it was found."""
    libc = ctypes.CDLL(None)
    entries = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    prefix = f"{name}=".encode()
    index, found = 0, False
    while (address := entries[index]) is not None:
        entry = ctypes.string_at(address)
        if entry.startswith(prefix):
            ctypes.memset(address + len(prefix), ord("*"), len(entry) - len(prefix))
            found = True
        index += 1
    return found
