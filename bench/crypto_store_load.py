"""How long nio takes to open the bot's crypto store, and what one upstream fix would save.

Run: ``uv run python bench/crypto_store_load.py DATA_DIR`` with a bot's data directory, e.g.
``/tmp/scale-world/runs/<time>/campaign-data`` after ``bench/scale.py`` (6,340 DMs).

A restart's first seconds go to nio's ``load_store()`` (simplematrixbotlib's ``login`` calls it
before the bot logs "Logged in"). With thousands of DM partners it is dominated by
``DeviceStore.add``: nio's ``DeviceStore`` defines ``__iter__`` but no ``__contains__``, so the
``if device in self`` at the top of ``add`` walks every device already loaded (and compares
dataclasses field by field): loading n devices costs n²/2 comparisons.

The script copies the crypto store to a temporary directory and opens it twice, each in a
fresh subprocess: once with nio as shipped, and once as a what-if with ``DeviceStore`` given a
``__contains__`` that looks the device up by user and device ID (the fix to propose upstream;
nerbot itself runs nio as shipped). It prints both times, the counts, the ratio, and the process's
RSS before and after the load (nio's crypto state in memory, the same either way). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("bench.crypto_store_load")

CHILD = r"""
import json, re, sys, time
from pathlib import Path
def rss_mb():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
from nio import AsyncClient, AsyncClientConfig
from nio.crypto.device import DeviceStore

store_dir, user, device, what_if = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if what_if:  # the upstream fix, in this measuring subprocess only
    def __contains__(self, device):
        return self._entries.get(device.user_id, {}).get(device.id) == device
    DeviceStore.__contains__ = __contains__
client = AsyncClient("http://127.0.0.1:9", user=user, device_id=device, store_path=store_dir,
                     config=AsyncClientConfig(store_sync_tokens=True, encryption_enabled=True))
client.user_id = user
before = rss_mb()
started = time.perf_counter()
client.load_store()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_before_mb": before, "rss_after_mb": rss_mb(),
                  "devices": sum(len(d) for d in client.device_store.values())}))
"""


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("devicekeys", "encryptedrooms", "megolminboundsessions",
                              "olmsessions")}


def load(store_dir: Path, user: str, device: str, what_if: bool) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(store_dir) + "/", user, device,
                           "1" if what_if else "0"], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="a bot's data directory (has crypto/)")
    args = parser.parse_args()
    dbs = sorted((args.data_dir / "crypto").glob("*.db"))
    if len(dbs) != 1:
        parser.error(f"expected one nio store in {args.data_dir / 'crypto'}, found {len(dbs)}")
    user, device = dbs[0].stem.rsplit("_", 1)
    with tempfile.TemporaryDirectory(prefix="nerbot-store-") as tmp:
        copy = Path(tmp) / "crypto"
        shutil.copytree(args.data_dir / "crypto", copy)
        logger.info("nio store of %s (device %s): %s", user, device,
                    ", ".join(f"{k} {v}" for k, v in counts(copy / dbs[0].name).items()))
        shipped = load(copy, user, device, what_if=False)
        fixed = load(copy, user, device, what_if=True)
    logger.info("load_store(), nio as shipped:            %.1f s (%d devices); RSS %.0f MB -> "
                "%.0f MB", shipped["seconds"], shipped["devices"], shipped["rss_before_mb"],
                shipped["rss_after_mb"])
    logger.info("load_store(), DeviceStore.__contains__:  %.1f s (%d devices), what-if only",
                fixed["seconds"], fixed["devices"])
    logger.info("ratio shipped / what-if: %.1fx", shipped["seconds"] / max(fixed["seconds"], 1e-9))
    return 0


if __name__ == "__main__":
    sys.exit(main())
