// keyroom key binding: this browser's device key and proofs of possession (docs/protocol.md 1.5).
//
// The key is an ECDSA P-256 key pair made by WebCrypto with its private half NON-EXTRACTABLE and
// kept in IndexedDB (a CryptoKey is stored as is: the page itself cannot read its bytes, so a
// token bound to it and copied out of the page is useless anywhere else). The application mints
// tokens bound to `await thumbprint()` (its `cnf.jkt`); `Room` proves possession on join, resume
// and refresh when given `keyBinding: await KeyBinding.forPage()`.
//
//   import { KeyBinding } from "/static/keybinding.js";
//   const binding = await KeyBinding.forPage();          // loads or creates the device key
//   const jkt = binding.jkt;                             // send to the token service
//   const room = new Room({ url, token, keyBinding: binding });

const DB_NAME = "keyroom-keybinding";
const STORE = "keys";
const KEY_NAME = "device";
const ALGORITHM = { name: "ECDSA", namedCurve: "P-256" };
const SIGNATURE = { name: "ECDSA", hash: "SHA-256" };
const PROOF_TYPE = "keyroom-pop+jwt";
export const CLIENT_KIND = "browser";

function b64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const utf8 = (text) => new TextEncoder().encode(text);

function request(idbRequest) {
  return new Promise((resolve, reject) => {
    idbRequest.onsuccess = () => resolve(idbRequest.result);
    idbRequest.onerror = () => reject(idbRequest.error);
  });
}

async function openStore() {
  const open = indexedDB.open(DB_NAME, 1);
  open.onupgradeneeded = () => open.result.createObjectStore(STORE);
  return request(open);
}

/** This origin's device key pair: loaded from IndexedDB, or made (non-extractable) and stored. */
export async function deviceKey() {
  const db = await openStore();
  try {
    const stored = await request(db.transaction(STORE).objectStore(STORE).get(KEY_NAME));
    if (stored) return stored;
    const pair = await crypto.subtle.generateKey(ALGORITHM, false, ["sign", "verify"]);
    await request(db.transaction(STORE, "readwrite").objectStore(STORE).put(pair, KEY_NAME));
    return pair;
  } finally {
    db.close();
  }
}

/** The public JWK members RFC 7638 hashes, in its order. */
export async function publicJwk(publicKey) {
  const { crv, kty, x, y } = await crypto.subtle.exportKey("jwk", publicKey);
  return { crv, kty, x, y };
}

/** RFC 7638 SHA-256 thumbprint: the token's `cnf.jkt`. */
export async function thumbprint(publicKey) {
  const jwk = await publicJwk(publicKey);
  const canonical = `{"crv":"${jwk.crv}","kty":"${jwk.kty}","x":"${jwk.x}","y":"${jwk.y}"}`;
  return b64url(await crypto.subtle.digest("SHA-256", utf8(canonical)));
}

/** A fresh nonce from `GET /rtc/nonce` beside the signaling URL (ws[s]://host/rtc). */
export async function fetchNonce(url) {
  const http = new URL(url.replace(/^ws/, "http"));
  http.pathname = `${http.pathname.replace(/\/$/, "")}/nonce`;
  const response = await fetch(http, { cache: "no-store" });
  if (!response.ok) throw new Error(`nonce: HTTP ${response.status}`);
  const { nonce } = await response.json();
  return nonce;
}

/** The proof of possession (compact JWS, ES256) for `credential` over `nonce`. */
export async function makeProof(keyPair, { nonce, credential, client = CLIENT_KIND }) {
  const header = { typ: PROOF_TYPE, alg: "ES256", jwk: await publicJwk(keyPair.publicKey) };
  const ath = b64url(await crypto.subtle.digest("SHA-256", utf8(credential)));
  const payload = { nonce, ath, client };
  const signed = `${b64url(utf8(JSON.stringify(header)))}.${b64url(utf8(JSON.stringify(payload)))}`;
  // WebCrypto's ECDSA signature is r || s (64 bytes), what JWS ES256 wants.
  const signature = await crypto.subtle.sign(SIGNATURE, keyPair.privateKey, utf8(signed));
  return `${signed}.${b64url(signature)}`;
}

/** What `Room` asks for (`proof(credential)`) with this page's device key. */
export class KeyBinding {
  constructor(keyPair, jkt, url) {
    this.keyPair = keyPair;
    this.jkt = jkt;
    this.url = url;
  }

  /** The device key of this origin; `url` the signaling endpoint (default: this host's /rtc). */
  static async forPage(url = null) {
    const pair = await deviceKey();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const endpoint = url ?? `${scheme}//${location.host}/rtc`;
    return new KeyBinding(pair, await thumbprint(pair.publicKey), endpoint);
  }

  async proof(credential) {
    const nonce = await fetchNonce(this.url);
    return makeProof(this.keyPair, { nonce, credential });
  }
}

/** Whether a token names a bound key (`cnf.jkt`): read, not verified (the server verifies). */
export function isBoundToken(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return Boolean(JSON.parse(atob(payload))?.cnf?.jkt);
  } catch {
    return false;
  }
}
