"""throttle: limit how much mail a sender may send and a recipient may receive.

What it does
    At the end of each message (END-OF-MESSAGE, where Postfix knows the size
    and the number of accepted recipients) the message is checked against the
    rules in the ``throttle`` table, first for the sender, then for the
    recipient:

    * ``outbound`` rules throttle senders who logged in (SMTP AUTH) or send
      from this host (127.0.0.1 / ::1); ``external`` rules throttle other
      senders; ``inbound`` rules throttle recipients (Postfix only names the
      recipient of a single-recipient message; otherwise only IP rules match).
      With SMTP AUTH, recipient throttling is skipped
      (``THROTTLE_BYPASS_LOCAL_RECIPIENT``).
    * A rule's ``account`` is an address, ``@domain``, ``@.domain`` (domain and
      sub-domains), ``@.`` (everyone), a client IP, an IPv4 wildcard
      (``192.0.2.*``) or ``@ip`` (every client IP).  Rules for an alias domain
      also apply to its target domain's addresses.
    * Limits: ``msg_size`` (bytes in one message, reply ``REJECT Message size
      is too large``), ``max_rcpts`` (recipients in one message, ``REJECT Too
      many recipients in single message``), ``max_msgs`` (recipients counted
      over ``period`` seconds) and ``max_quota`` (bytes over ``period``
      seconds), both ``REJECT Throttling quota exceeded``.  For each limit the
      rule of highest ``priority`` that sets it wins: ``-1`` means "not set
      here, ask the next rule", ``0`` means unlimited.  Equal priorities: the
      rule with the smaller id first.
    * Counters live in ``throttle_tracking``: per client IP for IP and ``@ip``
      rules, one shared counter for a wildcard rule, per sender/recipient for
      every other rule (so ``@example.com max_msgs=100`` allows each user of
      example.com 100).  A window starts with the first message and ends
      ``period`` seconds later.  A refused message is not counted.
    * When max_msgs or max_quota refuses mail, the admin gets one notification
      mail per window (``NOTIFICATION_*`` settings), sent in the background.

    Counting is exact when several daemons share the database: each message is
    checked and counted by single atomic statements in the database.

Settings
    ``THROTTLE_BYPASS_SAME_DOMAIN`` (True: no throttling when the sender's and
    the recipient's domain are the same), ``THROTTLE_BYPASS_MYNETWORKS``
    (False: no throttling for ``MYNETWORKS``), ``THROTTLE_BYPASS_LOCAL_RECIPIENT``
    (True), ``ENABLE_ALL_WILDCARD_IP``, ``CACHE_TTL`` (rules are cached this
    long; counters never), ``NOTIFICATION_*``, ``CMD_SENDMAIL``.

Tables
    iredapd: ``throttle`` (rules; ``tools/throttle_admin.py`` edits them),
    ``throttle_tracking`` (counters; ``tools/cleanup_db.py`` removes ended
    windows).  vmail: alias domains.

Postfix
    ``smtpd_end_of_data_restrictions = check_policy_service inet:127.0.0.1:7777``
    in main.cf (the plugin only runs at END-OF-MESSAGE).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy.engine import Connection

from iredapd.addr import is_domain
from iredapd.config import Settings
from iredapd.lookup import ip_candidates, policy_addresses, throttle_tracking_key
from iredapd.notify import Notifier
from iredapd.plugin import Action, Context, Plugin
from iredapd.services import Services
from iredapd.storage.db import Database
from iredapd.storage.throttle import (
    LIMITS,
    Charge,
    ChargeResult,
    Rule,
    charge_message,
    effective,
    fetch_rules,
    fits,
    read_tracking,
)
from iredapd.storage.throttle import claim_notification as _claim

log = logging.getLogger("iredapd.plugins.throttle")

# Rules cached per account at most (an LRU: busy accounts stay).
_CACHE_SIZE = 50_000
# After asking the database whether to notify for a counter, do not ask again
# for this long (seconds; capped by the rule's period).  The database decides
# "once per window"; this only spares it a query per refused message.
_NOTIFY_RECHECK = 60
_MEMO_SIZE = 10_000

_UNITS = {"max_msgs": "", "max_quota": "bytes"}


@dataclass(frozen=True, slots=True)
class Winner:
    """The rule whose value counts for one limit (§9.4)."""

    name: str  # msg_size, max_rcpts, max_msgs, max_quota
    rule: Rule
    position: int  # the rule's place in priority order

    @property
    def value(self) -> int:
        """The limit (0: unlimited)."""
        return self.rule.limit(self.name)


def ordered(rules: Iterable[Rule]) -> list[Rule]:
    """Highest priority first; equal priorities by id (iRedAPD: database order)."""
    return sorted(rules, key=lambda r: (-r.priority, r.id))


def pick_winners(rules: Sequence[Rule]) -> dict[str, Winner]:
    """For each limit, the first rule (in priority order) whose value is >= 0.

    ``max_msgs``/``max_quota`` need a window: rules with period 0 do not take
    part in them.  ``msg_size``/``max_rcpts`` need none, so a period-0 rule
    still sets them (iRedAPD ignored period-0 rules entirely, §17.4 item 22).
    """
    winners: dict[str, Winner] = {}
    for position, rule in enumerate(rules):
        for name in LIMITS:
            if name in winners or rule.limit(name) < 0:
                continue
            if name in _UNITS and rule.period <= 0:
                continue
            winners[name] = Winner(name, rule, position)
    return winners


def throttle_info(winners: dict[str, Winner]) -> str:
    """iRedAPD's description of the winning rules (logs and notification mail)."""
    parts = []
    for w in sorted(winners.values(), key=lambda w: (w.position, LIMITS.index(w.name))):
        unit = " (bytes)" if w.name in ("msg_size", "max_quota") else ""
        parts.append(f"id={w.rule.id}/{w.name}={w.value}{unit}/account={w.rule.account}; ")
    return "".join(parts)


