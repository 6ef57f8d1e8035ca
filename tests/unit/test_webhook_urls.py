"""The webhook SSRF rules (manager/webhooks/urls.py), the pinned request a delivery sends, the
delivery body, and the webhook settings: pure code, no server."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from inferencekey import webhooks

from manager.db.models import Job
from manager.errors import UnsafeWebhookUrl
from manager.settings import Settings
from manager.webhooks import payload, sender, urls

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "::ffff:8.8.8.8",
]
NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.0.9",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "0.1.2.3",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::1",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2001::1",  # Teredo
    "2001:db8::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "100::1",
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address: str) -> None:
    assert urls.is_public(ipaddress.ip_address(address))
    assert urls.address_refusal(ipaddress.ip_address(address), allow_private=False) is None


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_loopback_private_link_local_cgnat_and_reserved_addresses_are_not(address: str) -> None:
    assert not urls.is_public(ipaddress.ip_address(address))
    assert urls.address_refusal(ipaddress.ip_address(address), allow_private=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "::1", "fd00::1", "::ffff:10.0.0.1"])
def test_allowing_private_addresses_allows_private_unicast(address: str) -> None:
    assert urls.address_refusal(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"])
def test_unspecified_multicast_and_broadcast_are_refused_even_when_private_is_allowed(
    address: str,
) -> None:
    refusal = urls.address_refusal(ipaddress.ip_address(address), allow_private=True)
    assert refusal == "an unspecified, multicast or broadcast address"


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # cloud metadata
        "169.254.0.1",
        "169.254.255.254",
        "fe80::1",
        "febf::1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    ],
)
def test_link_local_addresses_are_refused_even_when_private_is_allowed(address: str) -> None:
    for allow_private in (True, False):
        refusal = urls.address_refusal(ipaddress.ip_address(address), allow_private=allow_private)
        assert refusal == "a link-local address (where cloud metadata services answer)"
    with pytest.raises(UnsafeWebhookUrl, match="link-local"):
        urls.check_url(
            f"http://[{address}]/" if ":" in address else f"http://{address}/", allow_private=True
        )


def test_port_zero_is_refused_even_when_private_is_allowed() -> None:
    with pytest.raises(UnsafeWebhookUrl, match="port must be from 1 to 65535"):
        urls.check_url("http://127.0.0.1:0/hook", allow_private=True)
    assert urls.check_url("http://127.0.0.1:1/hook", allow_private=True).port == 1


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com/", "must be https://"),
        ("ftp://example.com/", "must be https://"),
        ("example.com/hook", "must be https://"),
        ("https://user:pw@example.com/", "must not carry credentials"),
        ("https://user@example.com/", "must not carry credentials"),
        ("https://:pw@example.com/", "must not carry credentials"),
        ("https://example.com/#x", "fragment"),
        ("https://example.com/#", "fragment"),
        ("https:///path", "no host"),
        ("https://", "no host"),
        ("", "empty"),
        ("https://example.com/" + "a" * 2100, "longer than 2048"),
        ("https://exämple.com/", "plain ASCII"),
        ("https://example.com/a b", "plain ASCII"),
        ("https://example.com/\r\nX: y", "plain ASCII"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://example.com:port/", "not a valid URL"),
        ("https://[fe80::1%25eth0]/", "network interface"),
        ("https://127.0.0.1/", "127.0.0.1 is a non-public address"),
        ("https://[::ffff:7f00:1]/", "is a non-public address"),
        ("https://169.254.169.254/", "169.254.169.254 is a link-local address"),
        ("https://example.com:0/", "port must be from 1 to 65535"),
    ],
)
def test_urls_breaking_a_rule_are_refused_naming_it(url: str, words: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as refused:
        urls.check_url(url, allow_private=False)
    assert words in refused.value.message
    assert refused.value.field == "url" and refused.value.status == 400


def test_allowing_private_receivers_allows_http_but_never_credentials() -> None:
    checked = urls.check_url("http://10.0.0.5:8080/hook", allow_private=True)
    assert (checked.scheme, checked.host, checked.port) == ("http", "10.0.0.5", 8080)
    assert checked.literal == ipaddress.ip_address("10.0.0.5")
    with pytest.raises(UnsafeWebhookUrl, match="credentials"):
        urls.check_url("http://a:b@10.0.0.5/", allow_private=True)
    with pytest.raises(UnsafeWebhookUrl, match="must be http:// or https://"):
        urls.check_url("ftp://10.0.0.5/", allow_private=True)


def test_a_safe_url_keeps_its_host_and_default_port() -> None:
    checked = urls.check_url("https://Hooks.Example.com./in?a=1", allow_private=False)
    assert (checked.host, checked.port, checked.literal) == ("hooks.example.com", 443, None)
    assert urls.check_url("https://[2606:4700::1111]:8443/", allow_private=False).port == 8443


def test_a_name_that_resolves_to_loopback_is_refused_after_resolution() -> None:
    checked = urls.check_url("https://localhost:8443/hook", allow_private=False)
    with pytest.raises(UnsafeWebhookUrl) as refused:
        asyncio.run(urls.resolve(checked, allow_private=False, timeout_s=3))
    assert refused.value.message == "refused: localhost resolves to a non-public address"
    target = asyncio.run(urls.resolve(checked, allow_private=True, timeout_s=3))
    assert target.addresses and not any(a.is_global for a in target.addresses)
    assert target.url is checked


def test_a_name_that_does_not_resolve_is_refused() -> None:
    checked = urls.check_url("https://no-such-host.invalid/", allow_private=False)
    with pytest.raises(UnsafeWebhookUrl, match=r"no-such-host\.invalid (does not|did not) resolve"):
        asyncio.run(urls.resolve(checked, allow_private=False, timeout_s=3))


def test_an_attempt_connects_to_the_checked_address_with_the_name_as_host_and_sni() -> None:
    client = httpx.AsyncClient()
    checked = urls.check_url("https://hooks.example.com:8443/in?a=1", allow_private=False)
    address = ipaddress.ip_address("2606:4700::1111")
    request = sender.pinned_request(client, checked, address, b"{}", {"X-A": "b"}, 3.0)
    assert str(request.url) == "https://[2606:4700::1111]:8443/in?a=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["x-a"] == "b" and request.content == b"{}"
    literal = urls.check_url("https://8.8.8.8/", allow_private=False)
    assert (
        "sni_hostname"
        not in sender.pinned_request(client, literal, address, b"", {}, 3.0).extensions
    )
    asyncio.run(client.aclose())


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    """hooks.example.com resolves to ``addresses``, in that order."""

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        assert host == "hooks.example.com"
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _send(
    handler: Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
    timeout_s: float = 3,
) -> sender.Attempt:
    async def run() -> sender.Attempt:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await sender.send(
                client,
                "https://hooks.example.com/in",
                b"{}",
                {},
                allow_private=False,
                timeout_s=timeout_s,
            )

    return asyncio.run(run())


def test_an_attempt_tries_the_next_checked_address_when_one_does_not_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _resolving_to(monkeypatch, "2606:4700::1111", "8.8.4.4", "8.8.8.8")
    tried: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        assert request.headers["host"] == "hooks.example.com"
        assert request.extensions["sni_hostname"] == "hooks.example.com"
        if request.url.host == "2606:4700::1111":
            raise httpx.ConnectError("[Errno 101] Network is unreachable", request=request)
        if request.url.host == "8.8.4.4":
            raise httpx.ConnectTimeout("timed out", request=request)
        return httpx.Response(204)

    attempt = _send(handler)
    assert (attempt.delivered, attempt.status_code, attempt.error) == (True, 204, None)
    assert tried == ["2606:4700::1111", "8.8.4.4", "8.8.8.8"]


def test_an_attempt_that_no_address_takes_names_each_and_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _resolving_to(monkeypatch, "2606:4700::1111", "8.8.8.8")

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    attempt = _send(handler)
    assert not attempt.delivered and attempt.status_code is None
    assert attempt.error == (
        "connection failed: no address took the connection (2606:4700::1111: [Errno 111] "
        "Connection refused; 8.8.8.8: [Errno 111] Connection refused)"
    )
    _resolving_to(monkeypatch, "8.8.8.8")
    assert _send(handler).error == "connection failed: [Errno 111] Connection refused"


def test_every_address_shares_the_attempts_one_time_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _resolving_to(monkeypatch, "8.8.4.4", "8.8.8.8")
    connect_timeouts: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        connect_timeouts.append(request.extensions["timeout"]["connect"])
        await asyncio.sleep(0.3)
        raise httpx.ConnectTimeout("timed out", request=request)

    attempt = _send(handler, timeout_s=0.4)  # the second address has 0.1 s left, not 0.4 s
    assert attempt.error == "no answer within 0.4 s" and attempt.duration_ms < 1000
    assert connect_timeouts[0] == pytest.approx(0.2, abs=0.05)


def test_a_name_server_that_never_answers_holds_only_the_webhook_resolver_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolving happens on threads of its own: however many lookups hang, the event loop's
    default executor (what the rest of the Manager runs blocking calls on) stays free."""
    release = threading.Event()
    resolving_on: set[str] = set()

    def never_answers(*args: object, **kwargs: object) -> list[Any]:
        resolving_on.add(threading.current_thread().name)
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    checked = urls.check_url("https://hooks.example.com/", allow_private=False)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        try:
            lookups = [urls.resolve(checked, allow_private=False, timeout_s=0.2) for _ in range(40)]
            for refused in await asyncio.gather(*lookups, return_exceptions=True):
                assert isinstance(refused, UnsafeWebhookUrl)
                assert refused.message == "hooks.example.com did not resolve within 0.2 s"
            assert await asyncio.wait_for(loop.run_in_executor(None, int, "7"), 2) == 7
        finally:
            release.set()

    asyncio.run(run())
    assert resolving_on and all(name.startswith("webhook-dns") for name in resolving_on)
    assert len(resolving_on) <= urls.RESOLVER_THREADS


