"""Errors shared by modules that must not import each other (the config validates geometry that
the pyramid module owns, and the pyramid module raises configuration errors)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""
