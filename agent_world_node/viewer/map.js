// The map: agents on the x/y grid of one z layer, drawn on a canvas. Redraws only when
// something changed (or while moves animate), batching the agents by colour.

const MOVE_MS = 300;
const ACTIVE_MS = 10_000;
const PALETTE = ["#4fc3f7", "#81c784", "#ffb74d", "#e57373", "#ba68c8", "#4db6ac", "#f06292", "#aed581"];
const ACTIVE = "#4fc3f7";
const IDLE = "#3d5566";
const SELECTED = "#ffffff";

function hashIndex(id) {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) | 0;
  return Math.abs(h) % PALETTE.length;
}

export class MapView {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.agents = new Map(); // id -> {id, x, y, z, fx, fy, t0, active, colour}
    this.cells = new Map(); // "x,y,z" -> Set of ids
    this.modules = new Set(); // "x,y,z" of module instances installed at a location
    this.z = 0; // a layer, or "all"
    this.mode = "activity";
    this.selected = null;
    this.cam = { x: 0, y: 0, scale: 8 };
    this.dirty = true;
    this.continuous = false;
    this.animating = 0; // moves still animating
    this.stats = { draws: [], intervals: [], last: null };
    this._bindInput();
    new ResizeObserver(() => this._resize()).observe(canvas);
    this._resize();
    const loop = (now) => {
      this._frame(now);
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  _resize() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(r.width * dpr));
    this.canvas.height = Math.max(1, Math.round(r.height * dpr));
    this.dpr = dpr;
    this.dirty = true;
  }

  _cellKey(x, y, z) { return `${x},${y},${z}`; }

  _index(a, add) {
    const key = this._cellKey(a.x, a.y, a.z);
    let set = this.cells.get(key);
    if (add) {
      if (!set) this.cells.set(key, (set = new Set()));
      set.add(a.id);
    } else if (set) {
      set.delete(a.id);
      if (set.size === 0) this.cells.delete(key);
    }
  }

  /** Replace every agent (records of GET /v1/agents). */
  setAgents(records) {
    this.agents.clear();
    this.cells.clear();
    for (const r of records) this.upsert(r.agent_id, r.position, false);
    this.dirty = true;
  }

  /** Add or move an agent; animate=true slides it from where it was. */
  upsert(id, pos, animate = true) {
    const [x, y, z] = pos;
    let a = this.agents.get(id);
    const now = performance.now();
    if (!a) {
      a = { id, x, y, z, fx: x, fy: y, t0: 0, active: animate ? now : 0, colour: hashIndex(id) };
      this.agents.set(id, a);
      this._index(a, true);
    } else {
      this._index(a, false);
      const p = this._drawnPos(a, now);
      a.fx = p[0]; a.fy = p[1];
      a.x = x; a.y = y; a.z = z;
      a.t0 = animate ? now : 0;
      if (animate) { a.active = now; this.animating = now + MOVE_MS; }
      this._index(a, true);
    }
    this.dirty = true;
  }

  touch(id) {
    const a = this.agents.get(id);
    if (a) { a.active = performance.now(); this.dirty = true; }
  }

  position(id) {
    const a = this.agents.get(id);
    return a ? [a.x, a.y, a.z] : null;
  }

  layers() {
    const zs = new Set();
    for (const a of this.agents.values()) zs.add(a.z);
    return [...zs].sort((p, q) => p - q);
  }

  setModuleLocations(keys) { this.modules = new Set(keys); this.dirty = true; }

  fit() {
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (const a of this.agents.values()) {
      if (this.z !== "all" && a.z !== this.z) continue;
      minX = Math.min(minX, a.x); maxX = Math.max(maxX, a.x);
      minY = Math.min(minY, a.y); maxY = Math.max(maxY, a.y);
    }
    if (minX === Infinity) { minX = minY = -5; maxX = maxY = 5; }
    const w = this.canvas.width / this.dpr, h = this.canvas.height / this.dpr;
    const span = Math.max(maxX - minX + 4, maxY - minY + 4, 10);
    this.cam = { x: (minX + maxX) / 2, y: (minY + maxY) / 2, scale: Math.max(0.5, Math.min(40, Math.min(w, h) / span)) };
    this.dirty = true;
  }

  _drawnPos(a, now) {
    if (!a.t0) return [a.x, a.y];
    const t = (now - a.t0) / MOVE_MS;
    if (t >= 1) { a.t0 = 0; return [a.x, a.y]; }
    return [a.fx + (a.x - a.fx) * t, a.fy + (a.y - a.fy) * t];
  }

  toWorld(px, py) {
    const w = this.canvas.width / this.dpr, h = this.canvas.height / this.dpr;
    return [(px - w / 2) / this.cam.scale + this.cam.x, (py - h / 2) / this.cam.scale + this.cam.y];
  }

  /** The ids of the agents in the cell under canvas point (px, py). */
  agentsAt(px, py) {
    const [wx, wy] = this.toWorld(px, py);
    const x = Math.round(wx), y = Math.round(wy);
    const out = [];
    const zs = this.z === "all" ? this.layers() : [this.z];
    for (const z of zs) {
      const set = this.cells.get(this._cellKey(x, y, z));
      if (set) out.push(...set);
    }
    return out;
  }

  _bindInput() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, cx: this.cam.x, cy: this.cam.y, moved: false }; });
    window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
    c.addEventListener("mousemove", (e) => {
      if (drag && (e.buttons & 1)) {
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        this.cam.x = drag.cx - dx / this.cam.scale;
        this.cam.y = drag.cy - dy / this.cam.scale;
        this.dirty = true;
      }
      if (this.onHover) this.onHover(this.agentsAt(e.offsetX, e.offsetY));
    });
    c.addEventListener("click", (e) => {
      if (drag && drag.moved) return;
      const ids = this.agentsAt(e.offsetX, e.offsetY);
      if (ids.length && this.onSelect) this.onSelect(ids[0]);
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [wx, wy] = this.toWorld(e.offsetX, e.offsetY);
      const f = Math.exp(-e.deltaY * 0.0015);
      this.cam.scale = Math.max(0.3, Math.min(80, this.cam.scale * f));
      const [nx, ny] = this.toWorld(e.offsetX, e.offsetY);
      this.cam.x += wx - nx; this.cam.y += wy - ny;
      this.dirty = true;
    }, { passive: false });
  }

  _frame(now) {
    const s = this.stats;
    const animating = now < this.animating;
    if (!(this.dirty || animating || this.continuous)) { s.last = null; return; }
    if (s.last !== null) s.intervals.push(now - s.last);
    s.last = now;
    const t0 = performance.now();
    this.draw(now);
    s.draws.push(performance.now() - t0);
    if (s.draws.length > 300) s.draws.shift();
    if (s.intervals.length > 300) s.intervals.shift();
    this.dirty = false;
  }

  draw(now) {
    const ctx = this.ctx, dpr = this.dpr;
    const w = this.canvas.width / dpr, h = this.canvas.height / dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#0f1419";
    ctx.fillRect(0, 0, w, h);
    const sc = this.cam.scale, ox = w / 2 - this.cam.x * sc, oy = h / 2 - this.cam.y * sc;
    if (sc >= 6) { // grid lines when cells are big enough to see
      ctx.strokeStyle = "#18212a";
      ctx.lineWidth = 1;
      ctx.beginPath();
      const [x0, y0] = this.toWorld(0, 0), [x1, y1] = this.toWorld(w, h);
      for (let x = Math.floor(x0) - 0.5; x <= x1 + 1; x++) { ctx.moveTo(ox + x * sc, 0); ctx.lineTo(ox + x * sc, h); }
      for (let y = Math.floor(y0) - 0.5; y <= y1 + 1; y++) { ctx.moveTo(0, oy + y * sc); ctx.lineTo(w, oy + y * sc); }
      ctx.stroke();
    }
    const size = Math.max(2, sc * 0.7), half = size / 2;
    ctx.strokeStyle = "#ffb74d";
    ctx.lineWidth = 2;
    for (const key of this.modules) {
      const [x, y, z] = key.split(",").map(Number);
      if (this.z !== "all" && z !== this.z) continue;
      ctx.strokeRect(ox + x * sc - half - 2, oy + y * sc - half - 2, size + 4, size + 4);
    }
    // one pass to bucket visible agents by colour, then one fill per colour
    const buckets = new Map();
    const push = (colour, x, y) => {
      let b = buckets.get(colour);
      if (!b) buckets.set(colour, (b = []));
      b.push(x, y);
    };
    let sel = null;
    for (const a of this.agents.values()) {
      if (this.z !== "all" && a.z !== this.z) continue;
      const [x, y] = this._drawnPos(a, now);
      const px = ox + x * sc, py = oy + y * sc;
      if (px < -size || py < -size || px > w + size || py > h + size) continue;
      if (a.id === this.selected) { sel = [px, py]; continue; }
      const colour = this.mode === "owner" ? PALETTE[a.colour] : (now - a.active < ACTIVE_MS ? ACTIVE : IDLE);
      push(colour, px, py);
    }
    for (const [colour, pts] of buckets) {
      ctx.fillStyle = colour;
      for (let i = 0; i < pts.length; i += 2) ctx.fillRect(pts[i] - half, pts[i + 1] - half, size, size);
    }
    if (sc >= 20) { // close enough to read: one label per occupied cell on screen (at most 400)
      ctx.fillStyle = "#9fb0bf";
      ctx.font = "11px system-ui, sans-serif";
      let n = 0;
      for (const [key, ids] of this.cells) {
        const [x, y, z] = key.split(",").map(Number);
        if (this.z !== "all" && z !== this.z) continue;
        const px = ox + x * sc, py = oy + y * sc;
        if (px < 0 || py < 0 || px > w || py > h) continue;
        const first = ids.values().next().value;
        ctx.fillText(ids.size > 1 ? `${first} +${ids.size - 1}` : first, px + half + 3, py + 4);
        if (++n >= 400) break;
      }
    }
    if (sel) {
      ctx.fillStyle = SELECTED;
      ctx.fillRect(sel[0] - half - 1, sel[1] - half - 1, size + 2, size + 2);
    }
    // agents fade from active to idle without another event: redraw at least once a second
    if (!this.continuous && this.mode === "activity") {
      clearTimeout(this._fade);
      this._fade = setTimeout(() => { this.dirty = true; }, 1000);
    }
  }

  frameStats() {
    const pct = (xs, p) => {
      if (!xs.length) return 0;
      const s = [...xs].sort((a, b) => a - b);
      return s[Math.min(s.length - 1, Math.floor(p * s.length))];
    };
    const d = this.stats.draws, iv = this.stats.intervals;
    return {
      frames: d.length,
      mean_ms: d.length ? d.reduce((a, b) => a + b, 0) / d.length : 0,
      p95_ms: pct(d, 0.95),
      max_ms: d.length ? Math.max(...d) : 0,
      interval_p95_ms: pct(iv, 0.95),
    };
  }

  resetFrameStats() { this.stats = { draws: [], intervals: [], last: null }; }
}