def test_a_receiver_answer_other_than_2xx_is_a_failure_and_redirects_are_not_followed() -> None:
    answers = iter([302, 500, 204])

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "8.8.8.8"
        return httpx.Response(next(answers), headers={"Location": "https://8.8.4.4/"})

    async def three() -> list[sender.Attempt]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return [
                await sender.send(
                    client, "https://8.8.8.8/h", b"{}", {}, allow_private=False, timeout_s=1
                )
                for _ in range(3)
            ]

    redirect, failure, success = asyncio.run(three())
    assert redirect.error == "answered HTTP 302 (a redirect; redirects are not followed)"
    assert not redirect.delivered and redirect.status_code == 302
    assert (failure.delivered, failure.error) == (False, "answered HTTP 500")
    assert (success.delivered, success.status_code, success.error) == (True, 204, None)


def test_a_job_body_is_the_same_bytes_for_every_destination_but_ts() -> None:
    at = datetime(2026, 11, 27, 10, 0, 0, 250000, tzinfo=UTC)
    data = json.dumps({"job_id": "j", "status": "ok", "payload": {"a": [1, 2.5]}})
    body = payload.job_body(
        event="job.completed", at=at, job_id="j", context='{"k": [1, null]}', data=data
    )
    assert json.loads(body) == {
        "event": "job.completed",
        "ts": "2026-11-27T10:00:00.250000Z",
        "job_id": "j",
        "context": {"k": [1, None]},
        "data": {"job_id": "j", "status": "ok", "payload": {"a": [1, 2.5]}},
    }
    assert b'"context":{"k": [1, null]},' in body  # as the caller's JSON was stored
    without = payload.job_body(event="job.failed", at=at, job_id="j", context=None, data="{}")
    assert "context" not in json.loads(without)
    first = payload.headers(body, secret="whsec_a", at=at, event="job", job_id="j")
    second = payload.headers(body, secret="whsec_b", at=at, event="job", job_id="j")
    assert first["X-InferenceKey-Signature"] != second["X-InferenceKey-Signature"]
    assert first["X-InferenceKey-Job-Id"] == "j" and first["X-InferenceKey-Event"] == "job"
    verified = webhooks.verify(
        body, first["X-InferenceKey-Signature"], "whsec_a", now=at.timestamp()
    )
    assert verified["job_id"] == "j"
    ping = payload.ping_body(at=at, destination_id="whd_x")
    assert json.loads(ping)["data"] == {"destination_id": "whd_x"}
    assert "X-InferenceKey-Job-Id" not in payload.headers(
        ping, secret="whsec_a", at=at, event="ping", job_id=None
    )


