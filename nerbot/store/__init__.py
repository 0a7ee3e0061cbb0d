"""Persistence: the only package that speaks SQL."""

from nerbot.store.db import Store

__all__ = ["Store"]
