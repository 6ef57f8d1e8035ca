"""Webhook signatures (contract section 8): verify a delivery in your receiver, or sign one.

Each delivery carries ``X-InferenceKey-Signature: t=<unix seconds>,v1=<hex>``, where the hex
is the HMAC-SHA256 of ``f"{t}.{raw_body}"`` keyed with the destination's secret (the whole
``whsec_...`` string, as UTF-8). ``verify`` checks it on the exact bytes received, refuses
stale or future timestamps, and returns the event.

>>> from inferencekey import webhooks
>>> @app.post("/hooks/inferencekey")  # doctest: +SKIP
... async def receive(request: Request) -> Response:
...     try:
...         event = webhooks.verify(await request.body(),
...                                 request.headers.get(webhooks.SIGNATURE_HEADER), SECRET)
...     except webhooks.WebhookVerificationError:
...         return Response(status_code=400)
...     if event["event"] == "job.completed":
...         save(event["job_id"], event["data"]["payload"])
...     return Response(status_code=204)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from .errors import ConfigurationError, WebhookVerificationError

# The headers of a delivery (the Manager sends them; a receiver reads them).
EVENT_HEADER = "X-InferenceKey-Event"
JOB_ID_HEADER = "X-InferenceKey-Job-Id"
SIGNATURE_HEADER = "X-InferenceKey-Signature"
# The replay window the contract suggests, in seconds, either side of now.
DEFAULT_TOLERANCE_S = 300.0

_MALFORMED = f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex signature>"


def sign(raw_body: bytes, secret: str, timestamp: int) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.{raw_body}"`` keyed with ``secret``.

    >>> sign(b'{"event":"ping"}', "whsec_test", 1700000000)
    'aa8efe37b751e71157c508c5ac4acb1e9fe5225db98355dfc00f4b680afbc447'
    """
    message = f"{timestamp}.".encode() + raw_body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(raw_body: bytes, secret: str, timestamp: int) -> str:
    """The ``X-InferenceKey-Signature`` value for ``raw_body`` sent at ``timestamp``.

    >>> signature_header(b'{"event":"ping"}', "whsec_test", 1700000000)
    't=1700000000,v1=aa8efe37b751e71157c508c5ac4acb1e9fe5225db98355dfc00f4b680afbc447'
    """
    return f"t={timestamp},v1={sign(raw_body, secret, timestamp)}"


def _fail(code: str, message: str) -> WebhookVerificationError:
    return WebhookVerificationError(message, code=code)


def _parse_header(header: str | None) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a header; other schemes are ignored."""
    if header is None or not header.strip():
        raise _fail("signature_missing", f"missing {SIGNATURE_HEADER} header")
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals or not name or not value:
            raise _fail("signature_malformed", _MALFORMED)
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not (timestamps[0].isascii() and timestamps[0].isdigit()):
        raise _fail("signature_malformed", _MALFORMED)
    if not signatures:
        raise _fail("signature_malformed", f"{SIGNATURE_HEADER} header has no v1 signature")
    return int(timestamps[0]), signatures


def verify(
    raw_body: bytes | str,
    header: str | None,
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature and return its event, the decoded JSON body.

    ``raw_body`` must be the bytes as received (a ``str`` is taken as UTF-8): re-serialised
    JSON will not match. ``header`` is the ``X-InferenceKey-Signature`` value (None if
    absent). Any one ``v1`` signature may match, so a secret can be rotated. The timestamp
    must be within ``tolerance`` seconds of ``now`` (default: the clock), either way.
    Raises ``WebhookVerificationError`` otherwise; its ``code`` says why.

    >>> body = b'{"event":"ping"}'
    >>> verify(body, signature_header(body, "whsec_test", 1700000000), "whsec_test",
    ...        now=1700000060)
    {'event': 'ping'}
    """
    if not secret:
        raise ConfigurationError("webhook secret must not be empty")
    body = raw_body.encode("utf-8") if isinstance(raw_body, str) else bytes(raw_body)
    timestamp, signatures = _parse_header(header)
    expected = sign(body, secret, timestamp).encode()
    # Every candidate is compared, in constant time each, whatever matched before.
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in signatures]
    if not any(matches):
        raise _fail("signature_mismatch", "webhook signature does not match the body and secret")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise _fail(
            "timestamp_out_of_tolerance",
            f"webhook timestamp {timestamp} is outside the tolerance of {tolerance:g}s",
        )
    try:
        event = json.loads(body)
    except ValueError:
        raise _fail("body_not_json", "webhook body is not valid JSON") from None
    if not isinstance(event, dict):
        raise _fail("body_not_json", "webhook body is not a JSON object")
    return event
