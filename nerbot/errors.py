"""Exception types that cross module boundaries."""

from __future__ import annotations


class NerbotError(Exception):
    """Base class for errors nerbot raises on purpose."""


class ConfigError(NerbotError):
    """One or more configuration problems, each as ``(dotted.key, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))

    def lines(self) -> list[str]:
        """The problems as ``key: what is wrong`` lines, the format check-config prints."""
        return [f"{key}: {msg}" for key, msg in self.problems]


class IdentityError(NerbotError):
    """The bot's cross-signing identity cannot be used as it is (needs an operator)."""


class MatrixRequestError(NerbotError):
    """A homeserver request failed with a Matrix error."""

    def __init__(self, method: str, path: str, status: int, body: dict[str, object]) -> None:
        self.status = status
        self.body = body
        self.errcode = str(body.get("errcode", ""))
        # Paths never contain secrets (tokens travel in headers), so they are safe to log.
        super().__init__(f"{method} {path} -> {status} {self.errcode} {body.get('error', '')}")


class VerificationRefused(NerbotError):
    """A verification could not start; ``reason`` names the catalog message (verify.<reason>)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FactsUnavailable(NerbotError):
    """A user's key facts could not be fetched (their homeserver did not answer, or ours)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"key facts for {user_id} are unavailable right now")
        self.user_id = user_id
