"""Which data-plane paths are forwarded, and as what: the same check at the gateway and agent."""

from __future__ import annotations

import pytest

from ik_contracts.endpoint_paths import EndpointPathError, parse_endpoint_target

SMUGGLING_PATH = (
    b"/endpoint/a/echo/v1/models%20HTTP/1.1%0D%0Ahost:%20x%0D%0Acontent-length:%200%0D%0A%0D%0A"
    b"POST%20/endpoint/b/victim/v1/chat/completions"
)


def test_a_contract_route_is_forwarded_as_its_canonical_target() -> None:
    target = parse_endpoint_target(b"/endpoint/acme/chat/v1/chat/completions", b"")

    assert (target.project, target.workload, target.route) == (
        "acme",
        "chat",
        "v1/chat/completions",
    )
    assert target.upstream_target(with_prefix=True) == "/endpoint/acme/chat/v1/chat/completions"
    assert target.upstream_target(with_prefix=False) == "/v1/chat/completions"


def test_percent_encoded_crlf_in_the_path_is_refused_not_decoded_into_the_request_line() -> None:
    with pytest.raises(EndpointPathError):
        parse_endpoint_target(SMUGGLING_PATH, b"")


@pytest.mark.parametrize(
    "path",
    [
        b"/endpoint/p/w/v1/responses",
        b"/endpoint/p/w/health",
        b"/endpoint/p/w/slots",
        b"/endpoint/p/w/metrics",
        b"/endpoint/p/w/api/pull",
        b"/endpoint/p/w/api/delete",
        b"/endpoint/p/w/v1/../../..",
        b"/endpoint/p/w/v1/../health",
        b"/endpoint/p/w/v1/%2e%2e/slots",
        b"/endpoint/p/w/v1%2fchat%2fcompletions",
        b"/endpoint/p/w/v1/chat/completions%00",
        b"/endpoint/p/w/v1/chat/completions%20",
        b"/endpoint/p/w/v1/chat/compl\xc3\xa9tions",
        b"/endpoint/p/w/",
        b"/endpoint/p/w",
        b"/endpoint/p%0d%0a/w/v1/models",
        b"/endpoint/p/w%00/v1/models",
        b"/endpoint/../w/v1/models",
        b"/v1/models",
    ],
)
def test_engine_management_and_malformed_paths_are_refused(path: bytes) -> None:
    with pytest.raises(EndpointPathError):
        parse_endpoint_target(path, b"")


def test_dot_segments_are_resolved_before_the_route_is_checked() -> None:
    target = parse_endpoint_target(b"/endpoint/p/w/v1/models/../chat/./completions", b"")

    assert target.route == "v1/chat/completions"


def test_query_bytes_outside_printable_ascii_are_percent_encoded() -> None:
    target = parse_endpoint_target(b"/endpoint/p/w/v1/models", b"a=1 2&b=\r\n\xff#x")

    assert target.query == b"a=1%202&b=%0D%0A%FF%23x"
    assert target.upstream_target(with_prefix=False) == "/v1/models?a=1%202&b=%0D%0A%FF%23x"


def test_the_refusal_message_quotes_no_request_byte() -> None:
    with pytest.raises(EndpointPathError) as refused:
        parse_endpoint_target(SMUGGLING_PATH, b"")

    assert "victim" not in str(refused.value) and "\r" not in str(refused.value)
