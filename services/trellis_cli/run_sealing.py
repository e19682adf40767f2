"""`trellis run` on the bus seals its sensitive `--var` values before the request leaves.

The templates are here, so the CLI finds which of the variables it gives are declared sensitive
(trellis_templates.compiler.sensitive_variables, as the compiler does) and asks the state store
(op `SealValues`, over the same bus) to seal them under the tenant's key: the run request then
carries tokens, never the plain text. The CLI holds no key. If the store does not answer, the run
is not submitted: a clear value must not travel because a service was down.
"""

from __future__ import annotations

import msgspec

from trellis_core.bus import Bus
from trellis_core.errors import TrellisError
from trellis_core.events import RunRequested
from trellis_core.sealed import is_token
from trellis_store.api import Sealed, SealValues, StoreError
from trellis_store.client import StoreClient
from trellis_templates.compiler import sensitive_variables

SEAL_TIMEOUT_SECONDS = 10.0


def to_seal(request: RunRequested) -> dict[str, str]:
    """The request's variables that must be sealed: declared sensitive, not empty, not tokens."""
    names = sensitive_variables(request.sources, request.environment, request.variables)
    return {name: value for name, value in request.variables.items() if name in names and value and not is_token(value)}


async def sealed_request(bus: Bus, request: RunRequested, *, timeout: float = SEAL_TIMEOUT_SECONDS) -> RunRequested:  # noqa: ASYNC109
    """The request with its sensitive variables sealed by the state store; raises TrellisError
    (naming the variables, never their values) when the store does not seal them."""
    clear = to_seal(request)
    if not clear:
        return request
    store = StoreClient(bus.nc, timeout=timeout)
    try:
        answer = await store.ask(SealValues(tenant=request.tenant, values=clear), Sealed)
    finally:
        await store.close()
    names = ", ".join(sorted(clear))
    if isinstance(answer, StoreError):
        raise TrellisError(
            f"the sensitive variables {names} could not be sealed, so the run was not submitted "
            f"(nothing was sent in clear): the state store answered {answer.code}: {answer.message}"
        )
    missing = sorted(name for name in clear if not is_token(answer.values.get(name, "")))
    if missing:
        raise TrellisError(
            f"the state store did not seal the sensitive variables {', '.join(missing)}: the run was not submitted"
        )
    return msgspec.structs.replace(request, variables={**request.variables, **{n: answer.values[n] for n in clear}})
