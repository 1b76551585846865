// The overlay: the session's packed picture (colour left, alpha right; VP8 has no alpha) over WHEP, cut out in a
// WebGL shader onto a transparent canvas. Sound plays from the page (OBS: "Control audio via OBS").
// Address: /overlay/SESSION?watch=KEY (the session's watch key; ?token= works too) [&key=RRGGBB to key a colour].
"use strict";

(() => {
  const RETRY_MS = 2000;
  const session = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const query = new URLSearchParams(location.search);
  const credential = query.get("watch") || query.get("token") || "";
  const keyColour = query.get("key");
  const video = document.getElementById("packed");
  const canvas = document.getElementById("anchor");
  const problem = document.getElementById("problem");
  const state = { frames: 0, connected: false, error: null, viewer: null, width: 0, height: 0 };

  const show = (message) => {
    state.error = message;
    problem.textContent = message ? `anchorcast overlay: ${message}` : "";
    problem.hidden = !message;
  };

  const gl = canvas.getContext("webgl", { alpha: true, premultipliedAlpha: true, preserveDrawingBuffer: true });
  const VERTEX = `attribute vec2 corner; varying vec2 uv;
    void main() { uv = vec2(0.5 + 0.5 * corner.x, 0.5 - 0.5 * corner.y); gl_Position = vec4(corner, 0.0, 1.0); }`;
  // Alpha from the green channel of the right half: the one VP8 keeps best (full-resolution luma). The
  // smoothstep maps codec noise near 0 and 255 to exactly transparent and exactly opaque.
  const FRAGMENT = `precision mediump float; varying vec2 uv; uniform sampler2D picture; uniform float halfTexel;
    void main() {
      float x = min(uv.x * 0.5, 0.5 - halfTexel);
      vec3 colour = texture2D(picture, vec2(x, uv.y)).rgb;
      float alpha = smoothstep(0.06, 0.94, texture2D(picture, vec2(max(0.5 + uv.x * 0.5, 0.5 + halfTexel), uv.y)).g);
      gl_FragColor = vec4(colour * alpha, alpha);
    }`;
  let halfTexel = null;

  function compile(type, source) {
    const shader = gl.createShader(type);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    return shader;
  }

  function setUpGl() {
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    gl.useProgram(program);
    gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const corner = gl.getAttribLocation(program, "corner");
    gl.enableVertexAttribArray(corner);
    gl.vertexAttribPointer(corner, 2, gl.FLOAT, false, 0, 0);
    gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    halfTexel = gl.getUniformLocation(program, "halfTexel");
    gl.clearColor(0, 0, 0, 0);
  }

  function fit() {
    // The anchor as large as the page allows at its own aspect ratio (the Browser Source's size decides).
    if (!state.width) return;
    const scale = Math.min(innerWidth / state.width, innerHeight / state.height);
    canvas.style.width = `${Math.round(state.width * scale)}px`;
    canvas.style.height = `${Math.round(state.height * scale)}px`;
  }

  function draw() {
    if (video.videoWidth > 1 && video.readyState >= 2) {
      const width = video.videoWidth / 2, height = video.videoHeight;
      if (width !== state.width || height !== state.height) {
        state.width = width; state.height = height;
        canvas.width = width; canvas.height = height;
        gl.viewport(0, 0, width, height);
        fit();
      }
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB, gl.RGB, gl.UNSIGNED_BYTE, video);
      gl.uniform1f(halfTexel, 0.5 / video.videoWidth);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
      state.frames += 1;
    }
    schedule();
  }

  function schedule() {
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(draw);
    else requestAnimationFrame(draw);
  }

  async function play() {
    try {
      await video.play();
    } catch (_) {
      // A browser that blocks sound without a click: show the picture muted; a click turns the sound on.
      video.muted = true;
      await video.play().catch(() => {});
      addEventListener("click", () => { video.muted = false; video.play(); }, { once: true });
    }
  }

  async function connect() {
    const endpoint = `/v1/sessions/${encodeURIComponent(session)}/whep?layout=packed-alpha` +
      (keyColour ? `&key=${encodeURIComponent(keyColour)}` : "");
    const viewer = new WhepViewer(new URL(endpoint, location.href).toString(), credential);
    state.viewer = viewer;
    try {
      video.srcObject = await viewer.start();
    } catch (error) {
      state.viewer = null;
      if (error.status === 401) {
        show(`the watch key is missing or wrong for session "${session}". Copy the overlay address again ` +
             `(the console's "Overlay for OBS", or GET /v1/sessions/${session}/overlay).`);
        return;  // retrying cannot fix a wrong key
      }
      show(error.status === 404 ? `session "${session}" is not on air; waiting for it...`
                                : `cannot watch session "${session}" (${error.message}); retrying...`);
      setTimeout(connect, RETRY_MS);
      return;
    }
    const reconnect = () => {
      if (state.viewer !== viewer) return;
      state.viewer = null;
      state.connected = false;
      viewer.hangUp();
      show(`lost session "${session}"; reconnecting...`);
      setTimeout(connect, RETRY_MS);
    };
    viewer.pc.addEventListener("connectionstatechange", () => {
      const now = viewer.pc ? viewer.pc.connectionState : "closed";
      state.connected = now === "connected";
      if (now === "connected") show(null);
      if (now === "failed" || now === "closed") reconnect();
      // "disconnected" often heals by itself (a busy network); give it a few seconds first
      if (now === "disconnected") setTimeout(() => viewer.pc?.connectionState === "disconnected" && reconnect(), 5000);
    });
    play();
  }

  if (!gl) {
    show("this browser has no WebGL, which the overlay needs to cut the anchor out.");
    return;
  }
  setUpGl();
  addEventListener("resize", fit);
  addEventListener("pagehide", () => { if (state.viewer) state.viewer.hangUp(); });
  window.anchorcast = { overlay: { state, video, canvas, stats: () => (state.viewer ? state.viewer.stats() : null) } };
  if (!session || !credential) {
    show("open this page as /overlay/SESSION?watch=KEY (the console's \"Overlay for OBS\" gives the address).");
    return;
  }
  schedule();
  connect();
})();
