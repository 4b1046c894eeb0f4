// keyroom.js: the browser side of the keyroom wire contract (docs/protocol.md section 2).
//
// An ES module with no dependencies (beyond its sibling simulcast.js) and no build step. One
// `Room` is one participant:
//
//   import { Room } from "/static/keyroom.js";
//   const room = new Room({ url: "ws://host:7880/rtc", token });
//   room.addEventListener("track", (e) => attach(e.detail));      // a RemoteTrack
//   const joined = await room.connect();                           // throws KeyroomError
//   const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
//   for (const track of stream.getTracks()) await room.publish(track);
//   await room.leave();
//
// Events (CustomEvent, payload in `detail`):
//   "state"        {state}: "connecting" | "connected" | "reconnecting" | "disconnected"
//   "mediastate"   {publisher, subscriber}: the two RTCPeerConnection connection states
//   "participants" {participants}: the list of others changed (joined, left, updated, tracks)
//   "track"        RemoteTrack: a remote track started arriving
//   "trackended"   RemoteTrack: the server stopped sending it (unpublished, unsubscribed)
//   "data"         {from, from_sid, topic, payload, channel}
//   "server"       the raw server event frame, for every event of PROTOCOL 2.6
//   "disconnected" {reason, closeCode, error}: the session is over for good
// See docs/browser.md for the whole API.

import { applyDynacast, simulcastEncodings } from "./simulcast.js";

export const PROTOCOL_VERSION = 1;
const CLIENT_INFO = { sdk: "js", version: "0.1" };

// Label -> RTCDataChannelInit (PROTOCOL 2.5).
const DATA_CHANNELS = {
  _reliable: { ordered: true },
  _lossy: { ordered: false, maxRetransmits: 0 },
};

const DEFAULT_SOURCE = { video: "camera", audio: "microphone" };
const REQUEST_TIMEOUT_MS = 10000;
const MAX_REDIRECTS = 3; // one is normal in a cluster; more is a misconfiguration
// The server keeps a dropped participant for its resume window (30 s by default).
const RESUME_DEADLINE_MS = 25000;
const RESUME_BACKOFF_MS = [0, 250, 500, 1000, 2000, 4000];
// Gathering on a host without STUN/TURN finishes in milliseconds; a TURN server that does not
// answer must not hold an offer back for long: what was gathered by then is sent.
const GATHER_TIMEOUT_MS = 3000;

/** An `error` from the server, or a refused join / a lost session. */
export class KeyroomError extends Error {
  constructor(code, message = "", closeCode = null) {
    super(message ? `${code}: ${message}` : code);
    this.name = "KeyroomError";
    this.code = code;
    this.serverMessage = message;
    this.closeCode = closeCode;
  }
}

// What a person should read for each error code or server leave reason.
const HUMAN_TEXT = {
  e2ee_required:
    "This room is end-to-end encrypted: open the link with the room's passphrase to share your camera or microphone.",
  unauthorized: "This link has expired or is not valid. Ask for a new one.",
  token_expired: "Your access has expired. Ask for a new link to rejoin.",
  room_full: "The room is full. Try again later.",
  not_found: "This room does not exist.",
  conflict: "You are already in this room in another window or device.",
  duplicate_identity: "You joined this room from another window or device.",
  server_full: "The server is busy. Try again in a moment.",
  rate_limited: "Too many attempts. Wait a moment and try again.",
  forbidden: "You are not allowed to do that in this room.",
  limit_exceeded: "The room's limit for that has been reached.",
  removed: "You were removed from the room.",
  revoked: "You were removed from the room.",
  room_closed: "The room has been closed.",
  server_shutdown: "The server is restarting. Rejoin in a moment.",
  connection_failed: "The media connection failed. Check your network and rejoin.",
  connection_lost: "The connection to the server was lost.",
  media_rejected: "The server did not accept this media.",
};

