"""The hop from the Manager's gateway to an agent: the headers it adds and strips, and the
engine-log route's query, which the Manager's route and the agent's read alike."""

from __future__ import annotations

from urllib.parse import parse_qs

from ik_contracts.upstream import Headers, end_to_end

GATEWAY_HEADER = b"x-inferencekey-gateway"
REPLICA_HEADER = b"x-inferencekey-replica"
# On a 502/503 from an agent, this tells the gateway that another replica may serve the request.
RETRYABLE = (b"x-inferencekey-retryable", b"1")
_NOT_FORWARDED = frozenset({b"authorization", GATEWAY_HEADER, REPLICA_HEADER})


def forwarded_headers(headers: Headers) -> Headers:
    return [(k, v) for k, v in end_to_end(headers) if k not in _NOT_FORWARDED]


MAX_LOG_TAIL = 10_000


def log_query(query: bytes) -> tuple[int, bool]:
    """``tail`` (1 to 10,000 lines, default 100) and ``follow`` (0 or 1) of a logs request;
    ValueError names what is wrong. The Manager's route reads the same."""
    params = parse_qs(query.decode("latin-1"))
    raw_tail = params.get("tail", ["100"])[-1]
    if not raw_tail.isdigit() or not 1 <= int(raw_tail) <= MAX_LOG_TAIL:
        raise ValueError(f"tail must be a whole number from 1 to {MAX_LOG_TAIL}")
    raw_follow = params.get("follow", ["0"])[-1]
    if raw_follow not in ("0", "1", "true", "false"):
        raise ValueError("follow must be 0 or 1")
    return int(raw_tail), raw_follow in ("1", "true")
