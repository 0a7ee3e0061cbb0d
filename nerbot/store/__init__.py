"""Persistence: the only package that speaks SQL."""

from nerbot.store.db import OutboxMessage, Store

__all__ = ["OutboxMessage", "Store"]
