"""AccountBuilder against the real Synapse, checked as another user and with signedjson.

signedjson (matrix-org's implementation, used by Synapse) is independent of nerbot's own
signing code, so a bug shared by the builder and nerbot's verifier cannot hide here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from unpaddedbase64 import decode_base64

from nerbot.localdev.accounts import (
    BACKUP_ALGORITHM,
    FORGED_VIA_DEVICE_KEYS,
    SECRET_STORAGE_ALGORITHM,
    AccountBuilder,
    BuiltAccount,
)
from nerbot.localdev.synapse import LocalSynapse, SynapseError
from nerbot.matrix.crosssigning import (
    SigningKey,
    is_device_cross_signed,
    sign_json,
    signatures_upload_body,
)

logger = logging.getLogger(__name__)

Json = dict[str, Any]


@pytest.fixture
def builder(synapse: LocalSynapse) -> AccountBuilder:
    return AccountBuilder(synapse)


@pytest.fixture
def observer(builder: AccountBuilder) -> str:
    """An access token of an unrelated user: everything is checked from outside."""
    account = builder.create()
    return builder.add_device(account, "observer").access_token


def query(synapse: LocalSynapse, token: str, *user_ids: str) -> Json:
    result: Json = synapse.request("POST", "/_matrix/client/v3/keys/query",
                                   {"device_keys": {u: [] for u in user_ids}}, token=token)
    return result


def signed_by(obj: Json, user_id: str, key_id: str, public_b64: str) -> bool:
    """signedjson's verdict on ``obj`` carrying a valid signature by ``public_b64``."""
    verify_key = signedjson.key.decode_verify_key_bytes(key_id, decode_base64(public_b64))
    try:
        signedjson.sign.verify_signed_json(obj, user_id, verify_key)
    except signedjson.sign.SignatureVerifyException:
        return False
    return True


def cross_signing_of(result: Json, user_id: str) -> tuple[str, str] | None:
    """(master, self-signing) public keys, asserting signedjson validates the chain."""
    master_obj = result.get("master_keys", {}).get(user_id)
    if master_obj is None:
        return None
    ((master_id, master),) = master_obj["keys"].items()
    ssk_obj = result["self_signing_keys"][user_id]
    ((ssk_id, ssk),) = ssk_obj["keys"].items()
    assert ssk_id == f"ed25519:{ssk}" and master_id == f"ed25519:{master}"
    assert signed_by(ssk_obj, user_id, master_id, master)
    return master, ssk


def test_devices_upload_self_signed_keys(
    synapse: LocalSynapse, builder: AccountBuilder, observer: str
) -> None:
    account = builder.create()
    keyed = builder.add_device(account, "phone", device_id="FIXEDID01")
    bare = builder.add_device(account, "laptop", upload_keys=False)
    assert keyed.device_id == "FIXEDID01" and keyed.keys_uploaded and not bare.keys_uploaded

    devices = query(synapse, observer, account.user_id)["device_keys"][account.user_id]
    assert set(devices) == {keyed.device_id}  # a device without keys is not listed
    obj = devices[keyed.device_id]
    key_id = f"ed25519:{keyed.device_id}"
    assert obj["keys"][key_id] == keyed.signing_key.public
    assert len(decode_base64(obj["keys"][f"curve25519:{keyed.device_id}"])) == 32
    assert obj["algorithms"] == ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"]
    assert signed_by(obj, account.user_id, key_id, keyed.signing_key.public)
    assert "master_keys" not in query(synapse, observer, account.user_id) or (
        account.user_id not in query(synapse, observer, account.user_id)["master_keys"])

    builder.logout_device(account, keyed.device_id)
    assert account.user_id not in query(synapse, observer, account.user_id)["device_keys"] or (
        not query(synapse, observer, account.user_id)["device_keys"][account.user_id])


