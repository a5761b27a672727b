"""SRS forward/reverse: the spec's test vectors, round trips, and refusals."""

from __future__ import annotations

import pytest

from iredapd.srs import (
    HASH_LENGTH,
    MAX_AGE_DAYS,
    SRS,
    SRSError,
    SRSFormatError,
    SRSHashError,
    SRSTimestampError,
    is_srs_address,
    timestamp,
)

DAY = 86400
SECRET = "7d86deed2cdee17baa8cf216348efe05"
NOW = 1700000000  # day 19675, TT=G3 (access-policies.md §14.7)
SRS_DOMAIN = "srs.mydomain.com"


@pytest.fixture
def srs() -> SRS:
    return SRS([SECRET])


# -- §14.7 test vectors ------------------------------------------------------------


def test_vector_forward(srs: SRS) -> None:
    assert (
        srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
        == "SRS0=bZmn=G3=example.com=alice@srs.mydomain.com"
    )


def test_vector_forward_keeps_case_and_hash_ignores_it(srs: SRS) -> None:
    new = srs.forward("Alice@Example.COM", SRS_DOMAIN, now=NOW)
    assert new == "SRS0=bZmn=G3=Example.COM=Alice@srs.mydomain.com"
    assert srs.reverse(new, now=NOW) == "Alice@Example.COM"
    assert srs.reverse(new.lower(), now=NOW) == "alice@example.com"


def test_vector_reverse_case_insensitive_any_domain(srs: SRS) -> None:
    assert srs.reverse("srs0=BZMN=g3=EXAMPLE.COM=Alice@x.org", now=NOW) == "Alice@EXAMPLE.COM"


def test_vector_one_char_hash_accepted_when_configured_like_iredapd() -> None:
    # srslib accepts it; we only do with min_hash_length=1 (see the next test).
    lax = SRS([SECRET], min_hash_length=1)
    assert lax.reverse("SRS0=b=G3=example.com=alice@x.org", now=NOW) == "alice@example.com"


@pytest.mark.parametrize("hash_", ["b", "bZ", "bZm"])
def test_short_hash_refused_by_default(srs: SRS, hash_: str) -> None:
    with pytest.raises(SRSHashError):
        srs.reverse(f"SRS0={hash_}=G3=example.com=alice@x.org", now=NOW)


def test_vector_window(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    assert srs.reverse(addr, now=NOW + 20 * DAY) == "alice@example.com"
    with pytest.raises(SRSTimestampError):
        srs.reverse(addr, now=NOW + 21 * DAY)


def test_vector_srs0_to_srs1_and_back(srs: SRS) -> None:
    srs1 = srs.forward("SRS0=abcd=AB=orig.com=bob@hop1.com", SRS_DOMAIN, now=NOW)
    assert srs1 == "SRS1=Nm61=hop1.com==abcd=AB=orig.com=bob@srs.mydomain.com"
    assert srs.reverse(srs1, now=NOW) == "SRS0=abcd=AB=orig.com=bob@hop1.com"
    # Forwarding the SRS1 again, from any host, gives the identical SRS1.
    again = srs1.replace("@srs.mydomain.com", "@elsewhere.net")
    assert srs.forward(again, SRS_DOMAIN, now=NOW) == srs1
    assert srs.forward(srs1, SRS_DOMAIN, now=NOW + 400 * DAY) == srs1


def test_vector_previous_secret_verifies() -> None:
    rotated = SRS([SECRET, "oldsecret"])
    addr = "SRS0=eUOv=G3=ext.org=carol@srs.mydomain.com"
    assert rotated.reverse(addr, now=NOW) == "carol@ext.org"
    with pytest.raises(SRSHashError):
        SRS([SECRET]).reverse(addr, now=NOW)


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("user@example.com", "SRS0=e+C7=AF=example.com=user@srs.example.net"),
        ("user+tag@sub.example.com", "SRS0=Q0+M=AF=sub.example.com=user+tag@srs.example.net"),
    ],
)
def test_vector_secret_day5(original: str, expected: str) -> None:
    srs = SRS(["secret"])
    now = 5 * DAY + 1234
    assert srs.forward(original, "srs.example.net", now=now) == expected
    assert srs.reverse(expected, now=now) == original