/** A sentence a person can act on, for a KeyroomError, an error code or a leave reason. */
export function humanMessage(errorOrCode) {
  const code = typeof errorOrCode === "string" ? errorOrCode : errorOrCode?.code;
  if (code && HUMAN_TEXT[code]) return HUMAN_TEXT[code];
  if (errorOrCode instanceof Error && errorOrCode.message) return errorOrCode.message;
  return "Something went wrong. Try again.";
}

/**
 * The media sections of an SDP: [{mid, kind, direction, streamId, trackId}], msid from
 * `a=msid:` (or an `a=ssrc:<n> msid:` line). In a keyroom subscriber offer the stream id is the
 * publisher's participant sid and the track id the track sid (PROTOCOL 2.4).
 */
export function parseSections(sdp) {
  const sections = [];
  for (const block of sdp.split(/\r?\nm=/).slice(1)) {
    const lines = block.split(/\r?\n/);
    const attr = (prefix) => lines.find((l) => l.startsWith(prefix))?.slice(prefix.length).trim();
    const port = Number(lines[0].split(" ")[1]);
    const direction =
      ["sendrecv", "sendonly", "recvonly", "inactive"].find((d) => lines.includes(`a=${d}`)) ??
      "sendrecv";
    let msid = attr("a=msid:");
    if (!msid) {
      const ssrcMsid = lines.find((l) => /^a=ssrc:\d+ msid:/.test(l));
      msid = ssrcMsid?.split(" msid:")[1];
    }
    const [streamId = null, trackId = null] = msid ? msid.split(" ") : [];
    sections.push({
      mid: attr("a=mid:") ?? null,
      kind: lines[0].split(" ")[0],
      direction: port === 0 ? "inactive" : direction,
      streamId,
      trackId,
    });
  }
  return sections;
}

function waitForGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * A track received on the subscriber PC. `participant` is the publisher's ParticipantInfo and
 * `info` the TrackInfo, as far as the room state knows them; `stream` holds the track alone,
 * ready for a media element's srcObject.
 */
export class RemoteTrack {
  constructor(track, mid, participantSid, trackSid, receiver) {
    this.track = track;
    this.mid = mid;
    this.participantSid = participantSid;
    this.trackSid = trackSid;
    this.receiver = receiver;
    this.kind = track.kind;
    this.stream = new MediaStream([track]);
    this.participant = null;
    this.info = null;
  }
}

/** A track this participant publishes: the server's TrackInfo and the sending transceiver. */
export class LocalTrack {
  constructor(track, info, transceiver) {
    this.track = track;
    this.info = info;
    this.transceiver = transceiver;
  }

  get sid() {
    return this.info.sid;
  }
}

export class Room extends EventTarget {
  /**
   * `url`: the signaling endpoint (ws[s]://host/rtc); `token`: the access token (JWT).
   * `autoSubscribe` (default true): receive every track the token may receive.
   * `videoCodec`: e.g. "video/H264" to offer that codec first for published video; the
   *   server keeps the first codec of the offer that the room allows (docs/protocol.md).
   * `keyBinding`: for a token bound to this device's key (keybinding.js), whatever proves
   *   possession: `await keyBinding.proof(credential)` (docs/protocol.md 1.5).
   */
  constructor({
    url, token, autoSubscribe = true, videoCodec = null, keyBinding = null, e2ee = null,
  }) {
    super();
    this._keyBinding = keyBinding;
    this.e2ee = e2ee; // an E2EE of e2ee.js: frames encrypted in this page only
    this.url = url;
    this.autoSubscribe = autoSubscribe;
    this.videoCodec = videoCodec;
    // Kept only in this object: it is never logged or put in an event.
    this._token = token;

    this.state = "disconnected";
    this.joined = null; // the `joined` payload of the last join or resume
    this.room = null; // RoomInfo
    this.participant = null; // own ParticipantInfo
    this.permissions = {}; // own permissions (camelCase, PROTOCOL section 4)
    this.participants = new Map(); // sid -> ParticipantInfo of the others, tracks included
    this.remoteTracks = new Map(); // mid -> RemoteTrack
    this.localTracks = new Map(); // track sid -> LocalTrack
    this.publisher = null; // RTCPeerConnection the client offers on
    this.subscriber = null; // RTCPeerConnection the server offers on
    this.ws = null; // the current WebSocket: closing it by hand exercises resume

    this._nextReq = 1;
    this._pending = new Map(); // req -> {resolve, reject, timer, ws}
    this._closeCodes = new WeakMap(); // WebSocket -> Promise of its close code
    this._resumeToken = null;
    this._leaving = false;
    this._ended = false;
    this._serverLeaveReason = null;
    // Negotiations on each PC run one at a time, in call order.
    this._publisherChain = Promise.resolve();
    this._subscriberChain = Promise.resolve();
    this._subscriberSections = new Map(); // mid -> section of the latest subscriber offer
    this._publisherChannels = null; // label -> RTCDataChannel, created on first sendData
    this._dataRefused = false;
  }

