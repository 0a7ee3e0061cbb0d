// The matrix-js-sdk + Rust crypto pair of this directory, for ../jspeer/peer.mjs.
//
// peer.mjs is shared by every pair directory (tests/jspeer, tests/jspeer43): it imports this file
// from the directory it is told to use (JSPEER_SDK_DIR), and the bare specifiers below resolve
// in *this* directory's node_modules, exactly as the SDK's own imports do (so `wasm` is the very
// module instance the SDK uses).
import { readFileSync } from "node:fs";

export * as sdk from "matrix-js-sdk";
export * as cryptoApi from "matrix-js-sdk/lib/crypto-api/index.js";
export { logger } from "matrix-js-sdk/lib/logger.js";
export * as wasm from "@matrix-org/matrix-sdk-crypto-wasm";

const version = (pkg) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url), "utf8")).version;

/** The installed versions (what the lock file pinned). */
export const versions = {
  js_sdk: version("matrix-js-sdk"),
  crypto_wasm: version("@matrix-org/matrix-sdk-crypto-wasm"),
};
