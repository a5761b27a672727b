"""The sans-IO policy protocol parser: framing, limits, odd input."""

from __future__ import annotations

import pytest

from iredapd.protocol import (
    ATTRIBUTES,
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    PolicyParser,
    ProtocolError,
    RawRequest,
)
from tests.support.requests import EOM, MINIMAL, RCPT_AUTH, encode

REFERENCE = [RCPT_AUTH, EOM, MINIMAL]


def feed_all(chunks: list[bytes]) -> list[RawRequest]:
    parser = PolicyParser()
    out: list[RawRequest] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    assert not parser.pending
    return out


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("attrs", REFERENCE, ids=["rcpt", "eom", "minimal"])
def test_every_split_offset_gives_the_same_request(attrs: dict[str, str]) -> None:
    wire = encode(attrs)
    whole = feed_all([wire])
    assert len(whole) == 1
    assert whole[0].attributes == dict(attrs)
    for cut in range(len(wire) + 1):
        assert feed_all([wire[:cut], wire[cut:]]) == whole, cut


@pytest.mark.parametrize("size", [1, 16, 128, 4096])
def test_read_sizes_give_the_same_requests(size: int) -> None:
    wire = b"".join(encode(a) for a in REFERENCE) * 3
    reqs = feed_all(chunked(wire, size))
    assert [r.attributes for r in reqs] == [dict(a) for a in REFERENCE] * 3


def test_pipelined_requests_come_out_in_order() -> None:
    wire = b"".join(encode({"protocol_state": "RCPT", "sender": f"u{i}@x.com"}) for i in range(50))
    reqs = PolicyParser().feed(wire)
    assert [r.attributes["sender"] for r in reqs] == [f"u{i}@x.com" for i in range(50)]


def test_all_postfix_attributes_are_known() -> None:
    assert set(RCPT_AUTH) <= ATTRIBUTES
    assert "tls_sni" in ATTRIBUTES and "mail_version" in ATTRIBUTES


def test_unknown_attributes_are_kept_aside() -> None:
    (req,) = PolicyParser().feed(b"protocol_state=RCPT\nx_future=1\nfoo=bar=baz\n\n")
    assert req.attributes == {"protocol_state": "RCPT"}
    assert req.unknown == {"x_future": "1", "foo": "bar=baz"}


def test_value_keeps_everything_after_the_first_equals_sign() -> None:
    (req,) = PolicyParser().feed(b"ccert_subject=CN=a=b, O=x\n\n")
    assert req.attributes["ccert_subject"] == "CN=a=b, O=x"


def test_lines_without_equals_are_ignored_and_counted() -> None:
    (req,) = PolicyParser().feed(b"protocol_state=RCPT\ngarbage line\nsender=a@b.com\n\n")
    assert req.attributes == {"protocol_state": "RCPT", "sender": "a@b.com"}
    assert req.malformed_lines == 1


def test_empty_values_are_kept() -> None:
    (req,) = PolicyParser().feed(b"sender=\nrecipient=\n\n")
    assert req.attributes == {"sender": "", "recipient": ""}


def test_duplicates_keep_the_last_value() -> None:
    (req,) = PolicyParser().feed(b"sender=a@b.com\nsender=c@d.com\n\n")
    assert req.attributes["sender"] == "c@d.com"


def test_empty_request_is_reported_empty() -> None:
    (req,) = PolicyParser().feed(b"\n")
    assert req.empty


def test_crlf_is_tolerated() -> None:
    (req,) = PolicyParser().feed(b"protocol_state=RCPT\r\nsender=a@b.com\r\n\r\n")
    assert req.attributes == {"protocol_state": "RCPT", "sender": "a@b.com"}


def test_non_utf8_bytes_are_replaced_not_fatal() -> None:
    (req,) = PolicyParser().feed(b"helo_name=h\xe9lo\xff\nsender=a@b.com\n\n")
    assert req.attributes["helo_name"] == "h\ufffdlo\ufffd"
    assert req.decode_errors == 1
    assert req.attributes["sender"] == "a@b.com"


def test_utf8_values_pass_through() -> None:
    (req,) = PolicyParser().feed("sender=jürgen@bücher.de\n\n".encode())
    assert req.attributes["sender"] == "jürgen@bücher.de"


def test_nul_byte_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="NUL"):
        PolicyParser().feed(b"sender=a\0b@c.com\n\n")


def test_one_mebibyte_line_is_refused_before_it_is_all_buffered() -> None:
    parser = PolicyParser()
    chunk = b"x" * 4096
    with pytest.raises(ProtocolError, match="line longer"):
        for _ in range(256):  # 1 MiB without a newline
            parser.feed(chunk)
    # the error came as soon as the limit was passed, not at the end
    assert len(parser._buf) <= MAX_LINE_BYTES + len(chunk)


def test_one_mebibyte_line_in_one_read_is_refused() -> None:
    with pytest.raises(ProtocolError, match="line longer"):
        PolicyParser().feed(b"sender=" + b"a" * (1 << 20) + b"\n\n")


def test_line_at_the_limit_is_accepted() -> None:
    value = "a" * (MAX_LINE_BYTES - len("ccert_subject="))
    (req,) = PolicyParser().feed(f"ccert_subject={value}\n\n".encode())
    assert req.attributes["ccert_subject"] == value


def test_hundred_thousand_attributes_are_refused() -> None:
    wire = b"".join(b"x%d=1\n" % i for i in range(100_000)) + b"\n"
    parser = PolicyParser()
    with pytest.raises(ProtocolError, match="attributes"):
        for chunk in chunked(wire, 4096):
            parser.feed(chunk)


def test_attribute_limit_is_exact() -> None:
    ok = b"".join(b"x%d=1\n" % i for i in range(MAX_ATTRIBUTES)) + b"\n"
    (req,) = PolicyParser().feed(ok)
    assert len(req.unknown) == MAX_ATTRIBUTES
    over = b"".join(b"x%d=1\n" % i for i in range(MAX_ATTRIBUTES + 1)) + b"\n"
    with pytest.raises(ProtocolError):
        PolicyParser().feed(over)


def test_request_size_limit() -> None:
    line = b"ccert_subject=" + b"a" * 8000 + b"\n"
    wire = line * (MAX_REQUEST_BYTES // len(line) + 1) + b"\n"
    with pytest.raises(ProtocolError, match="request larger"):
        PolicyParser().feed(wire)


def test_pending_tracks_a_started_request() -> None:
    parser = PolicyParser()
    assert not parser.pending
    parser.feed(b"sender=a")
    assert parser.pending
    parser.feed(b"@b.com\n")
    assert parser.pending
    assert len(parser.feed(b"\n")) == 1
    assert not parser.pending


def test_size_counts_wire_bytes() -> None:
    wire = encode(MINIMAL)
    (req,) = PolicyParser().feed(wire)
    assert req.size == len(wire)