def charges_for(winners: dict[str, Winner], user: str, client_address: str) -> list[Charge]:
    """The tracking rows the message is counted in (§9.6): one per winning rule."""
    charges: dict[tuple[int, str], Charge] = {}
    for name in ("max_msgs", "max_quota"):
        w = winners.get(name)
        if w is None:
            continue
        key = throttle_tracking_key(w.rule.account, user, client_address)
        charge = charges.get((w.rule.id, key)) or Charge(w.rule.id, key, w.rule.period)
        if name == "max_msgs":
            charge = replace(charge, max_msgs=w.value)
        else:
            charge = replace(charge, max_quota=w.value)
        charges[(w.rule.id, key)] = charge
    return list(charges.values())


def would_charge(
    conn: Connection, charges: Sequence[Charge], *, now: int, msgs: int, size: int
) -> ChargeResult:
    """The dry-run answer: what charge_message would decide, writing nothing."""
    ordered_charges = sorted(charges, key=lambda c: c.key)
    rows = read_tracking(conn, [c.key for c in ordered_charges])
    for charge in ordered_charges:
        row = rows.get(charge.key)
        if not fits(charge, row, now, msgs, size):
            return ChargeResult(False, charge, row)
    return ChargeResult(True)


def _left(seconds: int) -> str:
    """iRedAPD's ``time left: H hours, M minutes, S seconds`` (zero parts omitted)."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{n} {unit}"
        for n, unit in ((hours, "hours"), (minutes, "minutes"), (secs, "seconds"))
        if n
    ]
    return "time left: " + ", ".join(parts) if parts else ""


@dataclass(frozen=True, slots=True)
class _Direction:
    """Sender or recipient throttling: who, which kind of rules, their accounts."""

    user: str
    kind: str
    candidates: Sequence[str]
    client: str = ""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One direction as far as the rules decide it: winners and counters to charge."""

    direction: _Direction
    winners: dict[str, Winner]
    charges: list[Charge]


def _plan(direction: _Direction, rules: Sequence[Rule]) -> _Plan | None:
    """The winning rules of one direction (§9.3, §9.4); None when no rule applies."""
    wanted = set(direction.candidates)
    kind = direction.kind
    mine = ordered(r for r in rules if r.kind == kind and r.account.lower() in wanted)
    if not mine:
        return None
    winners = pick_winners(mine)
    if not winners:
        return None
    # the client address only matters for IP rules' counters
    return _Plan(direction, winners, charges_for(winners, direction.user, direction.client))


_STATELESS_REPLIES = {
    "msg_size": "reject_msg_size_exceeded",
    "max_rcpts": "reject_max_rcpts_exceeded",
}


def _stateless(plan: _Plan, *, size: int, rcpts: int) -> tuple[_Plan, str, int] | None:
    """The limit msg_size or max_rcpts refuses (§9.5) and the message's value, or None."""
    for rule, value in (("msg_size", size), ("max_rcpts", rcpts)):
        w = plan.winners.get(rule)
        if w is not None and w.value > 0 and value > w.value:
            return plan, rule, value
    return None


def _count_in_turn(
    conn: Connection,
    *,
    work: Sequence[Sequence[Charge]],
    now: int,
    msgs: int,
    size: int,
    dry_run: bool,
) -> tuple[int, ChargeResult]:
    """Count the message in each group of counters in turn, up to the first refusal.

    Returns how many groups accepted it and the refusal (or an acceptance).
    """
    count = would_charge if dry_run else charge_message
    for done, charges in enumerate(work):
        if not charges:
            continue
        result = count(conn, charges, now=now, msgs=msgs, size=size)
        if not result.accepted:
            return done, result
    return len(work), ChargeResult(True)


