"""The sans-IO tcp_table(5) protocol: framing, %XX quoting, limits, reply forms."""

from __future__ import annotations

import re

import pytest

from iredapd.tcptable import (
    MAX_LINE_BYTES,
    MAX_REPLY_BYTES,
    Lookup,
    ProtocolError,
    Request,
    Status,
    TcpReply,
    TcpTableParser,
    Unexpected,
    decode,
    encode,
)

# Reference requests as Postfix's hex_quote() sends them.
WIRE = [
    b"get alice@example.com\n",
    b"get SRS0=bZmn=G3=example.com=alice@srs.mydomain.com\n",
    b"get %C3%BC@b%C3%BCcher.de\n",
    b"get a%20b@x.com\n",
    b"get 100%25@x.com\n",
    b"put key value\n",
    b"get \n",
]
EXPECTED: list[Request] = [
    Lookup("alice@example.com"),
    Lookup("SRS0=bZmn=G3=example.com=alice@srs.mydomain.com"),
    Lookup("ü@bücher.de"),
    Lookup("a b@x.com"),
    Lookup("100%@x.com"),
    Unexpected("put key value"),
    Lookup(""),
]


def feed_all(chunks: list[bytes]) -> list[Request]:
    parser = TcpTableParser()
    out: list[Request] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    assert not parser.pending
    return out


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def postfix_unquote(reply: bytes) -> tuple[int, bytes]:
    """What dict_tcp.c does with a reply line: check its shape, hex_unquote the rest."""
    assert reply.endswith(b"\n") and b"\n" not in reply[:-1]
    assert len(reply) <= MAX_REPLY_BYTES
    line = reply[:-1]
    assert re.fullmatch(rb"[0-9]{3}\s.*", line, re.DOTALL), line
    body = line[4:]
    # Every '%' must start a valid escape, or Postfix calls the reply malformed.
    assert re.fullmatch(rb"(?:[^%]|%[0-9A-Fa-f]{2})*", body, re.DOTALL), body
    return int(line[:3]), decode(body)


# -- framing -----------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(WIRE)))
def test_each_request_parses(index: int) -> None:
    assert feed_all([WIRE[index]]) == [EXPECTED[index]]


@pytest.mark.parametrize("index", range(len(WIRE)))
def test_every_split_offset_gives_the_same_request(index: int) -> None:
    wire = WIRE[index]
    for cut in range(len(wire) + 1):
        assert feed_all([wire[:cut], wire[cut:]]) == [EXPECTED[index]], cut


@pytest.mark.parametrize("size", [1, 16, 128, 4096])
def test_read_sizes_give_the_same_requests(size: int) -> None:
    wire = b"".join(WIRE) * 5
    assert feed_all(chunked(wire, size)) == EXPECTED * 5


def test_crlf_is_tolerated() -> None:
    assert feed_all([b"get a@x.com\r\n", b"bogus\r\n"]) == [
        Lookup("a@x.com"),
        Unexpected("bogus"),
    ]


def test_crlf_split_between_reads() -> None:
    assert feed_all([b"get a@x.com\r", b"\n"]) == [Lookup("a@x.com")]


def test_empty_lines_get_no_reply() -> None:
    assert feed_all([b"\n\r\n\nget a@x.com\n\n"]) == [Lookup("a@x.com")]


def test_incomplete_line_waits() -> None:
    parser = TcpTableParser()
    assert parser.feed(b"get a@x.co") == []
    assert parser.pending
    assert parser.feed(b"m\n") == [Lookup("a@x.com")]
    assert not parser.pending


def test_pipelined_requests_in_order() -> None:
    wire = b"".join(b"get u%d@x.com\n" % i for i in range(200))
    assert TcpTableParser().feed(wire) == [Lookup(f"u{i}@x.com") for i in range(200)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"get\ta@x.com", Lookup("a@x.com")),  # "separated by whitespace"
        (b"get   a@x.com  ", Lookup("a@x.com")),  # stripped, as iRedAPD does
        (b"get", Unexpected("get")),
        (b"get ", Lookup("")),
        (b"get a b@x.com", Lookup("a b@x.com")),  # raw space: kept, refused downstream
        (b"GET a@x.com", Unexpected("GET a@x.com")),  # the command is lower-case
        (b"getter a@x.com", Unexpected("getter a@x.com")),
        (b" get a@x.com", Unexpected(" get a@x.com")),
        (b"put a@x.com b", Unexpected("put a@x.com b")),
        (b"hello", Unexpected("hello")),
    ],
)
def test_line_forms(line: bytes, expected: Request) -> None:
    assert feed_all([line + b"\n"]) == [expected]


