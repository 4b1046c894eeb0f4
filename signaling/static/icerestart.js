// icerestart.js: when keyroom.js restarts ICE, and when it gives up (docs/protocol.md 2.7).
//
// A connection that goes "disconnected" or "failed" (the network changed, consent checks went
// unanswered) is restarted at once; restarts are at least RETRY_MS apart while it stays lost.
// A connection still not "connected" GIVE_UP_MS after it was lost ends the session
// (`connection_failed`), as a failed connection did before restarts existed.

export const RETRY_MS = 4000;
export const GIVE_UP_MS = 25000;
// A restart first checks the signaling socket: no pong within this, and it is replaced (resume).
export const SIGNALING_CHECK_MS = 2500;

/** Whether `call()` resolves within `ms` milliseconds. */
export function answersWithin(call, ms) {
  return Promise.race([
    call().then(
      () => true,
      () => false,
    ),
    new Promise((resolve) => setTimeout(() => resolve(false), ms)),
  ]);
}

export class IceRestarts {
  constructor(restart, giveUp) {
    this._restart = restart;
    this._giveUp = giveUp;
    this._lastRestart = 0;
    this._lost = new Map(); // peer connection -> its give-up timer
  }

  /** `pc` lost its path (its state is "disconnected" or "failed"). */
  lost(pc) {
    const now = Date.now();
    if (now - this._lastRestart >= RETRY_MS) {
      this._lastRestart = now;
      Promise.resolve(this._restart()).catch((error) => console.warn("keyroom: ICE restart", error));
    }
    if (!this._lost.has(pc)) {
      this._lost.set(pc, setTimeout(() => this._check(pc), GIVE_UP_MS));
      pc.addEventListener("connectionstatechange", () => this._recovered(pc));
    } else if (pc.connectionState === "failed") {
      // Still failed after a restart: try again once RETRY_MS has passed.
      setTimeout(() => this._recovered(pc), RETRY_MS);
    }
  }

  _recovered(pc) {
    if (pc.connectionState === "connected" && this._lost.has(pc)) {
      clearTimeout(this._lost.get(pc));
      this._lost.delete(pc);
    } else if (pc.connectionState === "failed" && Date.now() - this._lastRestart >= RETRY_MS) {
      this.lost(pc);
    }
  }

  _check(pc) {
    this._lost.delete(pc);
    if (pc.connectionState !== "connected") this._giveUp();
  }
}
