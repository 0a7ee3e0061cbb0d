"""What the person reads during verification: spec emoji names, numbers, outcomes; limits."""

from __future__ import annotations

from fakes import DmRecorder

from nerbot.commands.verify import VerificationConversation
from nerbot.domain.verification import VerificationLimits
from nerbot.i18n import Catalog
from nerbot.i18n.catalog import load_sas_emoji
from nerbot.ids import UserId

ALICE = UserId("@alice:hs")


def conversation(lang: str | None) -> tuple[VerificationConversation, DmRecorder]:
    recorder = DmRecorder()
    return VerificationConversation(recorder, Catalog.load(), load_sas_emoji(),
                                    lambda user: lang), recorder


def test_sas_text_uses_spec_names_in_the_users_language() -> None:
    zh, _ = conversation("zh")
    text = zh.sas_text(ALICE, (0, 34, 36, 53, 1, 2, 63), (1234, 5678, 9012))
    assert "🐶 狗" in text and "🔧 扳手" in text and "📌 图钉" in text
    assert "1234 5678 9012" in text and "匹配" in text
    en, _ = conversation("en")
    text = en.sas_text(ALICE, (0, 34, 36, 53, 1, 2, 63), (1, 2, 3))
    assert "🔧 Spanner" in text and "👍 Thumbs Up" in text and "Aeroplane" in text
    assert "They match" in text and "They don't match" in text


async def test_outcomes_are_explained() -> None:
    conv, recorder = conversation("en")
    await conv.verified(ALICE, "DEV", identity=True)
    await conv.cancelled(ALICE, "m.user", by_us=False)
    await conv.cancelled(ALICE, "m.timeout", by_us=True)
    await conv.cancelled(ALICE, "m.key_mismatch", by_us=True)
    await conv.cancelled(ALICE, "m.unknown_method", by_us=True)
    await conv.refused(ALICE, "cooldown")
    verified, user, timeout, mismatch, other, cooldown = recorder.dms
    assert "I now trust your identity" in verified
    assert "!verify" in user and "10 minutes" in timeout
    assert "did not match" in mismatch and "Nothing was marked" in mismatch
    assert "m.unknown_method" in other and "pausing" in cooldown


def test_limits() -> None:
    limits = VerificationLimits(max_per_hour=3, max_cancels_per_hour=2)
    assert limits.refusal([]) is None
    assert limits.refusal(["verified", "verified"]) is None
    assert limits.refusal(["verified", "verified", "timeout"]) == "rate"
    assert limits.refusal(["cancelled", "cancelled"]) == "cooldown"
