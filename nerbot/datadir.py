"""The data directory is private to the bot's account: 0700 directories, 0600 files.

It holds the bot's access token, its Olm account and Megolm sessions, its private cross-signing
keys and what it knows about people. ``mkdir(mode=0o700)`` alone does not make it so: it does
nothing to a directory that already exists (an operator's ``mkdir``, a Docker volume), the umask
decides the modes of what the libraries create (SQLite, nio's store, simplematrixbotlib's
session file), and simplematrixbotlib creates the crypto store 0750. So the bot runs with a
private umask, creates its database file 0600 before SQLite opens it (SQLite gives the -wal and
-shm files the database file's mode), and at start takes the group and other bits off the
directory and everything in it.

Only an entry's owner (or root) can change its mode. An open entry owned by another account is
therefore a problem the bot refuses to start with, reported as ``storage.data_dir: ...`` like
any configuration problem; ``check-config`` reports it the same way without changing anything.
Symbolic links are neither followed nor changed (``chmod`` would change their target).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nerbot.errors import ConfigError

logger = logging.getLogger(__name__)

KEY: Final = "storage.data_dir"
PRIVATE_UMASK: Final = 0o077
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
OPEN_BITS: Final = 0o077  # group and other
LOGGED_ENTRIES: Final = 5  # the log line names this many, then counts the rest


@dataclass(frozen=True, slots=True)
class OpenEntry:
    """A file or directory in the data directory that group or others can reach."""

    path: Path
    mode: int  # permission bits, as ``stat.S_IMODE`` gives them
    owner: int

    @property
    def private_mode(self) -> int:
        """The same mode without group and other bits (0755 → 0700, 0644 → 0600)."""
        return self.mode & ~OPEN_BITS

    def fixable_by(self, uid: int) -> bool:
        """``chmod`` needs the owner or root."""
        return uid == 0 or self.owner == uid


def restrict_umask() -> int:
    """Make what this process creates from now on private; returns the previous umask.

    The explicit modes below cover every file the bot knows of; this covers what a library
    might create later that nobody thought of.
    """
    return os.umask(PRIVATE_UMASK)


def _effective_uid(uid: int | None) -> int:
    return os.geteuid() if uid is None else uid


def _open_entry(path: Path, st: os.stat_result) -> OpenEntry | None:
    mode = stat.S_IMODE(st.st_mode)
    return OpenEntry(path, mode, st.st_uid) if mode & OPEN_BITS else None


def open_entries(root: Path) -> list[OpenEntry]:
    """``root`` and everything under it that group or others can reach, ``root`` first.

    ``root`` itself may be a symbolic link to the real directory; links inside it are skipped.
    """
    if not root.exists():
        return []
    found: list[OpenEntry] = []
    entry = _open_entry(root, root.stat())
    if entry is not None:
        found.append(entry)

    def unreadable(error: OSError) -> None:
        raise error

    for directory, dirnames, filenames in os.walk(root, onerror=unreadable):
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            entry = _open_entry(path, st)
            if entry is not None:
                found.append(entry)
    return found


def _describe(entries: list[OpenEntry], root: Path) -> str:
    """``nerbot.db 0644, crypto 0750 (+3 more)``: names relative to ``root``, modes in octal."""
    def name(path: Path) -> str:
        return "." if path == root else str(path.relative_to(root))

    shown = ", ".join(f"{name(e.path)} {e.mode:04o}" for e in entries[:LOGGED_ENTRIES])
    rest = len(entries) - LOGGED_ENTRIES
    return shown + (f" (+{rest} more)" if rest > 0 else "")


def _refusal(root: Path, blocked: list[OpenEntry], uid: int) -> str:
    first = blocked[0]
    more = f" (and {len(blocked) - 1} more entries like it)" if len(blocked) > 1 else ""
    return (f"{first.path} is open to group/other (mode {first.mode:04o}) and owned by uid "
            f"{first.owner}, not by the account the bot runs as (uid {uid}){more}, so the bot "
            f"cannot make it private: chown -R {uid} {root} (as root), or chmod -R go= {root} "
            "(as its owner)")


def _unreadable(root: Path, exc: OSError) -> ConfigError:
    where = exc.filename or root
    return ConfigError([(KEY, f"cannot read {where}: {exc.strerror or type(exc).__name__}")])


def _not_usable(root: Path) -> str | None:
    """Why ``root`` can be neither used nor created, if so (before anything is read)."""
    if root.exists():
        return None if root.is_dir() else f"{root} is not a directory"
    ancestor = root.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{root} does not exist and cannot be created in {ancestor}"
    return None


def check_data_dir(root: Path, uid: int | None = None) -> list[str]:
    """What ``check-config`` says about the data directory; changes nothing.

    Raises ConfigError for what would stop the bot (open entries it cannot make private, a
    directory it cannot read). Returns notes about what the bot will make private itself.
    """
    entries = _fixable_entries(root, _effective_uid(uid), create=False)
    if not entries:
        return []
    return [f"{KEY}: {root} is open to group/other ({_describe(entries, root)}); the bot "
            f"makes it private (0700 directories, 0600 files) when it starts"]


def _fixable_entries(root: Path, owner: int, create: bool) -> list[OpenEntry]:
    """The open entries under ``root`` (created 0700 first if ``create``); ConfigError when the
    directory is unusable or unreadable, or when an open entry is not ``owner``'s to change."""
    unusable = _not_usable(root)
    if unusable:
        raise ConfigError([(KEY, unusable)])
    try:
        if create and not root.exists():
            root.mkdir(parents=True, mode=DIR_MODE)
            root.chmod(DIR_MODE)  # mkdir's mode passes through the umask; make it exact
        entries = open_entries(root)
    except OSError as exc:
        raise _unreadable(root, exc) from None
    blocked = [e for e in entries if not e.fixable_by(owner)]
    if blocked:
        raise ConfigError([(KEY, _refusal(root, blocked, owner))])
    return entries


