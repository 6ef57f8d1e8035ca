"""Which webhook URLs the Manager sends to (SSRF rules): checked when a destination is saved and
again at every delivery, after the host is resolved.

Rules: ``https`` only, no ``user:pass@``, no fragment, no port 0, at most ``MAX_URL_LENGTH``
characters of plain ASCII; the host must resolve, and every address it resolves to must be public
(loopback, private, link-local, CGNAT, multicast, reserved and documentation ranges are refused,
also inside IPv4-mapped, NAT64 and 6to4 IPv6 forms). Any other port. The operator setting
``webhook_allow_private`` allows ``http`` and loopback and private unicast addresses, for
receivers on the same network; link-local addresses (169.254.0.0/16, where cloud metadata services
answer, and fe80::/10) stay refused even then.

A delivery connects to the addresses that were checked (``Target.addresses``), never resolving
the name a second time, so a DNS answer that changes between the check and the connection cannot
reach a private address. Names are resolved on a few threads of their own (``RESOLVER_THREADS``),
so a tenant's name server that never answers cannot take the event loop's default executor.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from manager.errors import UnsafeWebhookUrl

MAX_URL_LENGTH = 2048
RESOLVER_THREADS = 4
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refused whatever the address's own flags say (Python's flags changed between releases).
_NON_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT (shared address space)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_NON_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/8",  # unspecified, loopback, IPv4-compatible and other reserved forms
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo among them)
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LINK_LOCAL = (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fe80::/10"))
# Never a receiver, even where private addresses are allowed.
_NEVER = "an unspecified, multicast or broadcast address"
_LINK_LOCAL_REFUSAL = "a link-local address (where cloud metadata services answer)"
# Only webhook URL checks resolve here: a name server that never answers holds one of these
# threads until the system resolver gives up, and nothing else of the Manager waits behind it.
_resolver = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="webhook-dns")


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the rules that need no DNS."""

    url: str
    scheme: str
    host: str  # lower-case name or address, without brackets
    port: int
    literal: IPAddress | None  # the host, when it is an address


@dataclass(frozen=True)
class Target:
    """Where one delivery attempt may connect: the checked URL and every address it resolved to
    (all checked), in the resolver's order."""

    url: CheckedUrl
    addresses: tuple[IPAddress, ...]


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4), else None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public(address: IPAddress) -> bool:
    """True only for a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
        networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _NON_PUBLIC_V6
    else:
        networks = _NON_PUBLIC_V4
    if any(address in network for network in networks):
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def _never_reachable(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    broadcast = address == ipaddress.IPv4Address("255.255.255.255")
    return address.is_unspecified or address.is_multicast or broadcast


def is_link_local(address: IPAddress) -> bool:
    """True for 169.254.0.0/16 and fe80::/10, also inside an IPv6 form that carries IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            address = inner
    return any(address in network for network in _LINK_LOCAL)


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a delivery may not connect to ``address``, or None when it may."""
    if _never_reachable(address):
        return _NEVER
    if is_link_local(address):
        return _LINK_LOCAL_REFUSAL
    if not allow_private and not is_public(address):
        return "a non-public address"
    return None


def check_url(url: str, *, allow_private: bool) -> CheckedUrl:
    """The rules that need no DNS; raises UnsafeWebhookUrl naming the rule broken."""
    if not url:
        raise UnsafeWebhookUrl("url is empty", field="url")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookUrl(f"url is longer than {MAX_URL_LENGTH} characters", field="url")
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeWebhookUrl(
            "url must be plain ASCII without spaces or control characters (percent-encode the "
            "path, punycode an international host name)",
            field="url",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeWebhookUrl(f"url is not a valid URL: {error}", field="url") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        rule = (
            "must be http:// or https://"
            if allow_private
            else "must be https:// (http:// only where the operator allows private receivers, "
            "INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE)"
        )
        raise UnsafeWebhookUrl(f"url {rule}", field="url")
    if "@" in parts.netloc:
        raise UnsafeWebhookUrl(
            "url must not carry credentials (user:password@): authenticate with the signature",
            field="url",
        )
    if "#" in url:
        raise UnsafeWebhookUrl("url must not have a fragment (#...)", field="url")
    if port == 0:
        raise UnsafeWebhookUrl("url's port must be from 1 to 65535", field="url")
    host = _host(parts)
    literal = _literal(host)
    if literal is not None:
        refusal = address_refusal(literal, allow_private=allow_private)
        if refusal is not None:
            raise UnsafeWebhookUrl(f"url's host {host} is {refusal}", field="url")
    default_port = 443 if scheme == "https" else 80
    return CheckedUrl(url, scheme, host, port or default_port, literal)


def _host(parts: SplitResult) -> str:
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeWebhookUrl("url has no host", field="url")
    if "%" in host:  # an IPv6 zone: a link-local address on one interface
        raise UnsafeWebhookUrl("url's host must not name a network interface (%)", field="url")
    return host


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(url: CheckedUrl, *, allow_private: bool, timeout_s: float) -> Target:
    """Resolve the host (on the webhook resolver's threads) and check every address it resolves
    to. Raises UnsafeWebhookUrl naming what is wrong."""
    if url.literal is not None:
        return Target(url, (url.literal,))
    loop = asyncio.get_running_loop()
    lookup = functools.partial(socket.getaddrinfo, url.host, url.port, type=socket.SOCK_STREAM)
    try:
        answers = await asyncio.wait_for(loop.run_in_executor(_resolver, lookup), timeout_s)
    except TimeoutError:
        raise UnsafeWebhookUrl(
            f"{url.host} did not resolve within {timeout_s:g} s", field="url"
        ) from None
    except (OSError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UnsafeWebhookUrl(f"{url.host} does not resolve: {reason}", field="url") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = _literal(str(sockaddr[0]).split("%", 1)[0])
        refusal = (
            "an unreadable address"
            if address is None
            else address_refusal(address, allow_private=allow_private)
        )
        if refusal is not None:
            # Every address must pass: a client of the name may be sent to any one of them.
            raise UnsafeWebhookUrl(f"refused: {url.host} resolves to {refusal}", field="url")
        assert address is not None
        addresses.append(address)
    if not addresses:
        raise UnsafeWebhookUrl(f"{url.host} does not resolve to any address", field="url")
    return Target(url, tuple(dict.fromkeys(addresses)))


async def check_destination(url: str, *, allow_private: bool, timeout_s: float) -> Target:
    """Every rule, as at save and before each delivery."""
    checked = check_url(url, allow_private=allow_private)
    return await resolve(checked, allow_private=allow_private, timeout_s=timeout_s)
