// The operator console: sign in with the server's token, pick a session, watch it over WebRTC, make it speak.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "anchorcast-token";
const app = { token: null, session: null, viewer: null, socket: null, poll: null, history: [] };
window.anchorcast = app;  // for the tests and the curious: app.viewer.stats()

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = `pill ${kind}`;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${app.token}` };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    signOut("That token was not accepted. Use the token anchorcast serve printed when it started.");
    throw new Error("unauthorized");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.detail || `${response.status} ${response.statusText}`);
  return body;
}

// --- signing in -------------------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  app.token = null;
  leaveSession();
  $("studio").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("not signed in", message ? "bad" : "");
}

async function signIn(token) {
  app.token = token.trim();
  $("login-error").textContent = "";
  try {
    await api("/v1/sessions");
  } catch (error) {
    if (error.message !== "unauthorized") signOut(`The server did not answer: ${error.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, app.token);
  $("login").hidden = true;
  $("studio").hidden = false;
  setStatus("signed in", "good");
  await loadChoices();
  await refreshSessions();
}

// --- what to choose from --------------------------------------------------------------------------------------

function fill(select, items) {
  select.replaceChildren(...items.map(([value, label]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    return option;
  }));
}

async function loadChoices() {
  const choices = await api("/v1/choices");
  app.choices = choices;
  fill($("say-voice"), choices.voices.map((v) => [v.spec, v.label]));
  fill($("new-profile"), choices.profiles.map((p) => [p, p === choices.default_profile ? `${p} (default)` : p]));
  $("new-profile").value = choices.default_profile;
  fill($("new-avatar"), choices.avatars.map((a, i) => [String(i), a.name]));
}

function showScenes(scenes) {
  const key = scenes.join("\n");
  if ($("scenes").dataset.key === key) return;
  $("scenes").dataset.key = key;
  $("scenes").replaceChildren(...scenes.map((scene) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "scene";
    button.textContent = scene;
    button.title = `cue the OBS scene "${scene}"`;
    button.onclick = () => api(`/v1/sessions/${app.session}/cue`, { method: "POST", json: { scene } })
      .catch((error) => logEvent({ type: "refused", time: Date.now() / 1000, text: error.message }));
    return button;
  }));
}

async function showOverlay(id) {
  try {
    const overlay = await api(`/v1/sessions/${id}/overlay`);
    $("overlay-link").href = overlay.url;
    $("overlay-link").textContent = overlay.url.replace(/watch=.*/, "watch=...");
    $("overlay").hidden = false;
  } catch (_) {
    $("overlay").hidden = true;
  }
}

// --- sessions ---------------------------------------------------------------------------------------------

async function refreshSessions() {
  const { sessions } = await api("/v1/sessions");
  const list = $("sessions");
  list.replaceChildren(...sessions.map((s) => {
    const item = document.createElement("li");
    item.dataset.id = s.id;
    item.className = s.id === app.session ? "chosen" : "";
    item.innerHTML = `<b></b><span class="state ${s.state}"></span><small></small>`;
    item.querySelector("b").textContent = s.id;
    item.querySelector(".state").textContent = s.state;
    item.querySelector("small").textContent = s.profile;
    item.onclick = () => chooseSession(s.id);
    return item;
  }));
  if (!sessions.length) list.innerHTML = '<li class="muted">no session on air: start one below</li>';
  if (!app.session && sessions.length) await chooseSession(sessions[0].id);
}

function leaveSession() {
  if (app.viewer) app.viewer.hangUp();
  if (app.socket) app.socket.close();
  if (app.poll) clearInterval(app.poll);
  app.viewer = app.socket = app.poll = null;
  app.session = null;
  app.history = [];
}

async function chooseSession(id) {
  if (id === app.session) return;
  leaveSession();
  app.session = id;
  document.querySelectorAll("#sessions li").forEach((li) => li.classList.toggle("chosen", li.dataset.id === id));
  $("events").replaceChildren();
  $("video-note").textContent = "connecting...";
  $("video-note").hidden = false;
  watchEvents(id);
  showOverlay(id);
  app.poll = setInterval(() => showFigures(id), 1000);
  showFigures(id);
  try {
    app.viewer = new WhepViewer(`${location.origin}/v1/sessions/${id}/whep`, app.token);
    const video = $("video");
    video.srcObject = await app.viewer.start();
    app.viewer.pc.addEventListener("connectionstatechange", () => {
      const state = app.viewer?.pc?.connectionState;
      $("video-note").hidden = state === "connected";
      $("video-note").textContent = state === "failed" ? "the video connection failed" : `video ${state}`;
    });
    try {
      await video.play();
    } catch (_) {  // the browser wants a click before it plays sound
      video.muted = true;
      await video.play().catch(() => {});
      $("sound").hidden = false;
    }
  } catch (error) {
    $("video-note").textContent = `no video: ${error.message}`;
  }
}

// --- what the session does ------------------------------------------------------------------------------------

