// The conference page served at `/`: joins with a token, shows a video grid, publishes the
// camera, microphone and screen, and explains errors in words. Everything goes through the
// Room of keyroom.js; `window.keyroom` holds it for the browser console (and the tests).
//
// Address parameters: `token` (read once, then removed from the address bar), `codec=h264`
// (offer H264 first for the video this page publishes), `publish=0` (join without turning on
// the camera and microphone), `dev` (a `--dev` server: ask the visitor's name and get a token
// of their own from /dev/token, so every tab is its own participant). `#e2ee=PASSPHRASE` in the
// fragment (never sent to the server) turns on end-to-end encryption (static/e2ee.js).

import { E2EE } from "/static/e2ee.js";
import { Room, humanMessage } from "/static/keyroom.js";
import { KeyBinding, isBoundToken } from "/static/keybinding.js";
import { qualityForHeight } from "/static/simulcast.js";

const $ = (id) => document.getElementById(id);
const SOURCE_LABEL = {
  camera: "camera",
  microphone: "mic",
  screen_share: "screen",
  screen_share_audio: "screen audio",
};

const params = new URLSearchParams(location.search);
const options = {
  videoCodec: params.get("codec")?.toLowerCase() === "h264" ? "video/H264" : null,
  autoPublish: params.get("publish") !== "0",
};

let room = null;
const local = { camera: null, microphone: null, screen_share: null }; // source -> LocalTrack
const blockedDevices = new Set(); // "camera" / "microphone" the browser refused to open

// ---------------------------------------------------------------- start

takeTokenFromAddress();
if (params.has("dev") && !room) {
  $("join-form").hidden = true;
  $("dev-form").hidden = false;
}
$("dev-form").addEventListener("submit", (event) => {
  event.preventDefault();
  joinAsDevVisitor($("dev-name").value.trim());
});
// A closed or reloaded tab leaves at once: otherwise its session is parked for the resume
// window and holds the identity (a reload would be refused as a duplicate).
addEventListener("pagehide", () => room?.leave());
$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  join(token);
});
$("mic").addEventListener("click", () => toggleDevice("microphone"));
$("camera").addEventListener("click", () => toggleDevice("camera"));
$("screen").addEventListener("click", toggleScreen);
$("leave").addEventListener("click", () => room?.leave());

function takeTokenFromAddress() {
  const token = params.get("token");
  if (!token) return;
  // The token is a credential: out of the address bar and history at once, never logged.
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  join(token);
}

async function joinAsDevVisitor(name) {
  showError(null);
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok || !body.token) {
    showError(body.error || "This server does not hand out dev tokens (is it running with --dev?)");
    return;
  }
  $("dev-form").hidden = true;
  join(body.token);
}

async function join(token) {
  showError(null);
  $("join-form").hidden = true;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // A token bound to a device key (`cnf.jkt`) is proved with this browser's key.
  const keyBinding = isBoundToken(token) ? await KeyBinding.forPage() : null;
  const e2ee = await e2eeFromAddress(token);
  const url = `${scheme}//${location.host}/rtc`;
  room = new Room({ url, token, videoCodec: options.videoCodec, keyBinding, e2ee });
  window.keyroom = room;
  room.addEventListener("state", renderConnection);
  room.addEventListener("mediastate", renderConnection);
  room.addEventListener("participants", renderParticipants);
  room.addEventListener("track", (event) => attachRemote(event.detail));
  room.addEventListener("trackended", (event) => detachRemote(event.detail));
  room.addEventListener("server", onServerEvent);
  room.addEventListener("error", (event) => showError(event.detail.message));
  room.addEventListener("disconnected", (event) => onDisconnected(event.detail, token));
  try {
    await room.connect();
  } catch {
    return; // "disconnected" has explained it
  }
  $("room-name").textContent = room.room.name;
  $("conference").hidden = false;
  $("controls").hidden = false;
  renderPermissions();
  renderParticipants();
  renderControls();
  if (options.autoPublish) await startDevices();
}

