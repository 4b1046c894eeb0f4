// The RTCRtpScriptTransform worker of e2ee.js: one state per sender/receiver, keys from the page.
import { FrameKeys, frameTransform } from "/static/e2ee-frame.js";

const states = new Map(); // transform id -> {keys, identity, index, failures}
let keys = null;

function stateOf(id) {
  if (!states.has(id)) states.set(id, { keys, identity: null, index: 0, failures: 0 });
  return states.get(id);
}

onmessage = (event) => {
  const message = event.data;
  if (message.type === "key") {
    keys = new FrameKeys(message.base);
    for (const state of states.values()) state.keys = keys;
  } else if (message.type === "identity") {
    stateOf(message.id).identity = message.identity;
  } else if (message.type === "index") {
    for (const state of states.values()) state.index = message.index;
  } else if (message.type === "failures") {
    let failures = 0;
    for (const state of states.values()) failures += state.failures;
    postMessage({ type: "failures", failures });
  }
};

onrtctransform = (event) => {
  const { readable, writable, options } = event.transformer;
  const state = stateOf(options.id);
  state.keys = keys;
  if (options.identity) state.identity = options.identity;
  if (options.index !== undefined) state.index = options.index;
  readable.pipeThrough(frameTransform(options.role, options.kind, state)).pipeTo(writable);
};