def _finished_job(**columns: Any) -> Job:
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    defaults: dict[str, Any] = {
        "id": "j",
        "workload_id": "w",
        "status": "succeeded",
        "attempts": 1,
        "context": None,
        "result": b'{"answer": 42}',
        "result_content_type": "application/json",
        "result_status": 200,
        "error": None,
        "created_at": at,
        "started_at": at,
        "finished_at": at,
    }
    return Job(**{**defaults, **columns})


def _strict(text: str | bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a body")

    return json.loads(text, parse_constant=refuse)


def test_a_job_body_is_strict_json_or_is_not_built() -> None:
    parts = payload.job_parts(_finished_job(context='{"k": 1.5}'))
    assert (parts.event, parts.context, parts.binary) == ("job.completed", '{"k": 1.5}', False)
    assert _strict(parts.data)["payload"] == {"answer": 42}
    with pytest.raises(payload.Unbuildable, match=r"the context is not JSON \(NaN is not JSON"):
        payload.job_parts(_finished_job(context='{"k": NaN}'))
    # A result holding NaN or Infinity is read with them as null, or its body is not built.
    try:
        parts = payload.job_parts(_finished_job(result=b'{"a": NaN, "b": -Infinity}'))
    except payload.Unbuildable as error:
        assert "the data is not JSON" in str(error)
    else:
        assert _strict(parts.data)["payload"] == {"a": None, "b": None}


@pytest.mark.parametrize(
    ("content_type", "binary"),
    [
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("text/plain", False),
        ("image/png", True),
        ("audio/wav", True),
        ("application/octet-stream", True),
        (None, True),
    ],
)
def test_which_results_go_as_binary_is_told_by_their_type_before_they_are_read(
    content_type: str | None, binary: bool
) -> None:
    assert payload.binary_result(content_type) is binary
    job = _finished_job(result=b"\x89PNG", result_content_type=content_type)
    if content_type is None or not content_type.startswith("application/json"):
        assert payload.job_parts(job).binary is binary


def test_webhook_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.webhook_allow_private is False and defaults.webhook_timeout_s == 3.0
    assert defaults.webhook_retry_delays_s == (60, 300, 900, 3600, 21600)
    assert defaults.webhook_max_binary_bytes == 1024 * 1024
    monkeypatch.setenv("INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S", "0.2, 0.5,1")
    monkeypatch.setenv("INFERENCEKEY_WEBHOOK_TIMEOUT_S", "1.5")
    settings = Settings.from_env()
    assert settings.webhook_allow_private is True
    assert settings.webhook_retry_delays_s == (0.2, 0.5, 1.0)
    assert settings.webhook_timeout_s == 1.5
    monkeypatch.setenv("INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE", "maybe")
    with pytest.raises(ValueError, match="INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE must be true or"):
        Settings.from_env()
    monkeypatch.setenv("INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE", "0")
    monkeypatch.setenv("INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S", "60,-1")
    with pytest.raises(ValueError, match="INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S must be at least"):
        Settings.from_env()