def make_private(root: Path, uid: int | None = None) -> list[OpenEntry]:
    """Create ``root`` 0700 if missing, take group/other bits off everything in it.

    Returns the entries it changed (as they were). Raises ConfigError, changing nothing, when an
    open entry belongs to another account, and when the directory cannot be created or read.
    """
    entries = _fixable_entries(root, _effective_uid(uid), create=True)
    for entry in entries:
        try:
            os.chmod(entry.path, entry.private_mode)  # links were skipped: never a link here
        except OSError as exc:  # a read-only file system, an immutable file
            raise ConfigError([(KEY, f"cannot make {entry.path} private: "
                                     f"{exc.strerror or type(exc).__name__}")]) from None
    return entries


def prepare_data_dir(root: Path, uid: int | None = None) -> list[OpenEntry]:
    """``make_private``, plus one warning line naming what was open (nothing when all was)."""
    changed = make_private(root, uid)
    if changed:
        logger.warning("Data directory %s was open to group/other; made it private "
                       "(0700 directories, 0600 files): %s", root, _describe(changed, root))
    return changed


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty and 0600 unless it exists; True if it was created.

    For files a library then opens and fills (SQLite): their mode is decided at creation, and
    SQLite gives its -wal and -shm files the mode of the database file.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have dropped bits; make it exact
    finally:
        os.close(fd)
    return True


def keep_private(*paths: Path) -> None:
    """Take group/other bits off those of ``paths`` that exist and are the bot's to change.

    For files that may have been created before the bot cared (a database's -wal and -shm left
    by a crash); anything else is ``make_private``'s to report.
    """
    uid = os.geteuid()
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        entry = _open_entry(path, st)
        if entry is not None and not stat.S_ISLNK(st.st_mode) and entry.fixable_by(uid):
            path.chmod(entry.private_mode)
