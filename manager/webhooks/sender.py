"""One webhook attempt over HTTP: check the URL, resolve and check the host, connect to an
address that was checked, POST, and say what happened. Never raises for what the receiver does.

The connection goes to a checked address with the URL's host in ``Host`` and, for https, as the
TLS server name (SNI and certificate check), so DNS is asked once per attempt and its answer is
the one that was checked. The addresses are tried in the resolver's order: one that refuses the
connection or does not take it in its share of the time left hands over to the next, all within
the attempt's one time budget. Redirects are not followed (a 3xx is a failure); any answer but a
2xx, a timeout of the whole attempt or a connection failure at every address is a failure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from manager.errors import UnsafeWebhookUrl

from . import urls


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: float


def make_client() -> httpx.AsyncClient:
    """A client for attempts: no redirects, no proxies from the environment (the connection must
    go to the checked address), no kept-alive connections (one is keyed by address alone, and
    two names on one address must not share one)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": "InferenceKey-Webhooks/1"},
    )


def pinned_request(
    client: httpx.AsyncClient,
    url: urls.CheckedUrl,
    address: urls.IPAddress,
    body: bytes,
    headers: dict[str, str],
    timeout: float | httpx.Timeout,
) -> httpx.Request:
    """The POST to ``address`` (one that ``url``'s host was checked at), addressed to the host."""
    parsed = httpx.URL(url.url)
    extensions: dict[str, Any] = {}
    if url.scheme == "https" and url.literal is None:
        extensions["sni_hostname"] = url.host
    return client.build_request(
        "POST",
        parsed.copy_with(host=str(address)),
        content=body,
        headers={**headers, "Host": parsed.netloc.decode("ascii")},
        extensions=extensions,
        timeout=timeout,
    )


class Unreachable(Exception):
    """No checked address took the connection."""


async def post_to_first_reachable(
    client: httpx.AsyncClient,
    target: urls.Target,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
) -> httpx.Response:
    """The answer of the first of ``target``'s addresses that takes the connection, by
    ``deadline`` (``time.monotonic()``). Each address gets an equal share of the time left to
    connect, so one that silently drops the connection leaves the next ones their turn."""
    failures: list[tuple[urls.IPAddress, str]] = []
    count = len(target.addresses)
    for index, address in enumerate(target.addresses):
        left = max(deadline - time.monotonic(), 0.001)
        connect_s = left / (count - index)
        request = pinned_request(
            client, target.url, address, body, headers, httpx.Timeout(left, connect=connect_s)
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectTimeout:
            if index == count - 1:
                raise  # the attempt's time is spent: no answer in time
            failures.append((address, f"no connection within {connect_s:.1f} s"))
        except httpx.ConnectError as failed:
            failures.append((address, str(failed) or type(failed).__name__))
    if count == 1:
        raise Unreachable(failures[0][1])
    tried = "; ".join(f"{address}: {reason}" for address, reason in failures)
    raise Unreachable(f"no address took the connection ({tried})")


async def send(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout_s: float,
) -> Attempt:
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            try:
                checked = urls.check_url(url, allow_private=allow_private)
            except UnsafeWebhookUrl as refused:
                raise UnsafeWebhookUrl(f"refused: {refused.message}") from None
            target = await urls.resolve(checked, allow_private=allow_private, timeout_s=timeout_s)
            response = await post_to_first_reachable(
                client, target, body, headers, deadline=started + timeout_s
            )
            await response.aclose()  # its body is not read: the status is the answer
            status_code = response.status_code
    except UnsafeWebhookUrl as refused:
        error = refused.message
    except (TimeoutError, httpx.TimeoutException):
        error = f"no answer within {timeout_s:g} s"
    except Unreachable as failed:
        error = f"connection failed: {failed}"
    except (httpx.HTTPError, httpx.InvalidURL) as failed:
        error = f"connection failed: {str(failed) or type(failed).__name__}"
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    if status_code is not None and not 200 <= status_code < 300:
        error = f"answered HTTP {status_code}"
        if 300 <= status_code < 400:
            error += " (a redirect; redirects are not followed)"
    return Attempt(error is None, status_code, error, duration_ms)
