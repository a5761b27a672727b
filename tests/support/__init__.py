"""Test fixtures for external services (Postfix, slapd) and helpers shared by the tests.

The modules here are pytest plugins as well (``pytest_plugins = ["tests.support.postfix"]``)
and may be imported by test modules before pytest loads them as plugins, so
register them for assertion rewriting first.
"""

import pytest

pytest.register_assert_rewrite(
    "tests.support.postfix",
    "tests.support.services",
    "tests.support.slapd",
    "tests.support.accounts",
)