function watchEvents(id) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/sessions/${id}/events?token=${encodeURIComponent(app.token)}`);
  app.socket = socket;
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    logEvent(event);
    if (event.type === "caption" && event.text) $("captions").textContent = event.text;
  };
}

function logEvent(event) {
  const item = document.createElement("li");
  const when = new Date(event.time * 1000).toLocaleTimeString();
  const detail = event.text || event.state || event.detail || event.name || event.scene || event.utterance || "";
  item.className = `ev ${event.type}`;
  item.innerHTML = "<time></time> <b></b> <span></span>";
  item.querySelector("time").textContent = when;
  item.querySelector("b").textContent = event.type.replaceAll("_", " ");
  item.querySelector("span").textContent = String(detail).slice(0, 120);
  const list = $("events");
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

async function showFigures(id) {
  let detail;
  try {
    detail = await api(`/v1/sessions/${id}`);
  } catch (error) {
    $("f-state").textContent = error.message;
    return;
  }
  const m = detail.metrics;
  const ms = (v) => (v == null ? "-" : `${Math.round(v)} ms`);
  $("f-state").textContent = detail.state;
  $("f-state").className = `state ${detail.state}`;
  $("f-fps").textContent = m.fps ? m.fps.toFixed(1) : "-";
  $("f-overruns").textContent = m.overruns;
  $("f-latency").textContent = `${ms(m.latency_p50_ms)} / ${ms(m.latency_p95_ms)}`;
  $("f-say").textContent = `${ms(m.say_to_air_p50_ms)} / ${ms(m.say_to_air_p95_ms)}`;
  $("f-viewers").textContent = detail.webrtc ? detail.webrtc.viewers.length : "-";
  showScenes(detail.scenes || []);
  const lines = detail.queue.map((u) => (u.state === "speaking" ? "on air: " : "next: ") + (u.text || "audio"));
  $("queue").textContent = lines.join("  |  ");
  app.history.push([m.latency_p50_ms || 0, m.latency_p95_ms || 0]);
  if (app.history.length > 60) app.history.shift();
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const top = Math.max(100, ...app.history.map((p) => p[1])) * 1.1;
  g.strokeStyle = "#2b3445";
  g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
  [[1, "#f0a04b"], [0, "#4fc3f7"]].forEach(([k, colour]) => {
    g.strokeStyle = colour;
    g.lineWidth = 2;
    g.beginPath();
    app.history.forEach((p, i) => {
      const x = (i / 59) * w, y = h - (p[k] / top) * h;
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  });
  g.fillStyle = "#8a94a6";
  g.font = "11px sans-serif";
  g.fillText(`p50 / p95 ms, top ${Math.round(top)}`, 4, 12);
}

// --- controls ---------------------------------------------------------------------------------------------

$("login-form").onsubmit = (e) => { e.preventDefault(); signIn($("token").value); };
$("say-form").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("say-text").value.trim();
  if (!text || !app.session) return;
  const body = { text };
  if ($("say-voice").value.trim()) body.voice = $("say-voice").value.trim();
  try {
    await api(`/v1/sessions/${app.session}/say`, { method: "POST", json: body });
    $("say-text").value = "";
  } catch (error) {
    logEvent({ type: "refused", time: Date.now() / 1000, text: error.message });
  }
};
$("interrupt").onclick = () => app.session && api(`/v1/sessions/${app.session}/interrupt`, { method: "POST" });
$("cue-form").onsubmit = async (e) => {
  e.preventDefault();
  const body = {};
  if ($("cue-scene").value.trim()) body.scene = $("cue-scene").value.trim();
  if ($("cue-lower").value.trim()) body.lower_third = $("cue-lower").value.trim();
  if (app.session && (body.scene || body.lower_third)) {
    await api(`/v1/sessions/${app.session}/cue`, { method: "POST", json: body })
      .catch((error) => logEvent({ type: "refused", time: Date.now() / 1000, text: error.message }));
  }
};
$("new-session").onsubmit = async (e) => {
  e.preventDefault();
  const avatar = app.choices?.avatars[Number($("new-avatar").value)];
  const body = { profile: $("new-profile").value || undefined, set: avatar ? avatar.set : {} };
  try {
    const created = await api("/v1/sessions", { method: "POST", json: body });
    await refreshSessions();
    await chooseSession(created.id);
  } catch (error) {
    logEvent({ type: "refused", time: Date.now() / 1000, text: error.message });
  }
};
$("overlay-copy").onclick = () => navigator.clipboard?.writeText($("overlay-link").href);
$("sound").onclick = () => { $("video").muted = false; $("sound").hidden = true; };
setInterval(() => app.token && refreshSessions().catch(() => {}), 3000);

const offered = new URLSearchParams(location.search).get("token") || sessionStorage.getItem(TOKEN_KEY);
if (offered) {
  history.replaceState(null, "", location.pathname);  // keep the token out of the address bar and history
  signIn(offered);
}
