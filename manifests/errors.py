"""The project's error base: what the CLI prints as one line (exit 2) and the flow does not retry."""

from __future__ import annotations


class Is4Error(Exception):
    """An error the project raises on purpose, with a message that names what is wrong and where."""


class FatalError(Is4Error):
    """An error that cannot succeed on retry (bad config, input, manifest or checkpoint): never retried."""
