// A WHEP viewer (RFC 9725) for the anchorcast pages: offer to receive video and audio, POST the offer once every
// ICE candidate is gathered, apply the answer; hangUp() DELETEs the viewer resource.
"use strict";

class WhepViewer {
  constructor(endpoint, token) {
    this.endpoint = endpoint;
    this.token = token;
    this.pc = null;
    this.resource = null;
    this.stream = new MediaStream();
  }

  async start() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.ontrack = (event) => this.stream.addTrack(event.track);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 2000);  // host candidates come at once; do not wait on a slow interface
    });
    const response = await fetch(this.endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${this.token}` },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) {
      let detail = `${response.status}`;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      pc.close();
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    this.resource = new URL(response.headers.get("Location"), this.endpoint).toString();
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    return this.stream;
  }

  async stats() {
    const out = { framesDecoded: 0, audioSamples: 0, audioLevel: 0, state: this.pc ? this.pc.connectionState : "new" };
    if (!this.pc) return out;
    (await this.pc.getStats()).forEach((report) => {
      if (report.type !== "inbound-rtp") return;
      if (report.kind === "video") out.framesDecoded = report.framesDecoded || 0;
      if (report.kind === "audio") {
        out.audioSamples = report.totalSamplesReceived || 0;
        out.audioLevel = report.audioLevel || 0;
      }
    });
    return out;
  }

  async hangUp() {
    const resource = this.resource;
    this.resource = null;
    if (this.pc) this.pc.close();
    this.pc = null;
    if (resource) {
      await fetch(resource, { method: "DELETE", headers: { Authorization: `Bearer ${this.token}` } }).catch(() => {});
    }
  }
}
window.WhepViewer = WhepViewer;
