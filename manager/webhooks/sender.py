"""One webhook attempt over HTTP: check the URL, resolve and check the host, connect to the
address that was checked, POST, and say what happened. Never raises for what the receiver does.

The connection goes to the checked address with the URL's host in ``Host`` and, for https, as
the TLS server name (SNI and certificate check), so DNS is asked once per attempt and its answer
is the one that was checked. Redirects are not followed (a 3xx is a failure); any answer but a
2xx, a timeout of the whole attempt or a connection failure is a failure.
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
    target: urls.Target,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
) -> httpx.Request:
    """The POST to ``target``'s checked address, addressed to its URL's host."""
    url = httpx.URL(target.url.url)
    extensions: dict[str, Any] = {}
    if target.url.scheme == "https" and target.url.literal is None:
        extensions["sni_hostname"] = target.url.host
    return client.build_request(
        "POST",
        url.copy_with(host=str(target.address)),
        content=body,
        headers={**headers, "Host": url.netloc.decode("ascii")},
        extensions=extensions,
        timeout=timeout_s,
    )


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
            request = pinned_request(client, target, body, headers, timeout_s)
            response = await client.send(request, stream=True)
            await response.aclose()  # its body is not read: the status is the answer
            status_code = response.status_code
    except UnsafeWebhookUrl as refused:
        error = refused.message
    except (TimeoutError, httpx.TimeoutException):
        error = f"no answer within {timeout_s:g} s"
    except (httpx.HTTPError, httpx.InvalidURL) as failed:
        error = f"connection failed: {str(failed) or type(failed).__name__}"
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    if status_code is not None and not 200 <= status_code < 300:
        error = f"answered HTTP {status_code}"
        if 300 <= status_code < 400:
            error += " (a redirect; redirects are not followed)"
    return Attempt(error is None, status_code, error, duration_ms)