@pytest.mark.parametrize(
    ("address", "strict"),
    [
        ("srs0=x=y=z=w@d.com", True),
        ("SRS0=abc@d.com", False),
        ("SRS1=abcd=hop1.com==xyz=AB=o.com=u@d.com", True),
        ("SRS1=abcd=hop1.com=xyz@d.com", False),
        ("SRS0+x=y=z=w@d.com", True),
        ("SRS0-x=y=z=w@d.com", True),
        ("SRS0_x=y=z=w@d.com", False),
        ("user@d.com", False),
        ("SRS1-abcd=hop1.com=+xyz@d.com", True),
    ],
)
def test_vector_strict_test(address: str, strict: bool) -> None:
    assert is_srs_address(address) is strict


# -- timestamps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "stamp"),
    [(0, "AA"), (1, "AB"), (31, "A7"), (32, "BA"), (1023, "77"), (1024, "AA"), (19675, "G3")],
)
def test_timestamp_encoding(day: int, stamp: str) -> None:
    assert timestamp(day * DAY) == stamp
    assert timestamp(day * DAY + DAY - 1) == stamp


@pytest.mark.parametrize("stamp", ["G", "G3A", "G1", "G8", "??", ""])
def test_malformed_timestamp_refused(stamp: str) -> None:
    # A correct hash over a bad timestamp: only the timestamp check can refuse it.
    srs = SRS(["k"])
    digest = srs._digest(b"k", f"{stamp}example.comalice")[:HASH_LENGTH]
    addr = f"SRS0={digest}={stamp}=example.com=alice@x.org"
    with pytest.raises(SRSError):
        srs.reverse(addr, now=NOW)


