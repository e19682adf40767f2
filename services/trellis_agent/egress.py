"""Where http and function activities may connect: public addresses, plus an allow-list of CIDRs.

Checked after DNS resolution (a resolver that drops denied addresses, so the connection goes to
an address that was checked) and on every redirect hop (a middleware for literal IP hosts).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from trellis_core.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
VARIABLE = "TRELLIS_AGENT_EGRESS_ALLOW"
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class EgressDenied(Exception):
    """A call to an address the policy refuses; never retried (the address will not change)."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"egress to {host} ({address}) denied by the agent's egress policy ({VARIABLE})")
        self.host = host
        self.address = address


@dataclass(frozen=True)
class EgressPolicy:
    """Denies loopback, link-local (cloud metadata), private, unique-local, unspecified, multicast
    and reserved addresses unless an `allow` network holds them; every other address is allowed."""

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> EgressPolicy:
        networks: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(f"{VARIABLE}: {cidr!r} is not a CIDR (like 127.0.0.1/32): {exc}") from None
        return cls(tuple(networks))

    def allowing(self, address: str) -> EgressPolicy:
        """This policy and one more address (a function container this agent started itself)."""
        ip = ipaddress.ip_address(address)
        return EgressPolicy((*self.allow, ipaddress.ip_network(ip)))

    def permits(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
        if any(ip in network for network in self.allow):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
            return self.permits(str(inner))
        return not _internal(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64): the one a packet reaches."""
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def _internal(ip: IPAddress) -> bool:
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or not ip.is_global
    )


def literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class EgressResolver(AbstractResolver):
    """Wraps a resolver and keeps only the addresses the policy permits; none left: EgressDenied."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [entry for entry in found if self._policy.permits(entry["host"])]
        if not kept and found:
            raise EgressDenied(host, found[0]["host"])
        return kept

    async def close(self) -> None:
        await self._inner.close()


def egress_middleware(policy: EgressPolicy) -> aiohttp.ClientMiddlewareType:
    """Refuses a literal IP host (which aiohttp connects to without resolving) on every hop."""

    async def check(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        host = req.url.raw_host or ""
        ip = literal_ip(host)
        if ip is not None and not policy.permits(ip):
            raise EgressDenied(host, ip)
        return await handler(req)

    return check


def egress_session(policy: EgressPolicy, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A ClientSession that connects only where `policy` permits (`resolver`: the one it filters)."""
    connector = aiohttp.TCPConnector(resolver=EgressResolver(policy, resolver))
    return aiohttp.ClientSession(connector=connector, middlewares=(egress_middleware(policy),))
