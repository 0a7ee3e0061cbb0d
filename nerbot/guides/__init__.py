"""Walkthrough guides shipped as data (``data/*.toml``); loaded by ``nerbot.domain.guide``."""
