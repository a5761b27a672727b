"""The plugin chain: order, state filter, first decision wins, deadlines, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iredapd.chain import PluginLoadError, builtin_plugin_dir
from iredapd.request import PolicyRequest
from tests.support.plugins import make_chain, simple_plugin, write_plugin

RCPT = PolicyRequest.from_attributes({"protocol_state": "RCPT", "sender": "a@b.com"})
EOM = PolicyRequest.from_attributes({"protocol_state": "END-OF-MESSAGE", "sender": "a@b.com"})


async def test_first_non_dunno_wins_and_order_is_by_priority(tmp_path: Path) -> None:
    simple_plugin(tmp_path, "custom_low", "REJECT low")
    simple_plugin(tmp_path, "custom_high", "REJECT high")
    simple_plugin(tmp_path, "custom_pass", "DUNNO nothing to say")
    chain = make_chain(
        tmp_path,
        plugins=["custom_low", "custom_pass", "custom_high"],
        PLUGIN_PRIORITIES={"custom_high": 50, "custom_pass": 60, "custom_low": 10},
    )
    assert chain.names == ["custom_pass", "custom_high", "custom_low"]
    decision = await chain.evaluate(RCPT, trace=True)
    assert decision.action.text == "REJECT high"
    assert decision.plugin == "custom_high"
    assert [(s.plugin, s.outcome) for s in decision.steps] == [
        ("custom_pass", "pass"),
        ("custom_high", "action"),
    ]


async def test_ties_keep_configured_order(tmp_path: Path) -> None:
    for n in ("custom_b", "custom_a", "custom_c"):
        simple_plugin(tmp_path, n, f"REJECT {n}")
    chain = make_chain(tmp_path, plugins=["custom_b", "custom_a", "custom_c"])
    assert chain.names == ["custom_b", "custom_a", "custom_c"]
    assert (await chain.evaluate(RCPT)).action.text == "REJECT custom_b"


def test_builtin_priorities_order_iredapds_default_list(tmp_path: Path) -> None:
    chain = make_chain(None, plugins=["reject_to_hostname", "reject_null_sender"])
    assert chain.describe() == [
        ("reject_to_hostname", 100, ["RCPT"]),
        ("reject_null_sender", 100, ["RCPT"]),
    ]


async def test_state_filter(tmp_path: Path) -> None:
    simple_plugin(tmp_path, "custom_rcpt", "REJECT at rcpt", ("RCPT",))
    simple_plugin(tmp_path, "custom_eom", "REJECT at eom", ("END-OF-MESSAGE",))
    chain = make_chain(tmp_path, plugins=["custom_rcpt", "custom_eom"])
    assert (await chain.evaluate(RCPT)).action.text == "REJECT at rcpt"
    d = await chain.evaluate(EOM, trace=True)
    assert d.action.text == "REJECT at eom"
    assert d.steps[0].outcome == "skipped"


async def test_all_pass_gives_plain_dunno(tmp_path: Path) -> None:
    simple_plugin(tmp_path, "custom_a", "DUNNO with text")
    simple_plugin(tmp_path, "custom_b", None)
    chain = make_chain(tmp_path, plugins=["custom_a", "custom_b"])
    d = await chain.evaluate(RCPT)
    assert d.action.text == "DUNNO"
    assert d.plugin == ""


async def test_no_plugins() -> None:
    chain = make_chain(None, plugins=[])
    assert (await chain.evaluate(RCPT)).action.text == "DUNNO No enabled plugins"


async def test_failing_plugin_gets_failure_action_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(
        tmp_path,
        "custom_boom",
        """
        class P(Plugin):
            async def check(self, ctx):
                raise RuntimeError("database exploded")
        """,
    )
    simple_plugin(tmp_path, "custom_next", "REJECT next")
    chain = make_chain(tmp_path, plugins=["custom_boom", "custom_next"])
    d = await chain.evaluate(RCPT, trace=True)
    assert d.action.text == "REJECT next"  # default failure action DUNNO: the chain goes on
    assert d.steps[0].outcome == "failed"
    assert chain.stats()["custom_boom"].failures == 1
    assert "plugin custom_boom failed: RuntimeError: database exploded" in caplog.text


async def test_failure_action_can_be_a_temporary_failure(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_boom",
        """
        class P(Plugin):
            async def check(self, ctx):
                raise OSError("down")
        """,
    )
    simple_plugin(tmp_path, "custom_next", "OK")
    chain = make_chain(
        tmp_path,
        plugins=["custom_boom", "custom_next"],
        PLUGIN_FAILURE_ACTIONS={"custom_boom": "DEFER_IF_PERMIT Service temporarily unavailable"},
    )
    d = await chain.evaluate(RCPT)
    assert d.action.text == "DEFER_IF_PERMIT Service temporarily unavailable"
    assert d.plugin == "custom_boom"


async def test_slow_plugin_hits_its_deadline(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_slow",
        """
        class P(Plugin):
            async def check(self, ctx):
                await asyncio.sleep(30)
                return "REJECT too late"
        """,
    )
    simple_plugin(tmp_path, "custom_next", "REJECT next")
    chain = make_chain(
        tmp_path, plugins=["custom_slow", "custom_next"], PLUGIN_TIMEOUTS={"custom_slow": 0.05}
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    d = await chain.evaluate(RCPT, trace=True)
    assert loop.time() - t0 < 2
    assert d.action.text == "REJECT next"
    assert d.steps[0].outcome == "timeout"
    assert chain.stats()["custom_slow"].timeouts == 1


async def test_request_deadline_bounds_the_whole_chain(tmp_path: Path) -> None:
    for n in ("custom_s1", "custom_s2", "custom_s3"):
        write_plugin(
            tmp_path,
            n,
            """
            class P(Plugin):
                async def check(self, ctx):
                    await asyncio.sleep(0.2)
            """,
        )
    chain = make_chain(
        tmp_path,
        plugins=["custom_s1", "custom_s2", "custom_s3"],
        PLUGIN_TIMEOUT=1.0,
        REQUEST_TIMEOUT=0.3,
    )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    d = await chain.evaluate(RCPT, trace=True)
    assert loop.time() - t0 < 0.6
    assert [s.outcome for s in d.steps] == ["pass", "timeout", "timeout"]
    assert d.action.text == "DUNNO"


async def test_invalid_return_value_is_a_failure(tmp_path: Path) -> None:
    simple_plugin(tmp_path, "custom_bad", "this is not an action")
    write_plugin(
        tmp_path,
        "custom_int",
        """
        class P(Plugin):
            async def check(self, ctx):
                return 42
        """,
    )
    chain = make_chain(tmp_path, plugins=["custom_bad", "custom_int"])
    d = await chain.evaluate(RCPT, trace=True)
    assert [s.outcome for s in d.steps] == ["failed", "failed"]
    assert d.action.text == "DUNNO"


async def test_blocking_work_runs_off_the_loop(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_blocking",
        """
        class P(Plugin):
            async def check(self, ctx):
                await ctx.run_blocking(time.sleep, 0.5)
                return "REJECT done"
        """,
    )
    chain = make_chain(tmp_path, plugins=["custom_blocking"])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    d = await chain.evaluate(RCPT)
    t.cancel()
    assert d.action.text == "REJECT done"
    assert ticks >= 20  # the loop kept running while the plugin waited


async def test_once_shares_a_lookup_within_a_request(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_counter",
        """
        CALLS = []
        class P(Plugin):
            async def check(self, ctx):
                async def lookup():
                    CALLS.append(1)
                    return len(CALLS)
                a = await ctx.once(("q", 1), lookup)
                b = await ctx.once(("q", 1), lookup)
                return f"REJECT {a} {b}"
        """,
    )
    chain = make_chain(tmp_path, plugins=["custom_counter"])
    assert (await chain.evaluate(RCPT)).action.text == "REJECT 1 1"
    assert (await chain.evaluate(RCPT)).action.text == "REJECT 2 2"


def test_missing_plugin_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match="plugin no_such_plugin not found"):
        make_chain(tmp_path, plugins=["no_such_plugin"])


def test_plugin_with_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "custom_broken.py").write_text("def oops(:\n")
    with pytest.raises(PluginLoadError, match=r"custom_broken .* failed to import"):
        make_chain(tmp_path, plugins=["custom_broken"])


def test_file_without_plugin_class(tmp_path: Path) -> None:
    (tmp_path / "custom_empty.py").write_text("X = 1\n")
    with pytest.raises(PluginLoadError, match="defines no Plugin subclass"):
        make_chain(tmp_path, plugins=["custom_empty"])


def test_iredapd_style_plugin_is_explained(tmp_path: Path) -> None:
    (tmp_path / "custom_old.py").write_text("def restriction(**kwargs):\n    return 'DUNNO'\n")
    with pytest.raises(PluginLoadError, match="iRedAPD-style plugin"):
        make_chain(tmp_path, plugins=["custom_old"])


def test_missing_requirement_is_a_load_error(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_needs_ldap",
        """
        class P(Plugin):
            requires = frozenset({"vmail"})
            async def check(self, ctx):
                return None
        """,
    )
    with pytest.raises(PluginLoadError, match="needs vmail"):
        make_chain(tmp_path, plugins=["custom_needs_ldap"])


def test_plugin_declared_settings_are_accepted(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_cfg",
        """
        class P(Plugin):
            own_settings = {"CUSTOM_CFG_TEXT": "default text"}
            async def check(self, ctx):
                return "REJECT " + ctx.settings.get("CUSTOM_CFG_TEXT")
        """,
    )
    chain = make_chain(tmp_path, plugins=["custom_cfg"], CUSTOM_CFG_TEXT="configured")
    assert chain.settings.get("CUSTOM_CFG_TEXT") == "configured"


def test_builtin_plugins_are_found() -> None:
    assert (builtin_plugin_dir() / "reject_null_sender.py").is_file()


async def test_prepend_does_not_end_the_chain(tmp_path: Path) -> None:
    simple_plugin(tmp_path, "custom_hdr", "PREPEND X-Test: 1")
    simple_plugin(tmp_path, "custom_hdr2", "PREPEND X-Test: 2")
    simple_plugin(tmp_path, "custom_pass", None)
    chain = make_chain(tmp_path, plugins=["custom_hdr", "custom_hdr2", "custom_pass"])
    d = await chain.evaluate(RCPT)
    assert (d.action.text, d.plugin) == ("PREPEND X-Test: 1", "custom_hdr")
    simple_plugin(tmp_path, "custom_rej", "REJECT no")
    chain = make_chain(tmp_path, plugins=["custom_hdr", "custom_rej"])
    d = await chain.evaluate(RCPT)
    assert (d.action.text, d.plugin) == ("REJECT no", "custom_rej")


async def test_on_decision_sees_the_final_action(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_watch",
        """
        SEEN = []
        class P(Plugin):
            async def check(self, ctx):
                ctx.on_decision(SEEN.append)
                return None
        """,
    )
    simple_plugin(tmp_path, "custom_rej", "REJECT no")
    chain = make_chain(tmp_path, plugins=["custom_watch", "custom_rej"])
    await chain.evaluate(RCPT)
    import sys

    seen = sys.modules["iredapd.plugins.custom_watch"].SEEN
    assert [a.text for a in seen] == ["REJECT no"]


async def test_a_plugin_that_answers_at_once_needs_no_timer(tmp_path: Path) -> None:
    # answers without waiting: no deadline timer is armed (and none can fire)
    simple_plugin(tmp_path, "custom_now", "REJECT now")
    chain = make_chain(tmp_path, plugins=["custom_now"], PLUGIN_TIMEOUT=1e-9)
    assert (await chain.evaluate(RCPT)).action.text == "REJECT now"
    # one that waits gets its deadline
    write_plugin(
        tmp_path,
        "custom_wait",
        """
        class P(Plugin):
            async def check(self, ctx):
                await asyncio.sleep(0)
                await asyncio.sleep(0.5)
                return "REJECT late"
        """,
    )
    chain = make_chain(tmp_path, plugins=["custom_wait"], PLUGIN_TIMEOUT=0.05)
    d = await chain.evaluate(RCPT, trace=True)
    assert d.steps[0].outcome == "timeout"


async def test_cancellation_reaches_a_waiting_plugin(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_cleanup",
        """
        CLEANED = []
        class P(Plugin):
            async def check(self, ctx):
                try:
                    await asyncio.sleep(10)
                finally:
                    CLEANED.append(True)
        """,
    )
    chain = make_chain(tmp_path, plugins=["custom_cleanup"])
    task = asyncio.create_task(chain.evaluate(RCPT))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    import sys

    assert sys.modules["iredapd.plugins.custom_cleanup"].CLEANED == [True]