function onDisconnected({ reason, error }, token) {
  $("conference").hidden = true;
  $("controls").hidden = true;
  $("grid").replaceChildren();
  $("participants").replaceChildren();
  $("permissions").replaceChildren();
  if (reason === "left") {
    showError("You left the room.");
  } else if (reason === "unauthorized" && tokenExpired(token)) {
    showError("This link has expired. Ask for a new one.");
  } else {
    showError(humanMessage(error ?? reason));
  }
  $("join-form").hidden = false;
}

function tokenExpired(token) {
  // The server says only "unauthorized"; the token's own exp tells the person why.
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).exp * 1000 < Date.now();
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- publishing

function mayPublish(source) {
  const p = room?.permissions ?? {};
  if (p.canPublish === false || p.hidden) return false;
  return !Array.isArray(p.canPublishSources) || p.canPublishSources.includes(source);
}

async function startDevices() {
  const wanted = ["camera", "microphone"].filter(mayPublish);
  if (wanted.length === 0) return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: wanted.includes("camera") && { width: 640, height: 360 },
      audio: wanted.includes("microphone"),
    });
  } catch (error) {
    for (const source of wanted) blockedDevices.add(source);
    renderPermissions();
    showError(`Camera and microphone are blocked (${error.name}). Others can still see you join.`);
    return;
  }
  for (const track of stream.getTracks()) {
    await publishLocal(track, track.kind === "video" ? "camera" : "microphone");
  }
}

async function publishLocal(track, source) {
  try {
    local[source] = await room.publish(track, { source, name: SOURCE_LABEL[source] });
  } catch (error) {
    track.stop();
    showError(humanMessage(error));
    return;
  }
  if (track.kind === "video") renderLocalVideo();
  renderParticipants();
  renderControls();
}

async function toggleDevice(source) {
  const published = local[source];
  if (!published) {
    const kind = source === "camera" ? "video" : "audio";
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ [kind]: true });
      await publishLocal(stream.getTracks()[0], source);
    } catch (error) {
      blockedDevices.add(source);
      renderPermissions();
      showError(`The browser did not open the ${SOURCE_LABEL[source]} (${error.name}).`);
    }
    return;
  }
  try {
    await room.mute(published.sid, published.track.enabled);
  } catch (error) {
    showError(humanMessage(error));
  }
  renderLocalVideo();
  renderControls();
}

async function toggleScreen() {
  if (local.screen_share) {
    const { sid } = local.screen_share;
    local.screen_share = null;
    await room.unpublish(sid).catch((error) => showError(humanMessage(error)));
    renderParticipants();
    renderControls();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (error) {
    if (error.name !== "NotAllowedError") showError(`Screen sharing failed (${error.name}).`);
    return;
  }
  const [track] = stream.getVideoTracks();
  // The browser's own "Stop sharing" ends the track: unpublish it like the button does.
  track.addEventListener("ended", () => local.screen_share && toggleScreen());
  await publishLocal(track, "screen_share");
}

// ---------------------------------------------------------------- events

function onServerEvent(event) {
  const frame = event.detail;
  if (frame.type === "recording") $("recording").hidden = !frame.active;
  if (frame.type === "track_muted") renderTileStates();
  if (frame.type === "permissions_changed") {
    renderPermissions();
    renderControls();
  }
  if (frame.type === "token_refresh_required") {
    showError("Your access ends in a minute. Ask for a new link to stay longer.");
  }
}

/** The E2EE passphrase of the address fragment (then removed from it); keys per room. */
async function e2eeFromAddress(token) {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const passphrase = fragment.get("e2ee");
  if (!passphrase) return null;
  history.replaceState(null, "", location.pathname + location.search);
  let roomName = "";
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    roomName = JSON.parse(atob(payload)).video?.room ?? "";
  } catch {
    return null;
  }
  return E2EE.fromPassphrase(passphrase, roomName);
}

