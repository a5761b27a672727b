"""The openspf conformance suites (RFC 7208 and RFC 4408) against iredapd.spf.

Every case of ``tests/data/spf/rfc7208-tests.yml`` (203) and
``rfc4408-tests.yml`` (191) runs through :func:`iredapd.spf.check_mail_from`,
fed by an in-memory DNS built from the scenario's ``zonedata`` (see
``tests/data/spf/README.txt``).  A case passes when the result is the expected
one (or one of the listed ones) and, for ``fail`` results where the suite gives
an explanation, the ``exp=`` text matches (``DEFAULT`` meaning "the domain gave
none", which is our empty explanation).

Where RFC 7208 changed or settled a rule of RFC 4408, the 4408 suite already
lists the new answer among the acceptable ones, so no case is skipped; those
cases are in :data:`RFC7208_CHOICES` and must give exactly the RFC 7208 answer.
The one case where we knowingly give another answer than the suites is in
:data:`DIFFERENCES`, with the reason, and the test asserts our answer there.
``test_summary`` prints passed/total per suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from iredapd.spf import SPFResult, check_mail_from
from tests.support.dnsfixtures import ZoneSource, run
from tests.support.stubdns import Zone

DATA = Path(__file__).resolve().parent.parent / "data" / "spf"
SUITES = {"rfc7208": "rfc7208-tests.yml", "rfc4408": "rfc4408-tests.yml"}
EXPECTED_COUNTS = {"rfc7208": 203, "rfc4408": 191}

_NIBBLES = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.b.a.b.e.f.a.c"
_IP6_CASE = (
    "The suite expects the nibbles of %{ir} for CAFE:BABE::1 in upper case "
    "(E.B.A.B.E.F.A.C), copying the letter case of the client address as written.  "
    "RFC 7208 7.3 leaves the case open (DNS names are case-insensitive) and its "
    "7.4 example expands 2001:db8::cb01 in lower case; we always write lower-case "
    "hex, as RFC 5952 does for %{c}.  Only the letter case of the text differs."
)


@dataclass(frozen=True)
class Difference:
    """A case where we knowingly answer otherwise: why, and what we answer."""

    reason: str
    result: str
    explanation: str | None = None


DIFFERENCES: dict[tuple[str, str], Difference] = {
    (suite, "v-macro-ip6"): Difference(
        _IP6_CASE, "fail", f"cafe:babe::1 is queried as {_NIBBLES}.ip6.arpa"
    )
    for suite in SUITES
}


# RFC 4408 cases where the old suite accepts several answers because RFC 7208
# changed or settled the rule: we assert the RFC 7208 answer, not just "any".
_TXT_ONLY = "RFC 7208 3.1/4.4: only TXT records are queried, type SPF (99) is not used"
RFC7208_CHOICES: dict[str, tuple[str, str]] = {
    "spfonly": ("none", _TXT_ONLY),
    "spftimeout": ("fail", _TXT_ONLY),
    "txttimeout": ("temperror", _TXT_ONLY + "; a TXT timeout is a temperror"),
    "nospftxttimeout": ("temperror", _TXT_ONLY + "; a TXT timeout is a temperror"),
    "spfoverride": ("fail", _TXT_ONLY),
    "multitxt1": ("permerror", "RFC 7208 4.5: two v=spf1 TXT records are a permerror"),
    "multispf2": ("pass", _TXT_ONLY + "; the single TXT record decides"),
    "exists-dnserr": ("temperror", "RFC 7208 5: a DNS error in a mechanism is a temperror"),
    "mx-limit": ("permerror", "RFC 7208 4.6.4: more than 10 MX names is a permerror"),
    "cidr6-0-ip4": ("neutral", "RFC 7208 5: ip6 never matches an IPv4 client"),
    "cidr6-ip4": ("neutral", "RFC 7208 5: an IPv4-mapped client is IPv4"),
    **dict.fromkeys(
        ("invalid-domain-empty-label", "invalid-domain-long", "invalid-domain-long-via-macro"),
        ("fail", "RFC 7208 4.8: a malformed target-name is treated as a no-match"),
    ),
}


@dataclass(frozen=True)
class Case:
    suite: str
    scenario: int
    name: str
    data: dict[str, Any]
    zone: Zone

    @property
    def results(self) -> tuple[str, ...]:
        result = self.data["result"]
        return (result,) if isinstance(result, str) else tuple(result)

    def __str__(self) -> str:
        return f"{self.suite}:{self.name}"


@cache
def load(suite: str) -> tuple[Case, ...]:
    """All cases of one suite; () if the data files are missing."""
    path = DATA / SUITES[suite]
    if not path.is_file():
        return ()
    cases = []
    with path.open("rb") as f:
        for index, doc in enumerate(yaml.safe_load_all(f)):
            zone = Zone(doc.get("zonedata") or {})
            for name, data in doc["tests"].items():
                cases.append(Case(suite, index, name, data, zone))
    return tuple(cases)


async def evaluate(case: Case) -> SPFResult:
    data = case.data
    return await check_mail_from(
        data["host"], data["mailfrom"], data["helo"], resolver=ZoneSource(case.zone)
    )


def problems(case: Case, got: SPFResult, *, documented: bool = True) -> list[str]:
    """What is wrong with ``got`` for ``case`` (empty: the case passes).

    With ``documented``, a case listed in :data:`DIFFERENCES` expects our answer.
    """
    difference = DIFFERENCES.get((case.suite, case.name)) if documented else None
    if difference is not None:
        wanted: tuple[str, ...] = (difference.result,)
        explanation = difference.explanation
    else:
        wanted = case.results
        if documented and case.suite == "rfc4408" and case.name in RFC7208_CHOICES:
            wanted = (RFC7208_CHOICES[case.name][0],)
        explanation = case.data.get("explanation")
        if explanation == "DEFAULT":
            explanation = ""
    out = []
    if got.result not in wanted:
        out.append(f"result {got.result!r} ({got.problem or got.mechanism}), expected {wanted}")
    elif got.result == "fail" and explanation is not None and got.explanation != explanation:
        out.append(f"explanation {got.explanation!r}, expected {explanation!r}")
    return out


def _params(suite: str) -> list[Any]:
    return [pytest.param(c, id=f"{c.scenario:02d}-{c.name}") for c in load(suite)]


@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_data_present(suite: str) -> None:
    path = DATA / SUITES[suite]
    assert path.is_file(), (
        f"SPF test suite {path} is missing: it ships with the repository in "
        "tests/data/spf/ (see README.txt there)"
    )
    assert (DATA / SUITES[suite].replace(".yml", ".LICENSE")).is_file()
    assert len(load(suite)) == EXPECTED_COUNTS[suite]


@pytest.mark.parametrize("case", _params("rfc7208"))
def test_rfc7208(case: Case) -> None:
    assert problems(case, run(evaluate(case))) == []


@pytest.mark.parametrize("case", _params("rfc4408"))
def test_rfc4408(case: Case) -> None:
    assert problems(case, run(evaluate(case))) == []


def test_differences_are_real() -> None:
    """Each documented difference names one existing case that we really answer otherwise."""
    for (suite, name), difference in DIFFERENCES.items():
        matching = [c for c in load(suite) if c.name == name]
        assert len(matching) == 1, (suite, name)
        got = run(evaluate(matching[0]))
        assert difference.reason
        assert problems(matching[0], got, documented=False) != [], "stale entry"
        assert problems(matching[0], got) == []


def test_rfc7208_choices_are_allowed_by_rfc4408_suite() -> None:
    """Each RFC 7208 answer asserted above is one the RFC 4408 suite accepts."""
    cases = {c.name: c for c in load("rfc4408")}
    for name, (answer, reason) in RFC7208_CHOICES.items():
        assert reason
        assert answer in cases[name].results, name
        assert len(cases[name].results) > 1, name


@pytest.mark.parametrize("suite", list(SUITES))
def test_summary(suite: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Run a whole suite at once and report passed/total."""
    cases = load(suite)

    async def all_cases() -> list[tuple[Case, list[str]]]:
        return [(case, problems(case, await evaluate(case))) for case in cases]

    outcome = run(all_cases())
    failed = [f"{case}: {'; '.join(p)}" for case, p in outcome if p]
    differing = sorted(name for s, name in DIFFERENCES if s == suite)
    line = (
        f"SPF {suite} suite: {len(cases) - len(failed)}/{len(cases)} passed"
        f" ({len(differing)} with a documented difference: {', '.join(differing)})"
    )
    with capsys.disabled():  # show the line even when output is captured
        print(f"\n{line}")
    assert failed == []
    assert len(cases) == EXPECTED_COUNTS[suite]