class _RuleCache:
    """Rules per (lower-cased) account for CACHE_TTL seconds; bounded LRU."""

    def __init__(self, ttl: float, size: int = _CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._data: OrderedDict[str, tuple[float, tuple[Rule, ...]]] = OrderedDict()

    def lookup(self, accounts: Iterable[str], now: float) -> tuple[list[Rule], list[str]]:
        """(rules of the cached accounts, accounts not cached)."""
        found: list[Rule] = []
        missing: list[str] = []
        for account in accounts:
            entry = self._data.get(account)
            if entry is None or entry[0] <= now:
                missing.append(account)
                continue
            self._data.move_to_end(account)
            found.extend(entry[1])
        return found, missing

    def store(self, accounts: Iterable[str], rules: Iterable[Rule], now: float) -> None:
        """Remember the rules (possibly none) of each account asked for."""
        by_account: dict[str, list[Rule]] = {a: [] for a in accounts}
        for rule in rules:
            bucket = by_account.get(rule.account.lower())
            if bucket is not None:
                bucket.append(rule)
        expires = now + self.ttl
        for account, found in by_account.items():
            self._data[account] = (expires, tuple(found))
            self._data.move_to_end(account)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class Throttle(Plugin):
    """iRedAPD's throttle plugin with atomic, exact counters."""

    task_free = True
    states = frozenset({"END-OF-MESSAGE"})
    requires = frozenset({"vmail", "iredapd"})

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        self._cache = _RuleCache(self.settings.CACHE_TTL)
        self.notifier = Notifier(self.settings, self.services.run_blocking)
        self._notify_memo: dict[tuple[int, str], float] = {}

    async def close(self) -> None:
        """Let notifications in flight finish (NOTIFICATION_TIMEOUT at most)."""
        await self.notifier.close()

    # -- the decision ------------------------------------------------------------

    async def check(self, ctx: Context) -> Action | None:
        """§9.2: bypasses, then sender throttling, then recipient throttling."""
        r = ctx.request
        s = ctx.settings
        sender = r.sasl_username or r.sender_without_ext
        sender_domain = r.sasl_username_domain or r.sender_domain
        recipient = r.recipient_without_ext
        if s.THROTTLE_BYPASS_SAME_DOMAIN and sender_domain == r.recipient_domain:
            return None
        client = r.client_address
        if s.THROTTLE_BYPASS_MYNETWORKS and client in s.trusted_networks:
            return None
        try:
            size = int(r.size) if r.size else 0
            rcpts = int(r.recipient_count)
        except ValueError:
            log.warning(
                "[%s] not throttled: size=%r recipient_count=%r are not numbers",
                client,
                r.size[:20],
                r.recipient_count[:20],
            )
            return None
        if size < 0 or rcpts < 0:
            return None
        external = not r.sasl_username and client not in ("127.0.0.1", "::1")
        directions = [(sender, "external" if external else "outbound")]
        if not (r.sasl_username and s.THROTTLE_BYPASS_LOCAL_RECIPIENT):
            directions.append((recipient, "inbound"))
        candidates = await self._candidates(ctx, [user for user, _ in directions])
        everyone = dict.fromkeys(a for keys in candidates.values() for a in keys)
        rules = await self._rules(ctx, everyone)
        # What the rules alone decide, direction by direction, up to the first
        # refusal that needs no counter (message size, recipients).  The
        # counting of all of them then takes one trip to the thread pool, in
        # the same order and with the same statements as one trip each.
        plans: list[_Plan] = []
        refusal: tuple[_Plan, str, int] | None = None
        for user, kind in directions:
            plan = _plan(_Direction(user, kind, candidates[user], client), rules)
            if plan is None:
                continue
            refusal = _stateless(plan, size=size, rcpts=rcpts)
            if refusal is not None:
                break
            plans.append(plan)
        if plans:
            action = await self._count(ctx, plans, size=size, rcpts=rcpts)
            if action is not None:
                return action
        if refusal is None:
            return None
        plan, rule, value = refusal
        log.info(
            "[%s] %s throttle: %s -> %s %d > %d. %s",
            client,
            plan.direction.kind,
            plan.direction.user,
            rule,
            value,
            plan.winners[rule].value,
            throttle_info(plan.winners),
        )
        return Action.named(_STATELESS_REPLIES[rule])

    async def _candidates(self, ctx: Context, users: Sequence[str]) -> dict[str, list[str]]:
        """The rule accounts that can match each user (§9.3), IP keys included."""
        client = ctx.request.client_address
        ip_keys = ip_candidates(client, ctx.settings.ENABLE_ALL_WILDCARD_IP)
        domains = {u.split("@", 1)[1] for u in users if "@" in u and is_domain(u.split("@", 1)[1])}
        vmail = ctx.services.vmail
        targets: dict[str, str | None] = {}
        if vmail is not None and domains:
            # one after the other: the answers are usually cached, and a task
            # per lookup (gather) would cost more than the lookups
            for domain in sorted(domains):
                targets[domain] = await ctx.once(
                    ("alias_target_domain", domain),
                    functools.partial(vmail.alias_target_domain, domain),
                )
        out: dict[str, list[str]] = {}
        for user in users:
            keys = list(ip_keys)
            if user:
                domain = user.split("@", 1)[1] if "@" in user else ""
                keys.extend(policy_addresses(user, alias_target=targets.get(domain)))
            out[user] = list(dict.fromkeys(k.lower() for k in keys))
        return out

    def _db(self, ctx: Context) -> Database:
        db = ctx.services.iredapd_db
        if db is None:
            raise RuntimeError("throttle needs the iredapd database")
        return db

    async def _rules(self, ctx: Context, accounts: Iterable[str]) -> list[Rule]:
        """Rules of every kind for the accounts: cached for CACHE_TTL, else one query."""
        db = self._db(ctx)
        accounts = list(accounts)
        if self._cache.ttl <= 0:
            return await db.run(functools.partial(fetch_rules, accounts=accounts))
        now = time.monotonic()
        found, missing = self._cache.lookup(accounts, now)
        if missing:
            fresh = await db.run(functools.partial(fetch_rules, accounts=missing))
            self._cache.store(missing, fresh, now)
            found.extend(fresh)
        return list({rule.id: rule for rule in found}.values())

    async def _count(
        self, ctx: Context, plans: Sequence[_Plan], *, size: int, rcpts: int
    ) -> Action | None:
        """Count the message for each direction in turn (§9.8-§9.10); the first refusal."""
        client = ctx.request.client_address
        now = int(ctx.now)
        work = [plan.charges for plan in plans]
        done, result = 0, ChargeResult(True)
        if any(work):
            done, result = await self._db(ctx).run(
                functools.partial(
                    _count_in_turn, work=work, now=now, msgs=rcpts, size=size, dry_run=ctx.dry_run
                )
            )
        for plan in plans[:done]:
            if plan.charges and log.isEnabledFor(logging.DEBUG):
                d = plan.direction
                log.debug(
                    "[%s] %s throttle: %s passed: %s",
                    client,
                    d.kind,
                    d.user,
                    throttle_info(plan.winners),
                )
        if result.accepted:
            return None
        plan = plans[done]
        user, kind, winners = plan.direction.user, plan.direction.kind, plan.winners
        info = throttle_info(winners)
        charge = result.over
        assert charge is not None
        cur_msgs, cur_quota, init = effective(result.tracking, charge.period, now)
        if charge.max_msgs > 0 and cur_msgs + rcpts > charge.max_msgs:
            rule, cur, requested = "max_msgs", cur_msgs, cur_msgs + rcpts
        elif charge.max_quota > 0:
            rule, cur, requested = "max_quota", cur_quota, cur_quota + size
        else:  # pragma: no cover - a counter changed between refusal and read
            rule, cur, requested = "max_msgs", cur_msgs, cur_msgs + rcpts
        limit = winners[rule].value
        log.info(
            "[%s] %s throttle: %s -> %s (%d->%d/%d, period: %d seconds, %s). Exceeded.",
            client,
            kind,
            user,
            rule,
            cur,
            requested,
            limit,
            charge.period,
            _left(init + charge.period - now),
        )
        if not ctx.dry_run:
            subject = f"Throttle quota exceeded: {user}, {rule}={limit} {_UNITS[rule]}"
            body = "\n".join(
                (
                    f"- User: {user}",
                    f"- Client IP address: {client}",
                    f"- Throttle type: {kind}",
                    f"- Throttle setting: {rule}",
                    f"- Limit: {limit} {_UNITS[rule]}",
                    f"- Detailed setting: {info}",
                )
            )
            self._notify(ctx, charge, subject, body, now)
        return Action.named("reject_quota_exceeded")

    # -- notification ------------------------------------------------------------

    def _notify(self, ctx: Context, charge: Charge, subject: str, body: str, now: int) -> None:
        """Mail the admin once per window (§9.11), in the background."""
        memo = self._notify_memo
        if memo.get(charge.key, 0) > now:
            return
        if len(memo) >= _MEMO_SIZE:
            for key in [k for k, until in memo.items() if until <= now]:
                del memo[key]
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
        memo[charge.key] = now + min(charge.period, _NOTIFY_RECHECK)
        db = self._db(ctx)

        async def claim() -> bool:
            return await db.run(functools.partial(_claim, charge=charge, now=now))

        self.notifier.submit(subject, body, claim=claim, now=now)
