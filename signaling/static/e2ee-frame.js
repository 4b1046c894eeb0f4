// End-to-end encrypted media frames: the format of docs/recording.md, shared by the page's
// worker (e2ee-worker.js) and its main-thread fallback (e2ee.js), and by the Python client
// (signaling/client/e2ee.py).
//
//   encrypted = clear header || AES-GCM(key, iv, rest, aad = clear header) || iv (12) || 12 || index
//
// The clear header (VP8 keyframe 10 bytes, delta 3, Opus 1) lets the SFU see keyframes.

const IV_BYTES = 12;
const TRAILER_BYTES = IV_BYTES + 2;
const TAG_BYTES = 16;
const GRACE_MS = 5000; // an older key index still decrypts this long after a newer one appeared
const text = new TextEncoder();

export async function baseKeyFromPassphrase(passphrase, room) {
  const material = await crypto.subtle.importKey("raw", text.encode(passphrase), "PBKDF2", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: text.encode(`keyroom e2ee/${room}`), iterations: 100000 },
    material,
    256,
  );
  return new Uint8Array(bits);
}

async function hkdf(raw, salt, info) {
  const key = await crypto.subtle.importKey("raw", raw, "HKDF", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt, info: text.encode(info) },
    key,
    256,
  );
  return new Uint8Array(bits);
}

function clearBytes(kind, data) {
  if (kind === "audio") return 1;
  return data.length > 0 && (data[0] & 0x01) === 0 ? 10 : 3;
}

/** Per-participant AES-GCM keys from the room's base key; index n = the key ratcheted n times. */
export class FrameKeys {
  constructor(base) {
    this.base = base;
    this.keys = new Map(); // `${identity}/${index}` -> Promise<CryptoKey>
    this.newest = new Map(); // identity -> {index, since}
  }

  key(identity, index) {
    const name = `${identity}/${index}`;
    if (!this.keys.has(name)) this.keys.set(name, this._derive(identity, index));
    return this.keys.get(name);
  }

  async _derive(identity, index) {
    let raw = await hkdf(this.base, text.encode(identity), "keyroom e2ee frame key");
    for (let i = 0; i < index; i++) raw = await hkdf(raw, new Uint8Array(0), "keyroom e2ee ratchet");
    return crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
  }

  /** Whether frames under `index` are still accepted from `identity` (old keys expire). */
  accepts(identity, index, now) {
    const newest = this.newest.get(identity);
    if (!newest || index > newest.index) {
      this.newest.set(identity, { index, since: now });
      return true;
    }
    return index === newest.index || now - newest.since < GRACE_MS;
  }
}

export async function encryptFrame(keys, identity, index, kind, data) {
  const clear = Math.min(clearBytes(kind, data), data.length);
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const header = data.subarray(0, clear);
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: header },
      await keys.key(identity, index),
      data.subarray(clear),
    ),
  );
  const out = new Uint8Array(clear + sealed.length + TRAILER_BYTES);
  out.set(header, 0);
  out.set(sealed, clear);
  out.set(iv, clear + sealed.length);
  out[out.length - 2] = IV_BYTES;
  out[out.length - 1] = index & 0xff;
  return out;
}

/** The plaintext frame, or null when it does not decrypt (wrong key, clear, damaged). */
export async function decryptFrame(keys, identity, kind, data, now) {
  if (data.length < TRAILER_BYTES + TAG_BYTES || data[data.length - 2] !== IV_BYTES) return null;
  const index = data[data.length - 1];
  if (!keys.accepts(identity, index, now)) return null;
  const body = data.subarray(0, data.length - TRAILER_BYTES);
  const iv = data.subarray(data.length - TRAILER_BYTES, data.length - 2);
  const clear = Math.min(clearBytes(kind, body), body.length - TAG_BYTES);
  try {
    const plain = new Uint8Array(
      await crypto.subtle.decrypt(
        { name: "AES-GCM", iv, additionalData: body.subarray(0, clear) },
        await keys.key(identity, index),
        body.subarray(clear),
      ),
    );
    const out = new Uint8Array(clear + plain.length);
    out.set(body.subarray(0, clear), 0);
    out.set(plain, clear);
    return out;
  } catch {
    return null;
  }
}

/**
 * The TransformStream of one sender or receiver. `state` is shared with the owner:
 * {keys, identity (of the frames' author), index (own sending index), failures}.
 */
export function frameTransform(role, kind, state) {
  return new TransformStream({
    async transform(frame, controller) {
      if (!state.keys || !state.identity) return; // nothing leaves or plays before a key
      const data = new Uint8Array(frame.data);
      if (data.length === 0) return;
      if (role === "send") {
        frame.data = (await encryptFrame(state.keys, state.identity, state.index, kind, data)).buffer;
        controller.enqueue(frame);
        return;
      }
      const plain = await decryptFrame(state.keys, state.identity, kind, data, Date.now());
      if (plain === null) {
        state.failures += 1;
        return;
      }
      frame.data = plain.buffer;
      controller.enqueue(frame);
    },
  });
}
