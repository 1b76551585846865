// The 3D anchor page: /avatar3d/SESSION?watch=KEY (or ?token=) renders a head from the session's coefficient
// stream (WS /v1/sessions/SESSION/coefficients) and plays its sound, the weights applied on the sound's clock.
//   ?model=NAME.glb|NAME.vrm   a model in the server's profile folder; ?model=/path or https://... any address;
//                              default: the shipped head
//   ?background=RRGGBB         an opaque background (default: transparent, for an OBS Browser Source)
//   ?audio=0                   no sound: frames show 150 ms after they arrive
//   ?antialias=0               no multisampling (a software renderer draws faster)
"use strict";

import * as THREE from "three";
import { AudioClock, WallClock } from "/static/avatar3d/clock.js";
import { Rig } from "/static/avatar3d/rig.js";

const RETRY_MS = 2000;
const KEEP_S = 2.0;
const NO_COEFFICIENTS = 4415;
const session = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const query = new URLSearchParams(location.search);
const credential = query.get("watch") || query.get("token") || "";
const credentialParam = query.get("watch") ? `watch=${encodeURIComponent(credential)}`
  : `token=${encodeURIComponent(credential)}`;
const withSound = query.get("audio") !== "0";
const canvas = document.getElementById("avatar");
const problem = document.getElementById("problem");

const state = {
  connected: false, error: null, fps: 25, names: [], received: 0, applied: 0, late: 0, reanchors: 0,
  lastApplied: null, offsets: [], model: null, bound: 0, loaded: false, ticks: 0, renders: 0,
  // For the tests: every 10 ms [session pts at the speakers now, the level of the sound the graph renders now,
  // how far rendering runs ahead of the speakers (s)]; each frame's sound level by index. Set against each
  // other they show whether the clock points at the sound heard. Levels: per frame index, of each 10 ms.
  heard: [], levels: {},
};

function show(message) {
  state.error = message;
  problem.textContent = message ? `anchorcast 3D anchor: ${message}` : "";
  problem.hidden = !message;
}

function modelUrl() {
  const model = query.get("model");
  if (!model) return "/static/avatar3d/head.glb";
  if (model.startsWith("/") || /^https?:\/\//.test(model)) return model;
  return `/avatar3d/${encodeURIComponent(session)}/models/${encodeURIComponent(model)}?${credentialParam}`;
}

// --- the scene ---------------------------------------------------------------------------------------------

const background = query.get("background");
const renderer = new THREE.WebGLRenderer({
  canvas, alpha: !background, antialias: query.get("antialias") !== "0", preserveDrawingBuffer: true,
});
renderer.setPixelRatio(devicePixelRatio);
if (background) renderer.setClearColor(new THREE.Color(`#${background.replace(/^#/, "")}`), 1);
else renderer.setClearColor(0x000000, 0);
const scene = new THREE.Scene();
const camera = new THREE.PerspectiveCamera(18, 1, 0.01, 100);
scene.add(new THREE.HemisphereLight(0xffffff, 0x404040, 1.6));
const key = new THREE.DirectionalLight(0xffffff, 2.2);
key.position.set(0.4, 0.6, 1.0);
scene.add(key);
const fill = new THREE.DirectionalLight(0xffffff, 0.6);
fill.position.set(-0.8, 0.1, 0.6);
scene.add(fill);
const rig = new Rig(scene);

function fit() {
  renderer.setSize(innerWidth, innerHeight, false);
  camera.aspect = innerWidth / Math.max(1, innerHeight);
  camera.updateProjectionMatrix();
}

function aim() {
  const { centre, height } = rig.frame();
  const distance = (0.62 * height) / Math.tan(THREE.MathUtils.degToRad(camera.fov / 2));
  camera.position.set(centre.x, centre.y, centre.z + distance);
  camera.lookAt(centre);
  key.target.position.copy(centre);
  fill.target.position.copy(centre);
  scene.add(key.target, fill.target);
}

/** The mouth's box on the canvas in CSS pixels [x0, y0, x1, y1] (glTF heads), for tests and tools. */
function mouthBox() {
  const box = rig.mouthBox();
  if (!box) return null;
  const xs = [], ys = [];
  for (let corner = 0; corner < 8; corner += 1) {
    const p = new THREE.Vector3(corner & 1 ? box.max.x : box.min.x, corner & 2 ? box.max.y : box.min.y,
      corner & 4 ? box.max.z : box.min.z).project(camera);
    xs.push(((p.x + 1) / 2) * innerWidth);
    ys.push(((1 - p.y) / 2) * innerHeight);
  }
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)].map(Math.round);
}

// --- the stream --------------------------------------------------------------------------------------------

let clock = null;
const frames = [];  // {index, pts, weights}, in pts order

function useClock() {
  if (withSound && window.AudioContext) {
    try {
      clock = new AudioClock();
      if (!clock.running) {
        // A browser that blocks sound without a click: the newest frame shows, silent, until a click.
        clock.resume().catch(() => {});
        setTimeout(() => { if (!clock.running) show("click the page to start the sound"); }, 1000);
        addEventListener("click", () => clock.resume().then(() => show(null)), { once: true });
      }
      return;
    } catch (_) { /* no Web Audio: fall through */ }
  }
  clock = new WallClock();
}