# -- %XX decoding of keys ----------------------------------------------------------


@pytest.mark.parametrize(
    ("quoted", "key"),
    [
        (b"a%40x.com", "a@x.com"),
        (b"%41%42c", "ABc"),
        (b"%e2%82%ac", "€"),  # hex in either case
        (b"%E2%82%AC", "€"),
        (b"%25", "%"),
        (b"%2525", "%25"),  # decoded once only
        (b"%zz@x.com", "%zz@x.com"),  # bad escape stays literal
        (b"a%4", "a%4"),
        (b"a%", "a%"),
        (b"%%41", "%A"),
        (b"%00@x.com", "\0@x.com"),  # an encoded NUL is just a key character
        (b"%0A%0D%09", "\n\r\t"),
    ],
)
def test_key_decoding(quoted: bytes, key: str) -> None:
    assert feed_all([b"get " + quoted + b"\n"]) == [Lookup(key)]


def test_invalid_utf8_is_flagged() -> None:
    [req] = feed_all([b"get %FF%FE@x.com\n"])
    assert isinstance(req, Lookup)
    assert req.decode_error
    assert req.key == "\ufffd\ufffd@x.com"
    [req] = feed_all([b"get \xc3(@x.com\n"])
    assert isinstance(req, Lookup) and req.decode_error


def test_raw_utf8_key_is_accepted() -> None:
    assert feed_all(["get ü@bücher.de\n".encode()]) == [Lookup("ü@bücher.de")]


def test_unexpected_line_with_bad_bytes() -> None:
    [req] = feed_all([b"\xff\xfe junk\n"])
    assert req == Unexpected("\ufffd\ufffd junk")


# -- limits --------------------------------------------------------------------------


def test_longest_line_is_accepted() -> None:
    key = "a" * (MAX_LINE_BYTES - len("get @x.com")) + "@x.com"
    line = f"get {key}".encode()
    assert len(line) == MAX_LINE_BYTES
    assert feed_all([line + b"\n"]) == [Lookup(key)]
    assert feed_all([line + b"\r\n"]) == [Lookup(key)]
    assert feed_all(chunked(line + b"\r\n", 4096)) == [Lookup(key)]


def test_overlong_line_in_one_read() -> None:
    with pytest.raises(ProtocolError):
        TcpTableParser().feed(b"get " + b"a" * MAX_LINE_BYTES + b"\n")


def test_overlong_line_without_newline() -> None:
    parser = TcpTableParser()
    with pytest.raises(ProtocolError):
        for chunk in chunked(b"get " + b"a" * (2 * MAX_LINE_BYTES), 4096):
            parser.feed(chunk)


def test_custom_limit() -> None:
    parser = TcpTableParser(max_line=10)
    assert parser.feed(b"get a@b.co\n") == [Lookup("a@b.co")]
    with pytest.raises(ProtocolError):
        parser.feed(b"get a@b.com\n")


def test_raw_nul_closes() -> None:
    with pytest.raises(ProtocolError):
        TcpTableParser().feed(b"get a\0b@x.com\n")


# -- reply rendering -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (TcpReply.found("alice@example.com"), b"200 alice@example.com\n"),
        (TcpReply.found("SRS0=e+C7=AF=x.com=u@y.net"), b"200 SRS0=e+C7=AF=x.com=u@y.net\n"),
        (TcpReply.not_found(), b"500 \n"),
        (
            TcpReply.not_found("Domain is srs_domain, bypassed."),
            b"500 Domain is srs_domain, bypassed.\n",
        ),
        (TcpReply.temporary("try later"), b"400 try later\n"),
        (TcpReply.temporary(), b"400 \n"),
        (TcpReply(Status.FOUND, "x"), b"200 x\n"),
    ],
)
def test_reply_forms(reply: TcpReply, wire: bytes) -> None:
    assert reply.render() == wire


