"""Actions: validation, neutrality, rendering, the reply-text table."""

from __future__ import annotations

import pytest

from iredapd.actions import DUNNO, SMTP_ACTIONS, Action, InvalidAction


@pytest.mark.parametrize(
    "text",
    [
        "OK",
        "DUNNO",
        "REJECT",
        "REJECT Policy rejection",
        "DEFER_IF_PERMIT Service unavailable",
        "451 4.7.1 Intentional policy rejection, please try again later",
        "550 5.7.23 SPF fail",
        "PREPEND Received-SPF: pass",
        "FILTER smtp:[127.0.0.1]:10025",
        "HOLD",
        "12345",
        "my_restriction_class",
    ],
)
def test_valid_actions(text: str) -> None:
    assert Action.parse(text).text == text


@pytest.mark.parametrize(
    "text",
    ["", "   ", "REJECT\nDUNNO", "PREPEND", "FILTER", "what is this", "x" * 1000, "REJECT \x07"],
)
def test_invalid_actions(text: str) -> None:
    with pytest.raises(InvalidAction):
        Action.parse(text)


def test_neutral_is_the_dunno_prefix() -> None:
    assert DUNNO.is_neutral
    assert Action("DUNNO Access policy is public").is_neutral
    assert not Action("dunno").is_neutral  # iRedAPD's check is case-sensitive
    assert not Action("OK").is_neutral


def test_render() -> None:
    assert Action("REJECT Not authorized").render() == b"action=REJECT Not authorized\n\n"


def test_verb_and_reason() -> None:
    a = Action(SMTP_ACTIONS["greylisting"] + " Try later")
    assert a.verb == "451"
    assert a.reason == "4.7.1 Try later"
    assert Action("OK").reason == ""


def test_reply_texts_are_iredapds() -> None:
    assert SMTP_ACTIONS["reject_null_sender"] == "REJECT Policy rejection due to null sender"
    assert SMTP_ACTIONS["reject_not_authorized"] == "REJECT Not authorized"
    assert SMTP_ACTIONS["greylisting"] == "451 4.7.1"
    assert Action.named("reject_blacklisted").text == "REJECT Blacklisted"
