"""iredapd: a Postfix policy server, drop-in successor to iRedAPD."""

__all__ = ["__version__"]

__version__ = "7.0.0.dev0"