def test_unexpected_reply_is_iredapds() -> None:
    assert Unexpected("put a b").reply.render() == b"500 Unexpected input: put a b\n"


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        ("a b@x.com", b"a%20b@x.com"),
        ("100%@x.com", b"100%25@x.com"),
        ("ü@x.com", b"%C3%BC@x.com"),
        ("a\nb", b"a%0Ab"),
        ("a\r\t\x0b\x0c\x7f\x01", b"a%0D%09%0B%0C%7F%01"),
        ("\0", b"%00"),
    ],
)
def test_data_encoding(data: str, wire: bytes) -> None:
    assert encode(data) == wire
    assert TcpReply.found(data).render() == b"200 " + wire + b"\n"


def test_text_keeps_plain_spaces_but_quotes_the_rest() -> None:
    reply = TcpReply.not_found("Unexpected input: 50% a\nb\tc ü")
    assert reply.render() == b"500 Unexpected input: 50%25 a%0Ab%09c %C3%BC\n"


HOSTILE = [
    "",
    " ",
    "%",
    "%zz",
    "%%",
    "a b c",
    "\0\n\r\t",
    "ü€😀",
    "\x7f\x80\x9f",
    "".join(chr(i) for i in range(256)),
    "x" * 5000,
    "%" * 2000,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_encode_decode_round_trip(value: str) -> None:
    quoted = encode(value)
    assert re.fullmatch(rb"[\x21-\x24\x26-\x7e]*|(?:[\x21-\x24\x26-\x7e]|%[0-9A-F]{2})*", quoted)
    assert decode(quoted).decode() == value


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("status", list(Status))
def test_every_reply_is_well_formed_for_postfix(value: str, status: Status) -> None:
    code, body = postfix_unquote(TcpReply(status, value).render())
    if len(encode(value)) <= MAX_REPLY_BYTES - 5:
        assert code == status
        assert body.decode() == value
    elif status is Status.FOUND:
        assert code == Status.NOT_FOUND
    else:
        assert code == status
        assert value.encode().startswith(body)


# Postfix cannot send a NUL (it quotes C strings); an encoded one is tested above.
@pytest.mark.parametrize("value", [v for v in HOSTILE if "\0" not in v])
def test_key_round_trip_through_the_wire(value: str) -> None:
    line = b"get " + encode(value) + b"\n"
    assert len(line) - 1 <= MAX_LINE_BYTES
    # Postfix never sends raw blanks, so surrounding blanks survive the trip.
    assert feed_all([line]) == [Lookup(value)]


def test_largest_found_reply_fits() -> None:
    data = "a" * (MAX_REPLY_BYTES - len("200 \n"))
    wire = TcpReply.found(data).render()
    assert len(wire) == MAX_REPLY_BYTES
    assert wire == b"200 " + data.encode() + b"\n"


def test_too_long_found_reply_becomes_not_found() -> None:
    data = "a" * (MAX_REPLY_BYTES - len("200 \n") + 1)
    wire = TcpReply.found(data).render()
    assert wire.startswith(b"500 ")
    # Quoting counts: 1400 'ü' are 2800 bytes, 8400 once quoted.
    assert TcpReply.found("ü" * 1400).render().startswith(b"500 ")


@pytest.mark.parametrize("shift", range(4))
def test_long_text_is_cut_without_splitting_an_escape(shift: int) -> None:
    text = "x" * shift + "%" * 3000
    wire = TcpReply.not_found(text).render()
    assert len(wire) <= MAX_REPLY_BYTES
    assert len(wire) >= MAX_REPLY_BYTES - 2
    code, body = postfix_unquote(wire)
    assert code == Status.NOT_FOUND
    assert text.encode().startswith(body)


def test_unexpected_reply_to_a_long_line_fits() -> None:
    [req] = feed_all([b"x" * MAX_LINE_BYTES + b"\n"])
    assert isinstance(req, Unexpected)
    wire = req.reply.render()
    assert len(wire) == MAX_REPLY_BYTES
    assert wire.startswith(b"500 Unexpected input: xxx")