function received(frame) {
  state.received += 1;
  frames.push(frame);
  while (frames.length > 2 && frames[0].pts < frame.pts - KEEP_S) frames.shift();
}

function onMessage(event) {
  if (typeof event.data === "string") {
    const message = JSON.parse(event.data);
    if (message.type === "expressions") {
      state.fps = message.fps;
      state.names = message.names;
      rig.setNames(message.names);
      state.bound = rig.bound;
    } else if (message.type === "error") {
      show(message.detail);
    } else if (message.type === "coefficients") {
      clock.arrived?.(message.pts);
      received({ index: message.index, pts: message.pts, weights: message.weights });
    }
    return;
  }
  const view = new DataView(event.data);
  const count = view.getUint16(2, true), index = view.getUint32(4, true), pts = view.getFloat64(8, true);
  const audioPts = view.getFloat64(16, true), rate = view.getUint32(24, true), samples = view.getUint32(28, true);
  const sound = new Int16Array(event.data, 32 + 4 * count, samples);
  if (count) received({ index, pts, weights: new Float32Array(event.data, 32, count) });
  if (clock.push) clock.push(audioPts, rate, sound);
  state.levels[index] = quarterLevels(sound);
  delete state.levels[index - 3000];
}

/** The RMS of each quarter of a frame's sound (10 ms at 25 fps): what the tests line the heard sound up with. */
function quarterLevels(sound) {
  const quarter = Math.max(1, Math.floor(sound.length / 4));
  const levels = [];
  for (let q = 0; q < 4; q += 1) {
    let sum = 0;
    const end = Math.min(sound.length, (q + 1) * quarter);
    for (let i = q * quarter; i < end; i += 1) sum += (sound[i] / 32768) ** 2;
    levels.push(Math.sqrt(sum / quarter));
  }
  return levels;
}

function connect() {
  const address = new URL(`/v1/sessions/${encodeURIComponent(session)}/coefficients?${credentialParam}` +
    (clock.push ? "&audio=pcm" : ""), location.href);
  address.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(address);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { state.connected = true; show(null); };
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    state.connected = false;
    if (event.code === NO_COEFFICIENTS) {
      show(event.reason || "this session's engine gives no expression coefficients");
      return;
    }
    show(`lost session "${session}"${event.reason ? ` (${event.reason})` : ""}; reconnecting...`);
    setTimeout(connect, RETRY_MS);
  };
}

// --- the picture, on the sound's clock ---------------------------------------------------------------------

let last = performance.now();
let dirty = true;  // a glTF head changes only with new weights: draw only then (VRMs animate: always)

function tick() {
  const nowMs = performance.now();
  let playing = clock ? clock.now() : null;
  if (playing === null && clock && clock.push && !clock.running && frames.length) {
    playing = frames[frames.length - 1].pts;  // the sound is blocked until a click: the newest frame, unsynced
  }
  if (playing !== null) {
    while (frames.length > 1 && frames[1].pts <= playing) frames.shift();
    const frame = frames[0];
    if (frame && frame.pts <= playing) {
      if (frame !== state.lastApplied) {
        rig.apply(frame.weights);
        state.lastApplied = frame;
        state.applied += 1;
        dirty = true;
      }
      const offset = frame.pts - playing;  // in (-1/fps, 0] when the frame for this moment is here
      if (offset <= -1 / state.fps) state.late += 1;
      state.offsets.push(offset);
      if (state.offsets.length > 2000) state.offsets.shift();
    }
  }
  state.reanchors = clock ? clock.reanchors : 0;
  state.ticks += 1;
  rig.update((nowMs - last) / 1000);
  last = nowMs;
  if (dirty || rig.vrm) {
    renderer.render(scene, camera);
    state.renders += 1;
    dirty = false;
  }
  requestAnimationFrame(tick);
}

function listen() {
  const playing = clock ? clock.now() : null;
  if (playing !== null && clock.analyser) {
    state.heard.push([playing, clock.level(), clock.ctx.currentTime - clock.anchor - playing]);
    if (state.heard.length > 6000) state.heard.shift();
  }
}

window.anchorcast = { avatar3d: { state, mouthBox, frames, buffered: () => (clock ? clock.buffered() : 0),
  audio: () => (clock && clock.ctx ? clock.ctx.state : "none"),
  expression: (name) => rig.vrm?.expressionManager?.getValue(name) ?? null } };

async function start() {
  fit();
  addEventListener("resize", () => { fit(); if (state.loaded) aim(); dirty = true; });
  if (!session || !credential) {
    show("open this page as /avatar3d/SESSION?watch=KEY (the session's overlay address gives the key).");
    return;
  }
  useClock();
  try {
    await rig.load(modelUrl());
  } catch (error) {
    const reason = String(error.message || error).replaceAll(encodeURIComponent(credential), "***");
    show(`cannot load the model ${query.get("model") || "(the shipped head)"}: ${reason}`);
    return;
  }
  state.model = rig.vrm ? "vrm" : "gltf";
  state.loaded = true;
  aim();
  requestAnimationFrame(tick);
  setInterval(listen, 10);
  connect();
}

start();
