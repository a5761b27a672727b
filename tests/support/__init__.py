"""Test fixtures for external services (Postfix, slapd) and helpers shared by the tests."""