  // ------------------------------------------------------------------ session

  /** Open the socket and join. Resolves with the `joined` payload; rejects with KeyroomError. */
  async connect() {
    this._setState("connecting");
    let ws = null;
    try {
      ws = await this._openSocket();
      const join = {
        type: "join",
        token: this._token,
        protocol: PROTOCOL_VERSION,
        auto_subscribe: this.autoSubscribe,
        client: CLIENT_INFO,
        ...(await this._proofFor(this._token)),
      };
      let joined = await this._requestOn(ws, join);
      for (let hops = 0; joined.type === "redirect"; hops++) {
        // The room is on another node of the cluster (protocol.md section 7): join there.
        if (hops >= MAX_REDIRECTS || !/^wss?:\/\//.test(joined.url)) {
          throw new KeyroomError("redirect_loop", "bad or repeated redirect");
        }
        ws.close(1000);
        this.url = joined.url;
        ws = await this._openSocket();
        Object.assign(join, await this._proofFor(this._token)); // nonces are per node
        joined = await this._requestOn(ws, join);
      }
      this._adoptSocket(ws);
      this._applyJoined(joined);
      this._createPeerConnections(joined);
      this._setState("connected");
      return joined;
    } catch (error) {
      const refusal = ws ? await this._refusalOf(ws, error) : error;
      this._finish(refusal.code, refusal);
      throw refusal;
    }
  }

  /** `{proof}` for `credential` when this room has a key binding, else nothing. */
  async _proofFor(credential) {
    return this._keyBinding ? { proof: await this._keyBinding.proof(credential) } : {};
  }

