"""PolicyRequest: one policy request with typed attributes and derived fields.

Normalisation follows iRedAPD exactly: ``sender``, ``recipient``,
``sasl_username`` and ``reverse_client_name`` are lower-cased; every other value
is kept as received.  Derived fields are computed once, here:

* ``<name>_domain`` for sender, recipient and sasl_username: the text after the
  first ``@``, or the whole value when there is none (``john`` gives ``john``);
* ``sender_without_ext`` / ``recipient_without_ext``: the address without its
  extension, by ``RECIPIENT_DELIMITERS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple

from iredapd.addr import domain_of, is_email, strip_extension
from iredapd.protocol import RawRequest

__all__ = ["ADDRESS_ATTRIBUTES", "PolicyRequest"]

# Attributes checked as e-mail addresses, in the order Postfix sends them.
ADDRESS_ATTRIBUTES: Final = ("sender", "recipient", "sasl_username")
_LOWERCASED: Final = frozenset({"sender", "recipient", "sasl_username", "reverse_client_name"})
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
_NOT_ATTRIBUTES: Final = frozenset({"unknown", "invalid"})


class PolicyRequest(NamedTuple):
    """A normalised policy request.  Absent attributes are empty strings.

    Immutable (a NamedTuple: building one is a single C call, which matters on
    the hot path; a frozen dataclass with 40 fields costs ten times more).
    """

    request: str = ""
    protocol_state: str = ""
    protocol_name: str = ""
    helo_name: str = ""
    queue_id: str = ""
    sender: str = ""
    recipient: str = ""
    recipient_count: str = ""
    client_address: str = ""
    client_name: str = ""
    reverse_client_name: str = ""
    instance: str = ""
    sasl_method: str = ""
    sasl_username: str = ""
    sasl_sender: str = ""
    size: str = ""
    ccert_subject: str = ""
    ccert_issuer: str = ""
    ccert_fingerprint: str = ""
    encryption_protocol: str = ""
    encryption_cipher: str = ""
    encryption_keysize: str = ""
    etrn_domain: str = ""
    stress: str = ""
    ccert_pubkey_fingerprint: str = ""
    client_port: str = ""
    policy_context: str = ""
    server_address: str = ""
    server_port: str = ""
    compatibility_level: str = ""
    mail_version: str = ""
    tls_sni: str = ""
    # derived
    sender_domain: str = ""
    sender_without_ext: str = ""
    recipient_domain: str = ""
    recipient_without_ext: str = ""
    sasl_username_domain: str = ""
    #: upper-cased protocol_state, what plugins are filtered by
    state: str = ""
    #: (name, value) of the first of sender/recipient/sasl_username that is not an address
    invalid: tuple[str, str] | None = None
    #: attributes this daemon does not know, kept aside (never used by plugins)
    unknown: Mapping[str, str] = _EMPTY

    @classmethod
    def from_attributes(
        cls,
        attributes: Mapping[str, str],
        *,
        delimiters: Sequence[str] = ("+",),
        unknown: Mapping[str, str] | None = None,
    ) -> PolicyRequest:
        """Normalise raw ``name -> value`` pairs (known names only) into a request."""
        values = dict(attributes)
        for name in _LOWERCASED:
            if name in values:
                values[name] = values[name].lower()
        invalid: tuple[str, str] | None = None
        for name in ADDRESS_ATTRIBUTES:
            value = values.get(name, "")
            valid = bool(value) and is_email(value)
            if value and not valid and invalid is None:
                invalid = (name, value)
            if name != "sasl_username":
                values[f"{name}_without_ext"] = (
                    strip_extension(value, delimiters, checked=True) if valid else value
                )
            values[f"{name}_domain"] = domain_of(value)
        values["state"] = values.get("protocol_state", "").upper()
        # Positional: names read from the network are not interned, and keyword
        # matching of 40 such names costs more than everything else here.
        # map() over a bound method runs in C: no Python loop over 38 names.
        return cls._make(
            (
                *map(values.get, _TEXT_FIELDS, _BLANKS),
                invalid,
                MappingProxyType(dict(unknown)) if unknown else _EMPTY,
            )
        )

    @classmethod
    def from_raw(cls, raw: RawRequest, *, delimiters: Sequence[str] = ("+",)) -> PolicyRequest:
        """Build from what the protocol parser read."""
        return cls.from_attributes(raw.attributes, delimiters=delimiters, unknown=raw.unknown)

    def invalid_address(self) -> tuple[str, str] | None:
        """The first of sender/recipient/sasl_username that is set but not an address."""
        return self.invalid

    @property
    def authenticated(self) -> bool:
        """True when the client logged in with SMTP AUTH."""
        return bool(self.sasl_username)

    def as_dict(self) -> dict[str, str]:
        """Every attribute and derived field (iRedAPD's ``smtp_session_data``)."""
        return {k: v for k, v in self._asdict().items() if k not in _NOT_ATTRIBUTES}


# Every field but the last two (invalid, unknown), in order.
_TEXT_FIELDS: Final = PolicyRequest._fields[:-2]
assert PolicyRequest._fields[-2:] == ("invalid", "unknown")
_BLANKS: Final = ("",) * len(_TEXT_FIELDS)