// ---------------------------------------------------------------- rendering

function showError(message) {
  $("error").textContent = message ?? "";
  $("error").hidden = !message;
}

function renderConnection() {
  const labels = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    disconnected: "Not connected",
  };
  // Signaling may be up while media is still connecting (or the other way round on resume).
  const media = room.subscriber?.connectionState;
  const badge = $("connection");
  badge.dataset.state = room.state;
  badge.textContent =
    room.state === "connected" && media && media !== "connected"
      ? "Connected · media connecting…"
      : labels[room.state];
  badge.title = `signaling: ${room.state}, media: ${media ?? "none"}`;
}

function renderPermissions() {
  const p = room.permissions;
  const items = [
    ...["camera", "microphone", "screen_share"].map((source) => ({
      label: SOURCE_LABEL[source],
      allowed: mayPublish(source),
      blocked: blockedDevices.has(source),
    })),
    { label: "watch", allowed: p.canSubscribe !== false },
    { label: "chat", allowed: (p.canPublishData ?? p.canPublish) !== false },
  ];
  $("permissions").replaceChildren(
    ...items.map(({ label, allowed, blocked }) => {
      const li = document.createElement("li");
      li.textContent = blocked ? `${label} blocked` : label;
      li.dataset.allowed = String(allowed);
      li.dataset.blocked = String(Boolean(blocked));
      li.title = allowed ? `This link may use the ${label}` : `This link may not use the ${label}`;
      return li;
    }),
  );
}

function renderControls() {
  const set = (id, source, on, off) => {
    const button = $(id);
    const published = local[source];
    button.disabled = !mayPublish(source);
    const active = Boolean(published && published.track.enabled);
    button.setAttribute("aria-pressed", String(active));
    button.textContent = active ? on : off;
  };
  set("mic", "microphone", "Mute mic", "Unmute mic");
  set("camera", "camera", "Stop camera", "Start camera");
  set("screen", "screen_share", "Stop sharing", "Share screen");
}

function tileFor(key, name) {
  let tile = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
  if (!tile) {
    tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.key = key;
    tile.dataset.video = "off";
    const video = document.createElement("video");
    video.autoplay = true;
    video.muted = true; // audio plays from its own element; a muted video may autoplay
    video.playsInline = true;
    const avatar = document.createElement("div");
    avatar.className = "avatar";
    const label = document.createElement("span");
    label.className = "name";
    tile.append(video, avatar, label);
    $("grid").append(tile);
  }
  tile.querySelector(".name").textContent = name;
  tile.querySelector(".avatar").textContent = (name.trim()[0] ?? "?").toUpperCase();
  return tile;
}

function displayName(info) {
  return info?.name || info?.identity || "Someone";
}

function renderLocalVideo() {
  const self = room.participant;
  const tile = tileFor(self.sid, `${displayName(self)} (you)`);
  const camera = local.camera;
  setTileVideo(tile, camera && camera.track.enabled ? new MediaStream([camera.track]) : null);
  tile.querySelector(".name").dataset.mic = local.microphone?.track.enabled ? "on" : "off";
  const screenKey = `${self.sid}:screen`;
  if (local.screen_share) {
    const screen = tileFor(screenKey, `${displayName(self)}'s screen (you)`);
    setTileVideo(screen, new MediaStream([local.screen_share.track]));
  } else {
    removeTile(screenKey);
  }
  layoutGrid();
}

function setTileVideo(tile, stream) {
  const video = tile.querySelector("video");
  if (video.srcObject !== stream) video.srcObject = stream;
  tile.dataset.video = stream ? "on" : "off";
}

