// End-to-end encryption for keyroom.js (docs/recording.md): every published frame is encrypted
// and every received one decrypted in the browser; the key never reaches the server.
//
//   const e2ee = await E2EE.fromPassphrase("…", roomName);   // or E2EE.fromKey(32 bytes)
//   new Room({ url, token, e2ee });
//
// RTCRtpScriptTransform (in a worker) where the browser has it, else the encoded streams of
// `createEncodedStreams()` on the main thread (the peer connections then need
// `encodedInsertableStreams: true`, which keyroom.js asks for through `peerConnectionConfig()`).
import { FrameKeys, baseKeyFromPassphrase, frameTransform } from "/static/e2ee-frame.js";

const scriptTransform = typeof RTCRtpScriptTransform !== "undefined";

export class E2EE {
  constructor(base) {
    if (!(base instanceof Uint8Array) || base.length !== 32) {
      throw new Error("an E2EE key is 32 bytes");
    }
    this.base = base;
    this.keys = new FrameKeys(base);
    this.index = 0; // own key index: moves on when someone leaves
    this._states = []; // main-thread fallback states
    this._nextId = 1;
    this._worker = null;
    this._receivers = new WeakMap(); // RTCRtpReceiver -> identity setter
    if (scriptTransform) {
      this._worker = new Worker("/static/e2ee-worker.js", { type: "module", name: "keyroom-e2ee" });
      this._worker.postMessage({ type: "key", base });
    }
  }

  static async fromPassphrase(passphrase, room) {
    return new E2EE(await baseKeyFromPassphrase(passphrase, room));
  }

  static fromKey(bytes) {
    return new E2EE(new Uint8Array(bytes));
  }

  /** What keyroom.js adds to its RTCPeerConnection configuration. */
  peerConnectionConfig() {
    return scriptTransform ? {} : { encodedInsertableStreams: true };
  }

  /** Encrypt what `sender` sends, as `identity` (the local participant). */
  attachSender(sender, identity, kind) {
    this._attach(sender, { role: "send", kind, identity, index: this.index });
  }

  /** Decrypt what `receiver` receives; `identity` may come later through the returned setter. */
  attachReceiver(receiver, kind) {
    // A recycled section's receiver gets a new track, not a second transform.
    let setter = this._receivers.get(receiver);
    if (!setter) {
      const id = this._attach(receiver, { role: "receive", kind, identity: null });
      setter = (identity) => this._setIdentity(id, identity);
      this._receivers.set(receiver, setter);
    }
    return setter;
  }

  _attach(endpoint, options) {
    const id = this._nextId++;
    if (this._worker) {
      endpoint.transform = new RTCRtpScriptTransform(this._worker, { ...options, id });
      return id;
    }
    const { identity, role } = options;
    const state = { keys: this.keys, identity, index: this.index, failures: 0, role };
    this._states[id] = state;
    const { readable, writable } = endpoint.createEncodedStreams();
    readable.pipeThrough(frameTransform(options.role, options.kind, state)).pipeTo(writable);
    return id;
  }

  _setIdentity(id, identity) {
    if (this._worker) this._worker.postMessage({ type: "identity", id, identity });
    else if (this._states[id]) this._states[id].identity = identity;
  }

  /** Someone left: move the own sending key one ratchet step on (receivers follow the index). */
  rekey() {
    this.index = (this.index + 1) & 0xff;
    if (this._worker) this._worker.postMessage({ type: "index", index: this.index });
    for (const state of this._states) if (state?.role === "send") state.index = this.index;
  }

  /** Frames that did not decrypt (wrong key, clear, damaged), for diagnostics and tests. */
  async failures() {
    if (!this._worker) return this._states.reduce((n, s) => n + (s?.failures ?? 0), 0);
    return new Promise((resolve) => {
      const listener = (event) => {
        if (event.data.type !== "failures") return;
        this._worker.removeEventListener("message", listener);
        resolve(event.data.failures);
      };
      this._worker.addEventListener("message", listener);
      this._worker.postMessage({ type: "failures" });
    });
  }

  close() {
    this._worker?.terminate();
  }
}
