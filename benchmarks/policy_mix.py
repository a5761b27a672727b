"""The request pool of the load generator: Postfix 3.x policy requests.

A :class:`Mix` says what the traffic looks like (protocol states, share of
authenticated senders, null senders, TLS, IPv6, ...); :func:`build_pool`
turns it, with a seeded RNG, into a list of pre-encoded requests, the same on
every run and in every client process.  Presets live in :data:`PRESETS`; a
JSON file may override any :class:`Mix` field::

    {"preset": "default", "outbound": 0.5, "states": {"RCPT": 60, "END-OF-MESSAGE": 40}}

With ``accounts`` (a JSON file, see :class:`_AccountsWorld`; a relative path
is read from the mix file's directory), senders, recipients, SASL logins and
clients are drawn from real account data instead of generated names: the
benchmark scenarios (``scenarios.py``) write one from the accounts they load
into the databases, so that requests hit existing users, aliases and lists
(and some addresses that do not exist).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ATTRIBUTE_ORDER", "PRESETS", "Mix", "build_pool", "encode_request", "read_pool"]

# Every attribute name Postfix 3.x smtpd sends (SMTPD_POLICY_README lists when
# each appeared), about in the order smtpd_check.c writes them; the protocol
# ignores the order.  Postfix sends all of them, empty when it has no value
# ("0" for numbers).
ATTRIBUTE_ORDER = (
    "request",
    "protocol_state",
    "protocol_name",
    "client_address",
    "client_name",
    "client_port",
    "reverse_client_name",
    "server_address",
    "server_port",
    "helo_name",
    "sender",
    "recipient",
    "recipient_count",
    "queue_id",
    "instance",
    "size",
    "etrn_domain",
    "stress",
    "sasl_method",
    "sasl_username",
    "sasl_sender",
    "ccert_subject",
    "ccert_issuer",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
    "encryption_protocol",
    "encryption_cipher",
    "encryption_keysize",
    "policy_context",
    "compatibility_level",
    "mail_version",
    "tls_sni",
)


PRESETS: dict[str, dict[str, Any]] = {
    # Postfix asks at RCPT and at END-OF-MESSAGE (iRedMail's setup); a fifth
    # of the traffic is authenticated submission; a few bounces (null sender).
    "default": {},
    # RCPT only, inbound only: the cheapest path through most plugins.
    "rcpt": {"states": {"RCPT": 1}, "outbound": 0.0},
    # Only authenticated senders (submission port).
    "outbound": {"outbound": 1.0},
    # No authenticated senders (port 25 only).
    "inbound": {"outbound": 0.0, "sasl_null_sender": 0.0},
}


@dataclass(frozen=True, slots=True)
class Mix:
    """What the request pool looks like.  Every field can be set in a mix file."""

    #: protocol_state -> weight
    states: tuple[tuple[str, float], ...] = (("RCPT", 70.0), ("END-OF-MESSAGE", 30.0))
    #: fraction of requests from an authenticated (sasl_username) client
    outbound: float = 0.2
    #: fraction of inbound requests with the null sender (bounces)
    null_sender: float = 0.03
    #: fraction of outbound requests with the null sender (rejected by reject_null_sender)
    sasl_null_sender: float = 0.005
    #: fraction of recipients with an address extension (user+tag@domain)
    extension: float = 0.05
    #: fraction of inbound clients without TLS
    plaintext: float = 0.3
    #: fraction of client addresses that are IPv6
    ipv6: float = 0.1
    #: fraction of inbound clients whose reverse lookup failed (client_name=unknown)
    unknown_client: float = 0.1
    #: fraction of recipients addressed to the server's hostname (reject_to_hostname)
    to_hostname: float = 0.005
    local_domains: int = 5
    users_per_domain: int = 200
    external_domains: int = 2000
    clients: int = 5000
    #: distinct pre-encoded requests; connections walk the pool from different offsets
    pool: int = 4096
    server_hostname: str = "mx.example.com"
    mail_version: str = "3.7.11"
    compatibility_level: str = "3.6"
    # -- only with ``accounts`` (names from account data, see _AccountsWorld) --
    #: JSON file of account data; empty: generated names (the fields above)
    accounts: str = ""
    #: inbound recipient kind -> weight: mailbox, per-user alias address, mail
    #: alias, mlmmj list, address at a hosted domain that does not exist
    inbound_recipients: tuple[tuple[str, float], ...] = (
        ("user", 80.0),
        ("user_alias", 5.0),
        ("alias", 6.0),
        ("list", 3.0),
        ("unknown", 6.0),
    )
    #: recipient kind of authenticated mail -> weight (``external``: elsewhere)
    outbound_recipients: tuple[tuple[str, float], ...] = (
        ("external", 70.0),
        ("user", 18.0),
        ("alias", 7.0),
        ("list", 3.0),
        ("unknown", 2.0),
    )
    #: envelope sender of authenticated mail -> weight: the login itself, one of
    #: its alias addresses, its name at an alias domain of its domain (all three
    #: allowed), another user's address or an external one (login mismatch)
    outbound_senders: tuple[tuple[str, float], ...] = (
        ("login", 92.0),
        ("user_alias", 3.0),
        ("alias_domain", 2.0),
        ("other_user", 2.0),
        ("external", 1.0),
    )
    #: fraction of local addresses written at an alias domain of their domain
    alias_domain_address: float = 0.1
    #: fraction of inbound senders at a hosted domain (forged: no SMTP AUTH)
    forged_sender: float = 0.01
    #: fraction of inbound senders at the client's own domain (SPF can pass)
    client_domain_sender: float = 0.7
    #: fraction of authenticated mail to an alias or list sent by one of its
    #: members, moderators or owners
    member_sender: float = 0.5

    @classmethod
    def load(cls, spec: str) -> tuple[str, Mix]:
        """A preset name, or a JSON file: ``{"preset": "default", "outbound": 0.5, ...}``."""
        if spec in PRESETS:
            return spec, cls._from_dict(PRESETS[spec])
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(
                f"--mix: {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise SystemExit(f"--mix: {spec}: expected a JSON object")
        if data.get("accounts"):
            data["accounts"] = str(path.parent / str(data["accounts"]))
        base = dict(PRESETS.get(str(data.pop("preset", "default")), {}))
        base.update(data)
        return path.name, cls._from_dict(base)

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Mix:
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise SystemExit(f"--mix: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
        values = dict(data)
        for name in _WEIGHTS:
            if name in values:
                weights = dict(values[name])
                values[name] = tuple((str(k), float(v)) for k, v in weights.items())
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in _WEIGHTS:
            out[name] = dict(out[name])
        return out


#: Mix fields that are weight tables (a JSON object in a mix file).
_WEIGHTS = ("states", "inbound_recipients", "outbound_recipients", "outbound_senders")


_FIRST = (
    "james", "mary", "robert", "patricia", "john",
    "jennifer", "michael", "linda", "david", "elizabeth",
)  # fmt: skip
_LAST = (
    "smith", "jones", "taylor", "brown", "williams",
    "wilson", "johnson", "davies", "miller", "garcia",
)  # fmt: skip
_TLS = (
    ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "256"),
    ("TLSv1.3", "TLS_AES_128_GCM_SHA256", "128"),
    ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", "256"),
    ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", "256"),
)


class _World:
    """Names and addresses the requests are made of, all from one seeded RNG."""

    def __init__(self, mix: Mix, rng: random.Random) -> None:
        self.mix = mix
        self.rng = rng
        self.local_domains = ["example.com", "example.net", "example.org"][: mix.local_domains]
        self.local_domains += [
            f"mail{i}.example" for i in range(len(self.local_domains), mix.local_domains)
        ]
        self.external_domains = [
            f"{rng.choice(('mail', 'corp', 'shop', 'news', 'lists', 'isp'))}{i}.example"
            for i in range(mix.external_domains)
        ]
        self.clients = [self._client() for _ in range(mix.clients)]
        self.submission_clients = [self._private_ip() for _ in range(max(1, mix.clients // 20))]

    def _public_ipv4(self) -> str:
        rng = self.rng
        while True:
            a = rng.randint(1, 223)
            b = rng.randint(0, 255)
            if (
                a in (10, 127, 0)
                or (a == 172 and 16 <= b <= 31)
                or (a, b) in ((192, 168), (169, 254))
            ):
                continue
            if a == 100 and 64 <= b <= 127:
                continue
            return f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"

    def _private_ip(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            return f"192.168.{rng.randint(0, 10)}.{rng.randint(2, 254)}"
        return self._public_ipv4()  # a roaming user on some ISP

    def _client(self) -> tuple[str, str, str]:
        """(address, name, helo) of an inbound SMTP client."""
        rng = self.rng
        if rng.random() < self.mix.ipv6:
            a, b, c = rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF), rng.randint(1, 0xFFFF)
            address = f"2001:db8:{a:x}:{b:x}::{c:x}"
        else:
            address = self._public_ipv4()
        domain = rng.choice(self.external_domains)
        if rng.random() < self.mix.unknown_client:
            name = "unknown"
            helo = rng.choice((f"[{address}]", "localhost", f"smtp.{domain}"))
        else:
            name = f"{rng.choice(('mx', 'smtp', 'out', 'mail'))}{rng.randint(1, 20)}.{domain}"
            helo = name
        return address, name, helo

    def local_user(self) -> str:
        rng = self.rng
        return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randrange(self.mix.users_per_domain)}"

    def local_address(self) -> str:
        rng = self.rng
        user = self.local_user()
        if rng.random() < self.mix.extension:
            user += "+" + rng.choice(("news", "shop", "lists", "spam"))
        if rng.random() < self.mix.to_hostname:
            return f"{user}@{self.mix.server_hostname}"
        return f"{user}@{rng.choice(self.local_domains)}"

    def external_address(self) -> str:
        rng = self.rng
        user = rng.choice(
            (
                f"{rng.choice(_FIRST)}",
                f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}",
                f"info{rng.randint(0, 99)}",
                f"bounce-{rng.getrandbits(40):x}",
                "noreply",
            )
        )
        return f"{user}@{rng.choice(self.external_domains)}"

    def outbound(self, attrs: dict[str, str]) -> str:
        """Client, SASL login and sender of authenticated mail; returns the recipient."""
        rng, mix = self.rng, self.mix
        address = rng.choice(self.submission_clients)
        attrs["client_address"] = address
        attrs["client_name"] = attrs["reverse_client_name"] = "unknown"
        attrs["helo_name"] = rng.choice(("[192.168.1.10]", "laptop.lan", "DESKTOP-1A2B3C"))
        attrs["server_port"] = rng.choice(("587", "587", "465"))
        user = f"{self.local_user()}@{rng.choice(self.local_domains)}"
        attrs["sasl_method"] = rng.choice(("PLAIN", "LOGIN"))
        attrs["sasl_username"] = user
        if rng.random() < mix.sasl_null_sender:
            attrs["sender"] = ""
        else:
            attrs["sender"] = user if rng.random() < 0.95 else self.local_address()
        return self.external_address() if rng.random() < 0.8 else self.local_address()

    def inbound(self, attrs: dict[str, str]) -> str:
        """Client and sender of mail from outside; returns the recipient."""
        rng, mix = self.rng, self.mix
        address, name, helo = rng.choice(self.clients)
        attrs["client_address"] = address
        attrs["client_name"] = name
        # client_name is "unknown" when the PTR name is missing or does not
        # resolve back to the address; reverse_client_name is the bare PTR name.
        if name != "unknown" or rng.random() < 0.5:
            attrs["reverse_client_name"] = name
        else:
            attrs["reverse_client_name"] = f"dynamic-{address.replace('.', '-')}.isp.example"
        attrs["helo_name"] = helo
        attrs["server_port"] = "25"
        null = rng.random() < mix.null_sender
        attrs["sender"] = "" if null else self.external_address()
        return self.local_address()


class _AccountsWorld(_World):
    """Names drawn from account data (``Mix.accounts``), a JSON object::

        {"domains": {"example.com": ["alias.example"], ...},   # hosted -> alias domains
         "users": ["john.smith@example.com", ...],             # mailboxes
         "user_aliases": {"js@example.com": "john.smith@example.com", ...},
         "aliases": {"sales@example.com": {"policy": "membersonly",
                     "members": [...], "moderators": [...]}, ...},
         "maillists": {"news@example.com": {"policy": "domain",
                       "moderators": [...], "owners": [...]}, ...},
         "external_domains": ["mail1.example", ...],
         "clients": [[address, client_name, reverse_client_name, helo, domain], ...],
         "submission_clients": ["192.168.1.20", ...]}

    Each client belongs to an external ``domain``: with
    ``Mix.client_domain_sender`` its mail comes from that domain (whose SPF
    record may list it).  Recipients and senders follow the ``Mix`` weight
    tables; unknown recipients are plausible names that are not accounts.
    """

    def __init__(self, mix: Mix, rng: random.Random) -> None:
        self.mix = mix
        self.rng = rng
        data = json.loads(Path(mix.accounts).read_text(encoding="utf-8"))
        self.domains: dict[str, list[str]] = {k: list(v) for k, v in data["domains"].items()}
        self.alias_of = {a: d for d, aliases in self.domains.items() for a in aliases}
        self.local_domains = list(self.domains)
        self.users: list[str] = list(data["users"])
        self.user_aliases: dict[str, str] = dict(data.get("user_aliases", {}))
        self.aliases_of: dict[str, list[str]] = {}
        for alias, owner in self.user_aliases.items():
            self.aliases_of.setdefault(owner, []).append(alias)
        self.aliases: dict[str, dict[str, Any]] = dict(data.get("aliases", {}))
        self.lists: dict[str, dict[str, Any]] = dict(data.get("maillists", {}))
        self.alias_names = list(self.aliases)
        self.list_names = list(self.lists)
        self.user_alias_names = list(self.user_aliases)
        self.external_domains = list(data["external_domains"])
        self.account_clients = [tuple(c) for c in data["clients"]]
        self.submission_clients = list(data["submission_clients"])
        if not self.users or not self.account_clients or not self.external_domains:
            raise SystemExit(f"accounts file {mix.accounts}: users, clients, domains needed")

    @staticmethod
    def _pick(rng: random.Random, weights: tuple[tuple[str, float], ...]) -> str:
        names, values = zip(*weights, strict=True)
        return str(rng.choices(names, values)[0])

    def _written(self, address: str, *, extension: bool = False) -> str:
        """``address`` as a sender writes it: maybe at an alias domain, with +tag."""
        rng = self.rng
        local, _, domain = address.partition("@")
        aliases = self.domains.get(domain)
        if aliases and rng.random() < self.mix.alias_domain_address:
            domain = rng.choice(aliases)
        if extension and rng.random() < self.mix.extension:
            local += "+" + rng.choice(("news", "shop", "lists", "spam"))
        return f"{local}@{domain}"

    def _unknown(self) -> str:
        rng = self.rng
        local = rng.choice(
            (
                f"{rng.choice(_FIRST)}{rng.randint(1, 9999)}",
                f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}.x{rng.randint(1, 99)}",
                rng.choice(("webmaster", "admin", "root", "billing", "hr", "office")),
            )
        )
        return f"{local}@{rng.choice(self.local_domains)}"

    def _local(self, kind: str) -> tuple[str, str]:
        """(recipient as written, account it resolves to) of a local ``kind``."""
        rng = self.rng
        if kind == "user_alias" and self.user_alias_names:
            address = rng.choice(self.user_alias_names)
            return self._written(address, extension=True), address
        if kind == "alias" and self.alias_names:
            address = rng.choice(self.alias_names)
            return self._written(address), address
        if kind == "list" and self.list_names:
            address = rng.choice(self.list_names)
            return self._written(address), address
        if kind == "unknown":
            address = self._unknown()
            return address, address
        address = rng.choice(self.users)
        if rng.random() < self.mix.to_hostname:
            return f"{address.partition('@')[0]}@{self.mix.server_hostname}", address
        return self._written(address, extension=True), address

    def _senders_for(self, account: str) -> list[str]:
        """Users allowed to send to the alias or list ``account`` (may be empty)."""
        entry = self.aliases.get(account) or self.lists.get(account) or {}
        people = [
            *entry.get("members", ()),
            *entry.get("moderators", ()),
            *entry.get("owners", ()),
        ]
        users = set(self.users)
        return [p for p in people if p in users]

    def external_address(self, domain: str | None = None) -> str:
        rng = self.rng
        user = rng.choice(
            (
                f"{rng.choice(_FIRST)}",
                f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}",
                f"info{rng.randint(0, 99)}",
                f"bounce-{rng.getrandbits(40):x}",
                "noreply",
            )
        )
        return f"{user}@{domain or rng.choice(self.external_domains)}"

    def outbound(self, attrs: dict[str, str]) -> str:
        rng, mix = self.rng, self.mix
        attrs["client_address"] = rng.choice(self.submission_clients)
        attrs["client_name"] = attrs["reverse_client_name"] = "unknown"
        attrs["helo_name"] = rng.choice(("[192.168.1.10]", "laptop.lan", "DESKTOP-1A2B3C"))
        attrs["server_port"] = rng.choice(("587", "587", "465"))
        kind = self._pick(rng, mix.outbound_recipients)
        if kind == "external":
            recipient, account = self.external_address(), ""
        else:
            recipient, account = self._local(kind)
        login = rng.choice(self.users)
        if kind in ("alias", "list") and rng.random() < mix.member_sender:
            allowed = self._senders_for(account)
            if allowed:
                login = rng.choice(allowed)
        attrs["sasl_method"] = rng.choice(("PLAIN", "LOGIN"))
        attrs["sasl_username"] = login
        if rng.random() < mix.sasl_null_sender:
            attrs["sender"] = ""
            return recipient
        how = self._pick(rng, mix.outbound_senders)
        sender = login
        local, _, domain = login.partition("@")
        if how == "user_alias" and self.aliases_of.get(login):
            sender = rng.choice(self.aliases_of[login])
        elif how == "alias_domain" and self.domains.get(domain):
            sender = f"{local}@{rng.choice(self.domains[domain])}"
        elif how == "other_user":
            sender = rng.choice(self.users)
        elif how == "external":
            sender = self.external_address()
        attrs["sender"] = sender
        return recipient

    def inbound(self, attrs: dict[str, str]) -> str:
        rng, mix = self.rng, self.mix
        address, name, reverse, helo, domain = rng.choice(self.account_clients)
        attrs["client_address"] = address
        attrs["client_name"] = name
        attrs["reverse_client_name"] = reverse
        attrs["helo_name"] = helo
        attrs["server_port"] = "25"
        recipient, account = self._local(self._pick(rng, mix.inbound_recipients))
        if rng.random() < mix.null_sender:
            attrs["sender"] = ""
        elif rng.random() < mix.forged_sender:
            attrs["sender"] = self._written(rng.choice(self.users))
        elif account in self.aliases and rng.random() < mix.member_sender:
            # A member of the alias who lives elsewhere (may send to it)
            outside = [
                m
                for m in self.aliases[account].get("members", ())
                if m.partition("@")[2] not in self.domains
                and m.partition("@")[2] not in self.alias_of
            ]
            attrs["sender"] = rng.choice(outside) if outside else self.external_address(domain)
        elif rng.random() < mix.client_domain_sender:
            attrs["sender"] = self.external_address(domain)
        else:
            attrs["sender"] = self.external_address()
        return recipient


def _request(world: _World) -> dict[str, str]:
    """One request as Postfix would send it."""
    mix, rng = world.mix, world.rng
    names, weights = zip(*mix.states, strict=True)
    state = rng.choices(names, weights)[0]
    outbound = rng.random() < mix.outbound
    attrs = dict.fromkeys(ATTRIBUTE_ORDER, "")
    attrs["request"] = "smtpd_access_policy"
    attrs["protocol_state"] = state
    attrs["protocol_name"] = "ESMTP" if rng.random() < 0.98 else "SMTP"
    attrs["server_address"] = "192.0.2.25"
    attrs["compatibility_level"] = mix.compatibility_level
    attrs["mail_version"] = mix.mail_version
    attrs["client_port"] = str(rng.randint(1024, 65535))
    # smtpd's instance: hex pid, hex seconds, hex microseconds, a counter
    pid, sec, usec = (
        rng.randint(0x100, 0xFFFFF),
        rng.randint(0x60000000, 0x6FFFFFFF),
        rng.randint(0, 999999),
    )
    attrs["instance"] = f"{pid:x}.{sec:x}.{usec:x}.{rng.randint(0, 3)}"
    if outbound:
        recipient = world.outbound(attrs)
        tls: tuple[str, str, str] | None = _TLS[0]
    else:
        recipient = world.inbound(attrs)
        tls = None if rng.random() < mix.plaintext else rng.choice(_TLS)
    if tls is not None:
        attrs["encryption_protocol"], attrs["encryption_cipher"], attrs["encryption_keysize"] = tls
        attrs["tls_sni"] = mix.server_hostname if rng.random() < 0.5 else ""
    else:
        attrs["encryption_keysize"] = "0"
    # Postfix's queue file exists after the first accepted recipient.
    queue_id = "".join(rng.choices("0123456789ABCDEF", k=rng.choice((10, 11, 12))))
    if state in ("RCPT",):
        attrs["recipient"] = recipient
        attrs["recipient_count"] = "0"
        attrs["queue_id"] = queue_id if rng.random() < 0.3 else ""
        attrs["size"] = str(rng.choice((0, 0, rng.randint(1000, 2_000_000))))
    elif state in ("DATA", "END-OF-MESSAGE"):
        count = rng.choice((1, 1, 1, 1, 2, 3, rng.randint(4, 50)))
        attrs["recipient"] = recipient if count == 1 else ""
        attrs["recipient_count"] = str(count)
        attrs["queue_id"] = queue_id
        size = int(min(25_000_000, rng.lognormvariate(10.0, 1.5)))
        attrs["size"] = str(size if state == "END-OF-MESSAGE" else rng.choice((0, size)))
    else:  # CONNECT, EHLO, HELO, MAIL, VRFY, ETRN
        attrs["recipient_count"] = "0"
        attrs["size"] = "0"
        if state in ("CONNECT", "EHLO", "HELO"):
            attrs["sender"] = ""
            if state == "CONNECT":
                attrs["helo_name"] = ""
            for key in ("sasl_method", "sasl_username"):
                attrs[key] = ""
        elif state == "ETRN":
            attrs["sender"] = ""
            attrs["etrn_domain"] = rng.choice(world.local_domains)
    if rng.random() < 0.03:
        attrs = {k: (v.upper() if k in ("sender", "recipient") else v) for k, v in attrs.items()}
    return attrs


def encode_request(attrs: dict[str, str]) -> bytes:
    """``name=value`` lines and the empty line that ends a request."""
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


def read_pool(path: str) -> list[bytes]:
    """Requests written by ``--write-pool`` (each ends with its empty line)."""
    data = Path(path).read_bytes()
    pool = [chunk + b"\n\n" for chunk in data.split(b"\n\n") if chunk]
    if not pool:
        raise SystemExit(f"--pool-file {path}: no request in it")
    return pool


def build_pool(mix: Mix, seed: int) -> list[bytes]:
    """The pre-encoded requests, the same for every process given the same seed."""
    rng = random.Random(seed)
    world = _AccountsWorld(mix, rng) if mix.accounts else _World(mix, rng)
    return [encode_request(_request(world)) for _ in range(mix.pool)]
