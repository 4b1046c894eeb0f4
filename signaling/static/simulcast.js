// Simulcast for the page (docs/protocol.md, "Simulcast"): the camera is sent as three layers
// (RIDs q, h, f at 1/4, 1/2 and full resolution) when the room allows it; the server's
// `dynacast` events switch encodings nobody receives off and on; a remote video asks for the
// layer its tile is big enough for.

// Highest first: for a small camera Chromium encodes fewer layers than listed (two at 640x360)
// and keeps the first ones, so the full resolution must not come last. The server orders
// q/h/f by name, whatever the offer's order.
export const SIMULCAST_LAYERS = [
  { rid: "f", scaleResolutionDownBy: 1 },
  { rid: "h", scaleResolutionDownBy: 2 },
  { rid: "q", scaleResolutionDownBy: 4 },
];

/** The `sendEncodings` for a published track, or undefined to send one encoding. */
export function simulcastEncodings(roomInfo, track, source) {
  if (track.kind !== "video" || source !== "camera") return undefined;
  if (roomInfo?.limits?.simulcast === false) return undefined;
  return SIMULCAST_LAYERS.map((layer) => ({ ...layer }));
}

/** Apply a `dynacast` event to the sender of the local track it names. */
export async function applyDynacast(localTracks, frame) {
  const sender = localTracks.get(frame.track_sid)?.transceiver.sender;
  if (!sender) return;
  const params = sender.getParameters();
  let changed = false;
  for (const encoding of params.encodings ?? []) {
    const layer = (frame.layers ?? []).find((l) => l.rid === encoding.rid);
    if (layer && encoding.active !== Boolean(layer.active)) {
      encoding.active = Boolean(layer.active);
      changed = true;
    }
  }
  if (changed) await sender.setParameters(params);
}

/** The quality a video shown `height` CSS pixels high needs (device pixels counted). */
export function qualityForHeight(height) {
  const pixels = height * (globalThis.devicePixelRatio || 1);
  if (pixels <= 180) return "low";
  if (pixels <= 360) return "medium";
  return "high";
}