function removeTile(key) {
  document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`)?.remove();
}

function remoteKey(remote) {
  return remote.info?.source === "screen_share"
    ? `${remote.participantSid}:screen`
    : remote.participantSid;
}

function attachRemote(remote) {
  if (remote.kind === "audio") {
    const audio = document.createElement("audio");
    audio.autoplay = true;
    audio.dataset.mid = remote.mid;
    audio.srcObject = remote.stream;
    document.body.append(audio);
    return;
  }
  const owner = displayName(remote.participant);
  const screen = remote.info?.source === "screen_share";
  const tile = tileFor(remoteKey(remote), screen ? `${owner}'s screen` : owner);
  tile.dataset.mid = remote.mid;
  setTileVideo(tile, remote.stream);
  watchTileSize(tile, remote);
  renderTileStates();
  layoutGrid();
}

// A simulcast layer as big as the tile shows: a small tile asks for a lower one (set_quality).
const tileObservers = new WeakMap();
function watchTileSize(tile, remote) {
  tileObservers.get(tile)?.disconnect();
  let asked = null;
  const observer = new ResizeObserver(([entry]) => {
    const quality = qualityForHeight(entry.contentRect.height);
    if (quality === asked || tile.dataset.mid !== remote.mid) return;
    asked = quality;
    room?.setQuality(remote.trackSid, quality).catch(() => {});
  });
  observer.observe(tile);
  tileObservers.set(tile, observer);
}

function detachRemote(remote) {
  if (remote.kind === "audio") {
    document.querySelector(`audio[data-mid="${CSS.escape(remote.mid)}"]`)?.remove();
    return;
  }
  const tile = document.querySelector(`.tile[data-mid="${CSS.escape(remote.mid)}"]`);
  if (!tile) return;
  // The mid may carry another track later (a recycled section): it no longer names this tile.
  delete tile.dataset.mid;
  if (tile.dataset.key.endsWith(":screen")) tile.remove();
  else setTileVideo(tile, null);
  layoutGrid();
}

function renderParticipants() {
  if (!room?.participant) return;
  const others = [...room.participants.values()];
  $("participant-count").textContent = `(${others.length + 1})`;
  $("participants").replaceChildren(
    ...[room.participant, ...others].map((info) => {
      const li = document.createElement("li");
      li.dataset.sid = info.sid;
      li.textContent = info === room.participant ? `${displayName(info)} (you)` : displayName(info);
      // Own tracks are known here before the server lists them.
      const tracks =
        info === room.participant
          ? Object.values(local).filter(Boolean).map((t) => t.info)
          : (info.tracks ?? []);
      const sources = tracks.map((t) => SOURCE_LABEL[t.source] ?? t.source);
      if (sources.length) {
        const span = document.createElement("span");
        span.className = "sources";
        span.textContent = ` · ${sources.join(", ")}`;
        li.append(span);
      }
      return li;
    }),
  );
  // A tile for everyone, video or not; tiles of those who left go away.
  const present = new Set([room.participant.sid, ...room.participants.keys()]);
  for (const tile of document.querySelectorAll(".tile")) {
    if (!present.has(tile.dataset.key.split(":")[0])) tile.remove();
  }
  renderLocalVideo();
  for (const info of others) tileFor(info.sid, displayName(info));
  for (const remote of room.remoteTracks.values()) {
    if (remote.kind === "video" && remote.info?.source === "screen_share") {
      tileFor(remoteKey(remote), `${displayName(remote.participant)}'s screen`);
    }
  }
  renderTileStates();
  layoutGrid();
}

function renderTileStates() {
  for (const info of room.participants.values()) {
    const tile = document.querySelector(`.tile[data-key="${CSS.escape(info.sid)}"]`);
    if (!tile) continue;
    const track = (source) => (info.tracks ?? []).find((t) => t.source === source);
    tile.querySelector(".name").dataset.mic = track("microphone")?.muted === false ? "on" : "off";
    // A muted camera keeps its last frame on screen: show the avatar instead.
    tile.dataset.camera = track("camera")?.muted ? "off" : "on";
  }
}

function layoutGrid() {
  const count = $("grid").children.length;
  $("grid").style.setProperty("--columns", String(Math.max(1, Math.ceil(Math.sqrt(count)))));
}