def test_cross_signing_and_signed_devices(
    synapse: LocalSynapse, builder: AccountBuilder, observer: str
) -> None:
    account = builder.create()
    signed = builder.add_device(account, "signed")
    unsigned = builder.add_device(account, "unsigned")
    keys = builder.set_up_cross_signing(account)
    builder.sign_device(account, signed.device_id)

    result = query(synapse, observer, account.user_id)
    chain = cross_signing_of(result, account.user_id)
    assert chain == (keys.master_public, keys.self_signing_public)
    assert account.user_id not in result.get("user_signing_keys", {})  # only for the owner
    devices = result["device_keys"][account.user_id]
    ssk_id = f"ed25519:{keys.self_signing_public}"
    assert signed_by(devices[signed.device_id], account.user_id, ssk_id,
                     keys.self_signing_public)
    # The device's own signature survives next to the cross-signing one.
    assert signed_by(devices[signed.device_id], account.user_id,
                     f"ed25519:{signed.device_id}", signed.signing_key.public)
    assert ssk_id not in devices[unsigned.device_id]["signatures"][account.user_id]
    assert is_device_cross_signed(result, account.user_id, signed.device_id)
    assert not is_device_cross_signed(result, account.user_id, unsigned.device_id)


def test_cross_signing_without_device_and_replacement(
    synapse: LocalSynapse, builder: AccountBuilder, observer: str
) -> None:
    """No device: a throwaway login is used and removed. Again: the 401 UIA path replaces it."""
    account = builder.create()
    first = builder.set_up_cross_signing(account)
    assert account.devices == {}
    assert cross_signing_of(query(synapse, observer, account.user_id), account.user_id) == (
        first.master_public, first.self_signing_public)
    second = builder.set_up_cross_signing(account)
    assert cross_signing_of(query(synapse, observer, account.user_id), account.user_id) == (
        second.master_public, second.self_signing_public)
    assert account.cross_signing == second
    # The throwaway logins left no devices behind.
    token = builder.add_device(account).access_token
    assert len(synapse.request("GET", "/_matrix/client/v3/devices", token=token)["devices"]) == 1


def test_forged_signature(synapse: LocalSynapse, builder: AccountBuilder, observer: str) -> None:
    account = builder.create()
    device = builder.add_device(account)
    keys = builder.set_up_cross_signing(account)
    ssk_id = f"ed25519:{keys.self_signing_public}"

    # What Synapse does with a forged signature on /keys/signatures/upload: 200, a failure
    # entry, nothing stored.
    assert device.device_keys is not None
    forged = sign_json(device.device_keys, account.user_id, ssk_id, SigningKey.generate())
    answer = synapse.request("POST", "/_matrix/client/v3/keys/signatures/upload",
                             signatures_upload_body([forged]), token=device.access_token)
    failure = answer["failures"][account.user_id][device.device_id]
    assert failure["errcode"] == "M_INVALID_SIGNATURE" and failure["status"] == 400
    stored = query(synapse, observer, account.user_id)["device_keys"][account.user_id]
    assert ssk_id not in stored[device.device_id]["signatures"][account.user_id]

    # So the builder embeds it in the device's own key upload, which Synapse does not check.
    assert builder.forge_device_signature(account, device.device_id) == FORGED_VIA_DEVICE_KEYS
    result = query(synapse, observer, account.user_id)
    served = result["device_keys"][account.user_id][device.device_id]
    assert ssk_id in served["signatures"][account.user_id]
    assert not signed_by(served, account.user_id, ssk_id, keys.self_signing_public)
    assert signed_by(served, account.user_id, f"ed25519:{device.device_id}",
                     device.signing_key.public)
    assert not is_device_cross_signed(result, account.user_id, device.device_id)


def test_backup_create_and_delete(synapse: LocalSynapse, builder: AccountBuilder) -> None:
    account = builder.create()
    device = builder.add_device(account)
    keys = builder.set_up_cross_signing(account)
    version = builder.create_backup(account)

    current = synapse.request("GET", "/_matrix/client/v3/room_keys/version",
                              token=device.access_token)
    assert current["version"] == version and current["algorithm"] == BACKUP_ALGORITHM
    auth = current["auth_data"]
    assert len(decode_base64(auth["public_key"])) == 32
    assert signed_by(auth, account.user_id, f"ed25519:{device.device_id}",
                     device.signing_key.public)
    assert signed_by(auth, account.user_id, keys.master.key_id, keys.master_public)

    builder.delete_backup(account, version)
    with pytest.raises(SynapseError) as missing:
        synapse.request("GET", "/_matrix/client/v3/room_keys/version", token=device.access_token)
    assert missing.value.status == 404 and missing.value.errcode == "M_NOT_FOUND"


