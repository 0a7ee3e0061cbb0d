"""Reading a deliberate "key storage off" from account data: explicit booleans only."""

from __future__ import annotations

from typing import Any, cast

import pytest

from nerbot.domain.facts import BackupState
from nerbot.matrix.admin import AdminProbe, storage_opt_out
from nerbot.matrix.http import MatrixHttp

CASES: list[tuple[str, object, bool]] = [
    ("nothing", {}, False),
    ("key backup off", {"m.key_backup": {"enabled": False}}, True),
    ("key backup on", {"m.key_backup": {"enabled": True}}, False),
    ("backup disabled marker", {"m.org.matrix.custom.backup_disabled": {"disabled": True}}, True),
    ("backup disabled marker cleared",
     {"m.org.matrix.custom.backup_disabled": {"disabled": False}}, False),
    ("element x recovery off", {"io.element.recovery": {"enabled": False}}, True),
    ("element x recovery on", {"io.element.recovery": {"enabled": True}}, False),
    ("one opt-out among unrelated data",
     {"m.secret_storage.default_key": {"key": "k"}, "io.element.recovery": {"enabled": False}},
     True),
    ("string instead of bool", {"m.key_backup": {"enabled": "false"}}, False),
    ("zero instead of false", {"m.key_backup": {"enabled": 0}}, False),
    ("one instead of true", {"m.org.matrix.custom.backup_disabled": {"disabled": 1}}, False),
    ("null value", {"io.element.recovery": {"enabled": None}}, False),
    ("key missing", {"m.key_backup": {}}, False),
    ("wrong key", {"m.org.matrix.custom.backup_disabled": {"enabled": False}}, False),
    ("content not a dict", {"m.key_backup": False}, False),
    ("content a list", {"io.element.recovery": [{"enabled": False}]}, False),
    ("content null", {"m.org.matrix.custom.backup_disabled": None}, False),
    ("global data not a dict", [("m.key_backup", {"enabled": False})], False),
    ("global data null", None, False),
]


@pytest.mark.parametrize(("global_data", "expected"), [(g, e) for _, g, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_storage_opt_out(global_data: object, expected: bool) -> None:
    assert storage_opt_out(global_data) is expected


class FakeHttp:
    """Answers the admin API calls ``AdminProbe.facts`` makes, with given account data."""

    def __init__(self, global_data: object) -> None:
        self.global_data = global_data

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                      token: str | None = None, ok_statuses: tuple[int, ...] = (200,)
                      ) -> tuple[int, dict[str, Any]]:
        if path.endswith("/devices"):
            return 200, {"devices": []}
        if path.endswith("/accountdata"):
            return 200, {"account_data": {"global": self.global_data, "rooms": {}}}
        return 200, {"name": "@a:hs"}


@pytest.mark.parametrize(("global_data", "expected"), [
    ({"m.org.matrix.custom.backup_disabled": {"disabled": True}}, True),
    ({"m.key_backup": {"enabled": True}}, False),
    ({"io.element.recovery": "off"}, False),
])
async def test_admin_facts_carry_the_opt_out(global_data: object, expected: bool) -> None:
    probe = AdminProbe(cast(MatrixHttp, FakeHttp(global_data)), "admin-token",
                       backup_check=False)
    facts = await probe.facts("@a:hs")
    assert facts.exists and facts.backup.state is BackupState.UNKNOWN
    assert facts.backup.storage_opted_out is expected