  /** Leave the room cleanly (others see reason `left`) and release everything. */
  async leave() {
    if (this._ended) return;
    this._leaving = true;
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "leave" }));
      this.ws.close(1000);
    }
    this._finish("left", null);
  }

  _openSocket() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      // The close code of every socket, for the refusal that follows an `error` frame.
      this._closeCodes.set(
        ws,
        new Promise((closed) => {
          ws.addEventListener("close", (event) => {
            this._rejectPending(ws, new KeyroomError("connection_lost", "", event.code));
            closed(event.code);
          });
        }),
      );
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new KeyroomError("connection_lost", "cannot reach the server"));
      // Frames that arrive before the socket is adopted answer the join/resume request.
      ws.onmessage = (message) => this._onFrame(message.data);
    });
  }

  _adoptSocket(ws) {
    this.ws = ws;
    ws.onerror = null;
    ws.onclose = (event) => this._onSocketClose(ws, event);
  }

  async _refusalOf(ws, error) {
    // A refused join is an `error` frame followed by a close whose code says more (4401...).
    if (!(error instanceof KeyroomError) || error.code === "timeout") ws.close();
    const closeCode = await Promise.race([
      this._closeCodes.get(ws),
      new Promise((resolve) => setTimeout(() => resolve(null), 2000)),
    ]);
    if (error instanceof KeyroomError) {
      error.closeCode = error.closeCode ?? closeCode;
      return error;
    }
    return new KeyroomError("connection_lost", String(error?.message ?? error), closeCode);
  }

  _onSocketClose(ws, event) {
    if (ws !== this.ws) return;
    if (this._leaving || this._ended) return;
    if (this._serverLeaveReason !== null || event.code >= 4000) {
      // The server ended the session on purpose: resuming would be refused.
      const reason = this._serverLeaveReason ?? "connection_lost";
      this._finish(reason, new KeyroomError(reason, "", event.code));
      return;
    }
    this._resume();
  }

  async _resume() {
    this._setState("reconnecting");
    const deadline = Date.now() + RESUME_DEADLINE_MS;
    for (let attempt = 0; Date.now() < deadline && !this._ended; attempt++) {
      const delay = RESUME_BACKOFF_MS[Math.min(attempt, RESUME_BACKOFF_MS.length - 1)];
      await new Promise((resolve) => setTimeout(resolve, delay));
      let ws = null;
      try {
        ws = await this._openSocket();
        const joined = await this._requestOn(ws, {
          type: "resume",
          resume_token: this._resumeToken,
          ...(await this._proofFor(this._resumeToken)),
        });
        if (this._ended) return ws.close();
        this._adoptSocket(ws);
        this._applyJoined(joined);
        this._setState("connected");
        return;
      } catch (error) {
        if (error instanceof KeyroomError && error.code === "unauthorized") {
          // The resume token is spent or the window has passed: this session is gone.
          this._finish("connection_lost", new KeyroomError("connection_lost"));
          return;
        }
        ws?.close();
      }
    }
    if (!this._ended) this._finish("connection_lost", new KeyroomError("connection_lost"));
  }

  _finish(reason, error) {
    if (this._ended) return;
    this._ended = true;
    if (this.ws) this._rejectPending(this.ws, error ?? new KeyroomError(reason));
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close();
    for (const local of this.localTracks.values()) local.track.stop();
    this.publisher?.close();
    this.subscriber?.close();
    this._setState("disconnected");
    this._emit("disconnected", { reason, closeCode: error?.closeCode ?? null, error });
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // ------------------------------------------------------------------ requests

  /** Send `frame` with a fresh `req`; resolves with the direct reply, rejects on `error`. */
  request(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new KeyroomError("connection_lost", "not connected"));
    }
    return this._requestOn(this.ws, frame);
  }

  _requestOn(ws, frame) {
    const req = this._nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(req);
        reject(new KeyroomError("timeout", `no reply to ${frame.type}`));
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(req, { resolve, reject, timer, ws });
      ws.send(JSON.stringify({ ...frame, req }));
    });
  }

  _rejectPending(ws, error) {
    for (const [req, pending] of this._pending) {
      if (pending.ws !== ws) continue;
      this._pending.delete(req);
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }

  _send(frame) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  // ------------------------------------------------------------------ incoming frames

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      console.warn("keyroom: undecodable frame from the server");
      return;
    }
    const pending = Number.isInteger(frame.req) ? this._pending.get(frame.req) : undefined;
    if (pending) {
      this._pending.delete(frame.req);
      clearTimeout(pending.timer);
      if (frame.type === "error") pending.reject(new KeyroomError(frame.code, frame.message));
      else pending.resolve(frame);
    } else if (frame.type === "offer" && frame.target === "subscriber") {
      this._subscriberChain = this._subscriberChain
        .then(() => this._answerSubscriber(frame.sdp))
        .catch((error) => this._reportError(error));
    } else if (frame.type === "trickle") {
      const pc = frame.target === "publisher" ? this.publisher : this.subscriber;
      pc?.addIceCandidate(frame.candidate).catch(() => {});
    } else if (frame.type === "leave") {
      this._serverLeaveReason = frame.reason;
    } else if (frame.type === "error") {
      // An error with no request waiting, e.g. the refusal of a join before it was adopted.
      this._reportError(new KeyroomError(frame.code, frame.message));
    } else {
      this._applyEvent(frame);
      this._emit("server", frame);
    }
  }

  _reportError(error) {
    console.warn("keyroom:", error.message);
    this._emit("error", { error, message: humanMessage(error) });
  }

  _applyJoined(joined) {
    this.joined = joined;
    this.room = joined.room;
    this.participant = joined.participant;
    this.permissions = joined.participant.permissions ?? {};
    this._resumeToken = joined.resume_token;
    this.participants = new Map(joined.participants.map((p) => [p.sid, p]));
    this._resolveRemoteTracks();
    this._emit("participants", { participants: [...this.participants.values()] });
  }

  _applyEvent(frame) {
    const ownSid = this.participant?.sid;
    switch (frame.type) {
      case "participant_joined":
      case "participant_updated": {
        const info = frame.participant;
        if (info.sid === ownSid) {
          this.participant = info;
          this.permissions = info.permissions ?? this.permissions;
          return;
        }
        this.participants.set(info.sid, info);
        break;
      }
      case "participant_left":
        this.participants.delete(frame.sid);
        this.e2ee?.rekey(); // who left cannot read what is sent from now on (with a new key)
        break;
      case "permissions_changed":
        this.permissions = frame.permissions ?? {};
        break;
      case "room_updated":
        this.room = frame.room;
        return;
      case "track_published":
      case "track_unpublished":
      case "track_muted":
        if (!this._applyTrackEvent(frame)) return;
        break;
      case "dynacast":
        applyDynacast(this.localTracks, frame).catch((error) => this._reportError(error));
        return;
      default:
        return;
    }
    this._resolveRemoteTracks();
    this._emit("participants", { participants: [...this.participants.values()] });
  }

  _applyTrackEvent(frame) {
    const owner = this.participants.get(frame.participant_sid);
    if (!owner) return false;
    const tracks = (owner.tracks ??= []);
    if (frame.type === "track_published") {
      owner.tracks = tracks.filter((t) => t.sid !== frame.track.sid).concat([frame.track]);
    } else if (frame.type === "track_unpublished") {
      owner.tracks = tracks.filter((t) => t.sid !== frame.track_sid);
    } else {
      const track = tracks.find((t) => t.sid === frame.track_sid);
      if (track) track.muted = Boolean(frame.muted);
    }
    return true;
  }

  _resolveRemoteTracks() {
    for (const remote of this.remoteTracks.values()) {
      const owner = this.participants.get(remote.participantSid) ?? null;
      remote.participant = owner;
      remote.info = owner?.tracks?.find((t) => t.sid === remote.trackSid) ?? remote.info;
      if (owner) remote.e2eeIdentity?.(owner.identity);
    }
  }

  // ------------------------------------------------------------------ peer connections

  _createPeerConnections(joined) {
    const configuration = {
      bundlePolicy: "max-bundle",
      iceServers: joined.ice_servers ?? [],
      iceTransportPolicy: joined.ice_transport_policy === "relay" ? "relay" : "all",
      ...this.e2ee?.peerConnectionConfig(),
    };
    this.publisher = new RTCPeerConnection(configuration);
    this.subscriber = new RTCPeerConnection(configuration);
    this.subscriber.ontrack = (event) => this._onRemoteTrack(event);
    this.subscriber.ondatachannel = (event) => this._onSubscriberChannel(event.channel);
    for (const pc of [this.publisher, this.subscriber]) {
      pc.onconnectionstatechange = () => {
        this._emit("mediastate", {
          publisher: this.publisher.connectionState,
          subscriber: this.subscriber.connectionState,
        });
        if (pc.connectionState === "failed") {
          this._finish("connection_failed", new KeyroomError("connection_failed"));
        }
      };
    }
  }

  async _answerSubscriber(sdp) {
    const pc = this.subscriber;
    if (!pc || this._ended) return;
    const sections = parseSections(sdp);
    // Known before setRemoteDescription, which fires "track" events that look their mid up.
    this._subscriberSections = new Map(sections.map((s) => [s.mid, s]));
    await pc.setRemoteDescription({ type: "offer", sdp });
    for (const section of sections) {
      const remote = this.remoteTracks.get(section.mid);
      // A section that stops sending ends its track. It may later carry another track (a new
      // msid, PROTOCOL 2.4): Chromium then fires "track" again, a new RemoteTrack on that mid.
      if (remote && (section.direction === "inactive" || section.direction === "recvonly")) {
        this.remoteTracks.delete(section.mid);
        this._emit("trackended", remote);
      }
    }
    await pc.setLocalDescription();
    await waitForGathering(pc);
    this._send({ type: "answer", target: "subscriber", sdp: pc.localDescription.sdp });
  }

  _onRemoteTrack(event) {
    const mid = event.transceiver.mid;
    const section = this._subscriberSections.get(mid);
    if (!section?.streamId) {
      console.warn("keyroom: remote track without an msid in its section", mid);
      return;
    }
    const remote = new RemoteTrack(
      event.track,
      mid,
      section.streamId,
      section.trackId,
      event.receiver,
    );
    remote.e2eeIdentity = this.e2ee?.attachReceiver(event.receiver, event.track.kind);
    this.remoteTracks.set(mid, remote);
    this._resolveRemoteTracks();
    this._emit("track", remote);
  }

  _onSubscriberChannel(channel) {
    channel.onmessage = (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        console.warn("keyroom: undecodable data on", channel.label);
        return;
      }
      this._emit("data", { ...data, channel: channel.label });
    };
  }

  /** Run `task` after every earlier publisher negotiation, and before any later one. */
  _onPublisher(task) {
    const run = this._publisherChain.then(task);
    this._publisherChain = run.catch(() => {});
    return run;
  }

  /** Offer the publisher PC's state, apply the answer; returns the answer's sections. */
  async _negotiatePublisher() {
    const pc = this.publisher;
    await pc.setLocalDescription();
    await waitForGathering(pc);
    const reply = await this.request({
      type: "offer",
      target: "publisher",
      sdp: pc.localDescription.sdp,
    });
    await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    return parseSections(reply.sdp);
  }

  // ------------------------------------------------------------------ publishing

  /**
   * Publish a MediaStreamTrack: `add_track` (cid = track.id), then a publisher offer.
   * `source`: "camera" | "microphone" | "screen_share" | "screen_share_audio" (default by kind).
   * Resolves with the LocalTrack; rejects with KeyroomError `forbidden` (refused `add_track`)
   * or `media_rejected` (the server's answer left the section inactive).
   */
  publish(track, { source = DEFAULT_SOURCE[track.kind], name = "" } = {}) {
    return this._onPublisher(async () => {
      if (this.room?.e2ee_required && !this.e2ee) {
        throw new KeyroomError("e2ee_required", "this room takes end-to-end encrypted media only");
      }
      const reply = await this.request({
        encryption: this.e2ee ? "e2ee" : "none",
        type: "add_track",
        cid: track.id,
        kind: track.kind,
        source,
        name,
        muted: !track.enabled,
      });
      return this._sendTrack(track, reply.track);
    });
  }

  /**
   * Put `track` on the publisher PC and negotiate, without `add_track`. `publish()` uses it
   * after the grant; on its own it is how a test shows that the server refuses media that no
   * `add_track` granted (the section is answered inactive and its packets are dropped).
   */
  async _sendTrack(track, info) {
    const transceiver = this.publisher.addTransceiver(track, {
      direction: "sendonly",
      streams: [new MediaStream([track])],
      sendEncodings: simulcastEncodings(this.room, track, info?.source),
    });
    this.e2ee?.attachSender(transceiver.sender, this.participant?.identity, track.kind);
    if (track.kind === "video" && this.videoCodec) this._preferCodec(transceiver, this.videoCodec);
    const sections = await this._negotiatePublisher();
    const section = sections.find((s) => s.mid === transceiver.mid);
    if (!section || section.direction === "inactive") {
      transceiver.direction = "inactive";
      throw new KeyroomError("media_rejected", `the server did not accept ${track.kind}`);
    }
    const local = new LocalTrack(track, info, transceiver);
    if (info?.sid) this.localTracks.set(info.sid, local);
    return local;
  }

  _preferCodec(transceiver, mimeType) {
    const codecs = RTCRtpReceiver.getCapabilities("video").codecs;
    const wanted = mimeType.toLowerCase();
    const preferred = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
    if (preferred.length === 0) throw new KeyroomError("unsupported", `${mimeType} is unavailable`);
    transceiver.setCodecPreferences([
      ...preferred,
      ...codecs.filter((c) => c.mimeType.toLowerCase() !== wanted),
    ]);
  }

  /** Stop publishing a track: `unpublish`, then its section goes inactive. */
  unpublish(trackSid) {
    const local = this.localTracks.get(trackSid);
    this.localTracks.delete(trackSid);
    return this._onPublisher(async () => {
      await this.request({ type: "unpublish", track_sid: trackSid });
      if (!local) return;
      local.track.stop();
      await local.transceiver.sender.replaceTrack(null);
      local.transceiver.direction = "inactive";
      await this._negotiatePublisher();
    });
  }

  /**
   * Mute or unmute a published track: the browser stops capturing into it (black/silence) and
   * the server stops forwarding it and tells the others (`track_muted`).
   */
  async mute(trackSid, muted) {
    const local = this.localTracks.get(trackSid);
    if (!local) throw new KeyroomError("not_found", "no such local track");
    local.track.enabled = !muted;
    await this.request({ type: "mute", track_sid: trackSid, muted });
    local.info = { ...local.info, muted };
  }

  /** Cap the simulcast layer received of a track: "low", "medium" or "high". */
  setQuality(trackSid, quality) {
    return this.request({ type: "set_quality", track_sid: trackSid, quality });
  }

  /** (Un)subscribe explicitly; the server follows with a subscriber offer. */
  subscribe(trackSids, subscribe = true) {
    return this.request({ type: "subscribe", track_sids: trackSids, subscribe });
  }

  /** Extend the session with a new token for the same identity and room (PROTOCOL 2.7). */
  async refresh(token) {
    await this.request({ type: "refresh", token, ...(await this._proofFor(token)) });
    this._token = token;
  }

  // ------------------------------------------------------------------ data

  /**
   * Send a data message to every other participant, or to the identities in `to`.
   * The `_reliable`/`_lossy` channels are created and negotiated on first use; rejects with
   * KeyroomError `forbidden` when the token may not publish data.
   */
  async sendData(payload, { topic = "", to = null, reliable = true } = {}) {
    const channels = await this._onPublisher(async () => {
      if (!this._publisherChannels) {
        const created = {};
        for (const [label, options] of Object.entries(DATA_CHANNELS)) {
          created[label] = this.publisher.createDataChannel(label, options);
        }
        this._publisherChannels = created;
        const sections = await this._negotiatePublisher();
        const data = sections.find((s) => s.kind === "application");
        this._dataRefused = !data || data.direction === "inactive";
      }
      return this._publisherChannels;
    });
    if (this._dataRefused) throw new KeyroomError("forbidden", "data channels were refused");
    const channel = channels[reliable ? "_reliable" : "_lossy"];
    if (channel.readyState !== "open") {
      await new Promise((resolve, reject) => {
        channel.addEventListener("open", resolve, { once: true });
        channel.addEventListener("close", () => reject(new KeyroomError("forbidden")), {
          once: true,
        });
      });
    }
    const envelope = { topic, payload };
    if (to) envelope.to = to;
    channel.send(JSON.stringify(envelope));
  }

  /** A round trip to the server, in milliseconds. */
  async ping() {
    const start = performance.now();
    await this.request({ type: "ping" });
    return performance.now() - start;
  }
}
