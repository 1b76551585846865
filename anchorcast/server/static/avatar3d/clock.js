// The session's sound, played with Web Audio, and the clock the coefficients are applied on.
//
// Each frame's samples come in the same message as its coefficients, stamped with their pts on the session's
// media clock. The first chunk is scheduled LEAD_S after now (a jitter buffer); later ones at their pts plus the
// same anchor, so the sound plays gap-free on the AudioContext's clock. The session pts audible *now* is then
// (the context time at the speakers now) - anchor, where the context time at the speakers comes from
// AudioContext.getOutputTimestamp(): the context time of the sample the device is playing at a given
// performance.now(), extrapolated to the present (output latency included). The page shows the frame whose
// pts is the latest not after it, so picture and sound agree within one frame by construction; state.offsets
// records the difference for the tests. A chunk that arrives too late (or whose pts jumped far ahead)
// re-anchors: one glitch, counted in `reanchors`; a late one also deepens the buffer (x1.5, to MAX_LEAD_S), for
// a page whose main thread stalls (a slow GPU, a busy machine). A chunk that would start more than MAX_AHEAD_S
// beyond the buffer re-anchors too, stopping the sound scheduled before it: the page read a backlog in one go
// (its main thread was busy loading the head while the socket filled), and keeping that anchor would play
// everything seconds late and let the picture's buffer drop frames before their time.
//
// Without sound (?audio=0, or no Web Audio) the same clock runs on performance.now(): frames show LEAD_S after
// they arrive.
"use strict";

export const LEAD_S = 0.15;
const MAX_LEAD_S = 0.6;
const MAX_AHEAD_S = 0.5;  // further ahead than the buffer: a backlog read at once, or the clock jumped

export class AudioClock {
  constructor() {
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    this.anchor = null;
    this.lead = LEAD_S;
    this.reanchors = 0;
    this.scheduledUntil = 0;
    this.scheduled = [];  // [source node, end time]: what a forward re-anchor stops
    this.gain = this.ctx.createGain();
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 512;  // about 10 ms: the level of the sound being rendered now
    this.gain.connect(this.analyser);
    this.analyser.connect(this.ctx.destination);
    this._level = new Float32Array(this.analyser.fftSize);
  }

  get running() {
    return this.ctx.state === "running";
  }

  resume() {
    return this.ctx.resume();
  }

  /** Schedules one frame's sound: int16 ``samples`` at ``rate`` starting at session time ``pts``. */
  push(pts, rate, samples) {
    if (!samples.length) return;
    const now = this.ctx.currentTime;
    let start = this.anchor === null ? -1 : pts + this.anchor;
    const ahead = this.anchor !== null && start > now + this.lead + MAX_AHEAD_S;
    if (this.anchor === null || start < now + 0.005 || ahead) {
      if (this.anchor !== null && start < now + 0.005) this.lead = Math.min(MAX_LEAD_S, this.lead * 1.5);
      if (ahead) {
        for (const [node] of this.scheduled) node.stop();
        this.scheduled = [];
      }
      this.anchor = now + this.lead - pts;
      start = now + this.lead;
      this.reanchors += 1;
    }
    const buffer = this.ctx.createBuffer(1, samples.length, rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i += 1) channel[i] = samples[i] / 32768;
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    source.start(start);
    this.scheduledUntil = start + samples.length / rate;
    this.scheduled = this.scheduled.filter(([, end]) => end > now);
    this.scheduled.push([source, this.scheduledUntil]);
  }

  /** The session pts playing at the speakers now, or null before the first sound. */
  now() {
    if (this.anchor === null || !this.running) return null;
    const stamp = this.ctx.getOutputTimestamp ? this.ctx.getOutputTimestamp() : null;
    let playing;
    if (stamp && stamp.contextTime > 0 && stamp.performanceTime > 0) {
      playing = stamp.contextTime + (performance.now() - stamp.performanceTime) / 1000;
    } else {
      playing = this.ctx.currentTime - (this.ctx.outputLatency || this.ctx.baseLatency || 0);
    }
    return playing - this.anchor;
  }

  /** Seconds of sound scheduled ahead of what plays now (the jitter buffer's depth). */
  buffered() {
    return Math.max(0, this.scheduledUntil - this.ctx.currentTime);
  }

  /** The RMS of the sound the graph renders now (an independent look at what plays, for the tests). */
  level() {
    this.analyser.getFloatTimeDomainData(this._level);
    let sum = 0;
    for (const value of this._level) sum += value * value;
    return Math.sqrt(sum / this._level.length);
  }
}

export class WallClock {
  constructor() {
    this.anchor = null;
    this.reanchors = 0;
    this.running = true;
  }

  resume() {
    return Promise.resolve();
  }

  /** A frame arrived: its pts maps to arrival + LEAD_S (re-anchored when it would show late). */
  arrived(pts) {
    const now = performance.now() / 1000;
    if (this.anchor === null || pts + this.anchor < now || pts + this.anchor > now + LEAD_S + MAX_AHEAD_S) {
      this.anchor = now + LEAD_S - pts;
      this.reanchors += 1;
    }
  }

  now() {
    return this.anchor === null ? null : performance.now() / 1000 - this.anchor;
  }

  buffered() {
    return 0;
  }

  level() {
    return 0;
  }
}