def test_secret_storage_account_data(synapse: LocalSynapse, builder: AccountBuilder) -> None:
    account = builder.create()
    token = builder.add_device(account).access_token
    builder.set_up_cross_signing(account)
    key_id = builder.set_up_secret_storage(account)

    def data(event_type: str) -> Json:
        path = synapse.api_path("/_matrix/client/v3/user/{}/account_data/{}",
                                account.user_id, event_type)
        result: Json = synapse.request("GET", path, token=token)
        return result

    assert data("m.secret_storage.default_key") == {"key": key_id}
    description = data(f"m.secret_storage.key.{key_id}")
    assert description["algorithm"] == SECRET_STORAGE_ALGORITHM
    assert {"iv", "mac"} <= set(description)
    assert set(data("m.cross_signing.master")["encrypted"]) == {key_id}
    builder.set_account_data(account, "org.example.test", {"x": 1})
    assert data("org.example.test") == {"x": 1}


async def test_join_room_from_a_thread(synapse: LocalSynapse, builder: AccountBuilder) -> None:
    """The builder is blocking; asyncio tests call it through ``asyncio.to_thread``."""
    host = await asyncio.to_thread(builder.create)
    host_token = (await asyncio.to_thread(builder.add_device, host)).access_token
    guest = await asyncio.to_thread(builder.create)  # no device: a throwaway login joins
    room = await asyncio.to_thread(synapse.request, "POST", "/_matrix/client/v3/createRoom",
                                   {"invite": [guest.user_id]}, host_token)
    await asyncio.to_thread(builder.join_room, guest, room["room_id"])
    path = synapse.api_path("/_matrix/client/v3/rooms/{}/joined_members", room["room_id"])
    members = await asyncio.to_thread(synapse.request, "GET", path, None, host_token)
    assert set(members["joined"]) == {host.user_id, guest.user_id}
    assert guest.devices == {}


def observed_shape(result: Json, account: BuiltAccount) -> tuple[int, bool, list[bool]]:
    """(devices, cross-signing, signed flags in device order) as seen from outside."""
    devices = result["device_keys"].get(account.user_id, {})
    chain = cross_signing_of(result, account.user_id)
    flags = []
    for device_id in account.devices:
        obj = devices[device_id]
        assert signed_by(obj, account.user_id, f"ed25519:{device_id}",
                         account.devices[device_id].signing_key.public)
        flags.append(chain is not None and signed_by(
            obj, account.user_id, f"ed25519:{chain[1]}", chain[1]))
    return len(devices), chain is not None, flags


def test_build_many_mix(synapse: LocalSynapse, builder: AccountBuilder, observer: str) -> None:
    n = 20
    plan = AccountBuilder.plan_many(n, seed=7)
    assert plan == AccountBuilder.plan_many(n, seed=7)
    assert plan != AccountBuilder.plan_many(n, seed=8)

    started = time.monotonic()
    accounts = builder.build_many(n, seed=7, workers=8)
    seconds = time.monotonic() - started
    logger.warning("build_many(%d): %.2f s, %.0f ms per user", n, seconds, 1000 * seconds / n)

    result = query(synapse, observer, *(a.user_id for a in accounts))
    shapes = [observed_shape(result, a) for a in accounts]
    assert shapes == plan
    devices = sum(shape[0] for shape in shapes)
    assert n <= devices <= 3 * n and all(1 <= s[0] <= 3 for s in shapes)
    cross = [s for s in shapes if s[1]]
    assert 0.4 <= len(cross) / n <= 0.8
    signed = sum(sum(s[2]) for s in cross)
    cross_devices = sum(s[0] for s in cross)
    assert 0 < cross_devices - signed < signed  # most, not all, of their devices are signed
    assert len({a.user_id for a in accounts}) == n

    again = builder.build_many(5, seed=7, workers=5)
    result = query(synapse, observer, *(a.user_id for a in again))
    assert [observed_shape(result, a) for a in again] == plan[:5]