def test_timestamp_case_insensitive(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    assert srs.reverse(addr.replace("=G3=", "=g3="), now=NOW) == "alice@example.com"


def test_future_timestamp_refused(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW + DAY)
    with pytest.raises(SRSTimestampError):
        srs.reverse(addr, now=NOW)


def test_timestamp_wraps_after_1024_days(srs: SRS) -> None:
    # A known weakness of the 10-bit timestamp (§15 item 37), kept for compatibility.
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    assert srs.reverse(addr, now=NOW + 1024 * DAY) == "alice@example.com"


def test_custom_window() -> None:
    srs = SRS([SECRET], max_age_days=3)
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    assert srs.reverse(addr, now=NOW + 2 * DAY) == "alice@example.com"
    with pytest.raises(SRSTimestampError):
        srs.reverse(addr, now=NOW + 3 * DAY)


def test_default_window_is_21_days() -> None:
    assert MAX_AGE_DAYS == 21


# -- round trips -------------------------------------------------------------------

ODD_ADDRESSES = [
    "alice@example.com",
    "a=b@example.com",
    "a==b=@example.com",
    "=lead@example.com",
    "user+tag@example.com",
    "user-tag@example.com",
    "a+b=c-d@sub.example.co.uk",
    "ü@bücher.de",
    "Jörg.Müller@Straße.example",
    "用户@例子.中国",
    "x" * 200 + "@" + "d" * 60 + ".example.com",
    "quote'd@example.com",
    "srs0@example.com",  # no separator: not SRS0
    "SRS0@example.com",
]


@pytest.mark.parametrize("address", ODD_ADDRESSES)
def test_srs0_round_trip(srs: SRS, address: str) -> None:
    new = srs.forward(address, SRS_DOMAIN, now=NOW)
    assert new.startswith("SRS0=")
    assert new.endswith("@" + SRS_DOMAIN)
    assert is_srs_address(new)
    assert srs.reverse(new, now=NOW) == address
    assert srs.reverse(new, now=NOW + 20 * DAY) == address


@pytest.mark.parametrize("address", ODD_ADDRESSES)
def test_srs1_round_trip_through_two_hops(address: str) -> None:
    first = SRS(["first-hop-secret"])
    second = SRS(["second-hop-secret"])
    srs0 = first.forward(address, "hop1.example", now=NOW)
    srs1 = second.forward(srs0, "hop2.example", now=NOW)
    assert srs1.startswith("SRS1=")
    assert "==" in srs1
    assert is_srs_address(srs1)
    # A third hop re-signs the SRS1, keeping the first hop's part.
    third = SRS(["third-hop-secret"])
    srs1b = third.forward(srs1, "hop3.example", now=NOW)
    assert srs1b.startswith("SRS1=") and srs1b.endswith("@hop3.example")
    # Back the other way: SRS1 -> SRS0 at the first hop -> original.
    assert third.reverse(srs1b, now=NOW) == srs0
    assert second.reverse(srs1, now=NOW) == srs0
    assert first.reverse(srs0, now=NOW + 5 * DAY) == address


@pytest.mark.parametrize("sep", ["=", "+", "-"])
def test_input_separators_srs0(srs: SRS, sep: str) -> None:
    made = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    other = "SRS0" + sep + made[len("SRS0=") :]
    assert srs.reverse(other, now=NOW) == "alice@example.com"


@pytest.mark.parametrize("sep", ["=", "+", "-"])
def test_input_separators_srs1(srs: SRS, sep: str) -> None:
    # First hop used sep after SRS0: the opaque keeps it and so does the reverse.
    srs1 = srs.forward(f"SRS0{sep}abcd=AB=orig.com=bob@hop1.com", SRS_DOMAIN, now=NOW)
    assert srs1.startswith("SRS1=") and f"=hop1.com={sep}abcd" in srs1
    assert srs.reverse(srs1, now=NOW) == f"SRS0{sep}abcd=AB=orig.com=bob@hop1.com"
    # And the separator right after SRS1 may be any of them too.
    assert srs.reverse("SRS1" + sep + srs1[5:], now=NOW) == srs.reverse(srs1, now=NOW)


def test_output_always_uses_equals(srs: SRS) -> None:
    srs1 = srs.forward("SRS1+abcd=hop1.com=-opaque@x.org", SRS_DOMAIN, now=NOW)
    assert srs1.startswith("SRS1=") and srs1.count("=") >= 3
    assert srs1.split("@")[0].split("=", 3)[3] == "-opaque"


def test_lowercase_srs_tags_are_recognised(srs: SRS) -> None:
    srs1 = srs.forward("srs0=abcd=AB=orig.com=bob@hop1.com", SRS_DOMAIN, now=NOW)
    assert srs1.startswith("SRS1=")
    # The prefix comes back upper-case, as in srslib.
    assert srs.reverse(srs1, now=NOW) == "SRS0=abcd=AB=orig.com=bob@hop1.com"
    assert srs.reverse(srs1.replace("SRS1", "srs1", 1), now=NOW).startswith("SRS0=")


def test_spurious_srs0_prefix_becomes_srs1(srs: SRS) -> None:
    # Compatible with srslib and libsrs2 (§15 item 38): any SRS0<sep> local part.
    srs1 = srs.forward("srs0-report@x.com", SRS_DOMAIN, now=NOW)
    assert srs1.startswith("SRS1=") and "=x.com=-report@" in srs1
    assert srs.reverse(srs1, now=NOW) == "SRS0-report@x.com"


def test_very_long_address(srs: SRS) -> None:
    address = "l" * 3000 + "@" + ".".join(["label"] * 150) + ".com"
    new = srs.forward(address, SRS_DOMAIN, now=NOW)
    assert srs.reverse(new, now=NOW) == address


# -- refusals ----------------------------------------------------------------------


def test_forged_hash_refused(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    local, domain = addr.split("@")
    fields = local.split("=")
    fields[1] = "AAAA" if fields[1].upper() != "AAAA" else "BBBB"
    with pytest.raises(SRSHashError):
        srs.reverse("=".join(fields) + "@" + domain, now=NOW)


def test_changed_payload_refused(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    with pytest.raises(SRSHashError):
        srs.reverse(addr.replace("=alice@", "=mallory@"), now=NOW)
    with pytest.raises(SRSHashError):
        srs.reverse(addr.replace("=example.com=", "=evil.com="), now=NOW)


def test_changed_timestamp_refused_by_hash(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    with pytest.raises(SRSHashError):
        srs.reverse(addr.replace("=G3=", "=G2="), now=NOW)


def test_forged_srs1_refused(srs: SRS) -> None:
    srs1 = srs.forward("SRS0=abcd=AB=orig.com=bob@hop1.com", SRS_DOMAIN, now=NOW)
    with pytest.raises(SRSHashError):
        srs.reverse(srs1.replace("hop1.com", "evil.com"), now=NOW)
    with pytest.raises(SRSHashError):
        SRS(["other"]).reverse(srs1, now=NOW)


def test_longer_hash_checked_against_full_digest(srs: SRS) -> None:
    addr = srs.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    full = srs._digest(SECRET.encode(), "G3example.comalice")
    longer = addr.replace("=bZmn=", f"={full[:6]}=")
    assert srs.reverse(longer, now=NOW) == "alice@example.com"
    with pytest.raises(SRSHashError):
        srs.reverse(addr.replace("=bZmn=", "=bZmnQQ="), now=NOW)


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com",
        "SRS0=abc@d.com",
        "SRS1=abcd=hop1.com=xyz@d.com",
        "SRS0=a=b=c@d.com",
        "SRS0=bZmn=G3=example.com=alice",
        "SRS0=bZmn=G3=example.com=alice@x@y",
        "",
    ],
)
def test_reverse_of_non_srs_raises_format_error(srs: SRS, address: str) -> None:
    with pytest.raises(SRSFormatError):
        srs.reverse(address, now=NOW)


@pytest.mark.parametrize("address", ["nobody", "a@b@c.com", "@example.com", "alice@", ""])
def test_forward_of_bad_address_raises_format_error(srs: SRS, address: str) -> None:
    with pytest.raises(SRSFormatError):
        srs.forward(address, SRS_DOMAIN, now=NOW)


def test_errors_are_value_errors() -> None:
    for cls in (SRSFormatError, SRSHashError, SRSTimestampError):
        assert issubclass(cls, SRSError)
    assert issubclass(SRSError, ValueError)


# -- rotation and construction -----------------------------------------------------


def test_rotation_first_secret_signs_all_verify() -> None:
    old = SRS(["old"])
    new = SRS(["new", "old"])
    made_by_old = old.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    made_by_new = new.forward("alice@example.com", SRS_DOMAIN, now=NOW)
    assert made_by_old != made_by_new
    assert made_by_new == SRS(["new"]).forward("alice@example.com", SRS_DOMAIN, now=NOW)
    assert new.reverse(made_by_old, now=NOW) == "alice@example.com"
    assert new.reverse(made_by_new, now=NOW) == "alice@example.com"
    with pytest.raises(SRSHashError):
        old.reverse(made_by_new, now=NOW)


@pytest.mark.parametrize(
    ("secrets", "kwargs"),
    [
        ([], {}),
        ([""], {}),
        (["a", ""], {}),
        (["a"], {"min_hash_length": 0}),
        (["a"], {"min_hash_length": 5}),
        (["a"], {"max_age_days": 0}),
        (["a"], {"max_age_days": 1024}),
    ],
)
def test_bad_construction(secrets: list[str], kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"SRS|min_hash|max_age"):
        SRS(secrets, **kwargs)


def test_secret_must_not_be_a_bare_string() -> None:
    with pytest.raises(TypeError):
        SRS("secret")


def test_default_clock_is_used_when_now_is_omitted(srs: SRS) -> None:
    new = srs.forward("alice@example.com", SRS_DOMAIN)
    assert srs.reverse(new) == "alice@example.com"
