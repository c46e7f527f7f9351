// The viewer's state and wiring: load the agents once, follow the stream, keep the panels
// current. window.awViewer exposes a few read-outs for tests and for people at the console.

import { followStream, getJSON, loadAllAgents } from "./api.js";
import { MapView } from "./map.js";
import { agentActions, renderAgent, renderChain, renderGovernance, renderModules } from "./panels.js";

const $ = (sel) => document.querySelector(sel);
const map = new MapView($("#map"));
const state = {
  ready: false, connected: false, height: 0, status: null, evidence: 0,
  blocks: [], // the last 120 block summaries
  openId: null, open: null, // the open agent's page data
  modules: null, moduleStats: new Map(), seenModuleSeq: new Set(),
  names: new Map(), // validator id -> name
  moveLog: [], lastMoveAt: 0,
};
const HISTORY_MAX = 300;

function setConnected(on) {
  state.connected = on;
  const el = $("#conn-status");
  el.textContent = on ? "live" : "reconnecting";
  el.className = on ? "ok" : "bad";
}

function refreshLayers() {
  const sel = $("#z-layer"), cur = sel.value;
  const zs = map.layers();
  if (!zs.includes(0)) zs.unshift(0);
  sel.innerHTML = [...new Set(zs)].map((z) => `<option value="${z}">${z}</option>`).join("") + `<option value="all">all</option>`;
  sel.value = cur && [...sel.options].some((o) => o.value === cur) ? cur : String(map.z);
}

async function loadAgents() {
  const records = await loadAllAgents();
  map.setAgents(records);
  $("#agent-count").textContent = map.agents.size;
  refreshLayers();
}

// -- module statistics: from module.* events (backfill, then the stream) -------------------------
function countModuleEvent(e) {
  if (state.seenModuleSeq.has(e.seq)) return;
  state.seenModuleSeq.add(e.seq);
  const d = e.data || {};
  if (!d.instance_id) return;
  let s = state.moduleStats.get(d.instance_id);
  if (!s) state.moduleStats.set(d.instance_id, (s = { calls: 0, failures: {}, fees: 0, upgrades: 0 }));
  if (e.kind === "module.called") s.calls += 1;
  else if (e.kind === "module.call_failed") { s.calls += 1; s.failures[d.code] = (s.failures[d.code] || 0) + 1; }
  else if (e.kind === "module.runtime_charged") s.fees += (d.compute_fee_amount || 0) + (d.electricity_fee_amount || 0) + (d.gas_fee_amount || 0);
  else if (e.kind === "module.upgraded") s.upgrades += 1;
}

async function backfillModuleEvents() {
  let cursor = null;
  for (let read = 0; read < 2000;) {
    const q = cursor === null ? "" : `&cursor=${cursor}`;
    const page = await getJSON(`/v1/events?kind=module.*&order=desc&limit=500${q}`);
    if (!page) return;
    page.events.forEach(countModuleEvent);
    read += page.events.length;
    if (page.next_cursor === null || page.next_cursor === undefined || !page.events.length) return;
    cursor = page.next_cursor;
  }
}

async function loadModules() {
  state.modules = await getJSON("/v1/modules");
  if (!state.modules) return;
  map.setModuleLocations(state.modules.instances
    .map((i) => /^location:(-?\d+),(-?\d+),(-?\d+)$/.exec(i.install_target || ""))
    .filter(Boolean).map((m) => `${m[1]},${m[2]},${m[3]}`));
}

// -- the agent's page -------------------------------------------------------------------------------
async function openAgent(id) {
  if (state.openId !== id) state.open = { id, record: null, actions: [], history: [], modules: [] };
  state.openId = id;
  map.selected = id;
  map.dirty = true;
  selectTab("agent-panel");
  $("#agent-panel").setAttribute("data-agent-id", id);
  await refreshAgent();
}

async function refreshAgent() {
  const open = state.open;
  if (!open) return;
  const id = open.id;
  const [record, events] = await Promise.all([
    map.agents.has(id) ? getJSON(`/v1/agents/${encodeURIComponent(id)}`) : Promise.resolve(null),
    map.agents.has(id) ? getJSON(`/v1/events?agent=${encodeURIComponent(id)}&order=desc&limit=200`) : Promise.resolve(null),
  ]);
  if (state.open !== open) return; // another agent was opened meanwhile
  open.record = record;
  open.actions = events ? agentActions(events.events, id) : [];
  if (record) {
    const last = open.history[open.history.length - 1];
    if (!last || last.electricity !== record.electricity || last.data !== record.data) {
      open.history.push({ height: state.height, electricity: record.electricity, data: record.data });
      if (open.history.length > HISTORY_MAX) open.history.shift();
    }
  }
  open.modules = (state.modules ? state.modules.instances : [])
    .filter((i) => i.owner_agent_id === id || i.install_target === `agent:${id}` || (i.install_target === "self_agent" && i.owner_agent_id === id))
    .map((i) => {
      const s = state.moduleStats.get(i.instance_id) || { calls: 0, failures: {}, fees: 0 };
      return { ...i, calls: s.calls, failures: Object.values(s.failures).reduce((a, b) => a + b, 0), fees: s.fees };
    });
  renderAgent($("#agent-panel"), open);
}

// -- the stream ---------------------------------------------------------------------------------------
let agentRefresh = null;
function onBlock(b) {
  if (b.height <= state.height) return;
  state.height = b.height;
  $("#chain-height").textContent = b.height;
  state.blocks.push(b);
  if (state.blocks.length > 120) state.blocks.shift();
  let mentionsOpen = false, newAgents = false, modulesChanged = false;
  const now = performance.now();
  for (const e of b.events) {
    const d = e.data || {};
    if (e.kind === "domain.agent_moved" && d.agent_id) {
      map.upsert(d.agent_id, d.to, true);
      state.moveLog.push({ agent_id: d.agent_id, to: d.to, height: b.height, at_ms: performance.timeOrigin + now });
      if (state.moveLog.length > 1000) state.moveLog.shift();
      state.lastMoveAt = now;
    } else if (e.kind === "domain.agent_created" && d.created_agent_id) {
      map.upsert(d.created_agent_id, d.position || [0, 0, 0], true);
      newAgents = true;
    } else if (d.agent_id) {
      map.touch(d.agent_id);
    }
    if (e.kind.startsWith("module.")) {
      countModuleEvent(e);
      if (/installed|upgraded|deployed|compiled|deactivated|activation_changed|build_settled/.test(e.kind)) modulesChanged = true;
    }
    if (state.openId && Object.values(d).includes(state.openId)) mentionsOpen = true;
  }
  if (newAgents) { $("#agent-count").textContent = map.agents.size; refreshLayers(); }
  if (modulesChanged) loadModules().catch(() => {});
  if (mentionsOpen && !agentRefresh) {
    agentRefresh = setTimeout(() => { agentRefresh = null; refreshAgent().catch(() => {}); }, 250);
  }
  if (activeTab === "chain-panel") renderChain($("#chain-panel"), { blocks: state.blocks }, state.status, state.names, state.evidence);
  if (activeTab === "modules-panel" && modulesChanged) renderModules($("#modules-panel"), state.modules, state.moduleStats);
}

async function onReset(data) {
  state.height = Math.max(0, data.height - 0);
  await loadAgents();
  await loadModules();
  if (state.open) await refreshAgent();
}

// -- tabs and periodic reads ----------------------------------------------------------------------------
let activeTab = "agent-panel";
function selectTab(id) {
  activeTab = id;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === id);
  for (const p of document.querySelectorAll(".panel")) p.classList.toggle("on", p.id === id);
  renderActive().catch(() => {});
}

async function renderActive() {
  if (activeTab === "chain-panel") renderChain($("#chain-panel"), { blocks: state.blocks }, state.status, state.names, state.evidence);
  else if (activeTab === "modules-panel") renderModules($("#modules-panel"), state.modules, state.moduleStats);
  else if (activeTab === "governance-panel") {
    const validators = await getJSON("/v1/staking/validators");
    const fromEpoch = validators ? Math.max(0, validators.epoch - 7) : 0;
    const [sets, proposals] = await Promise.all([
      getJSON(`/v1/staking/sets?from_epoch=${fromEpoch}&limit=10`), getJSON("/v1/governance/proposals?limit=50"),
    ]);
    if (validators) for (const v of validators.validators) state.names.set(v.validator_id, v.name || v.operator);
    renderGovernance($("#governance-panel"), validators, sets, proposals, state.names);
  }
}

async function pollStatus() {
  try {
    state.status = await getJSON("/v1/status");
    const ev = await getJSON("/v1/evidence");
    state.evidence = ev ? ev.evidence.length : 0;
    if (activeTab === "chain-panel") renderChain($("#chain-panel"), { blocks: state.blocks }, state.status, state.names, state.evidence);
    if (activeTab === "governance-panel") await renderActive();
  } catch (_) { /* the node is away; the stream's state says so */ }
}

// -- start -----------------------------------------------------------------------------------------------
function bindControls() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  $("#z-layer").addEventListener("change", (e) => {
    map.z = e.target.value === "all" ? "all" : Number(e.target.value);
    map.dirty = true;
  });
  $("#colour-mode").addEventListener("change", (e) => { map.mode = e.target.value; map.dirty = true; });
  $("#fit-view").addEventListener("click", () => map.fit());
  $("#agent-search").addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const id = e.target.value.trim();
    if (!id) return;
    if (!map.agents.has(id)) { $("#hover-info").textContent = `no agent ${id}`; return; }
    const p = map.position(id);
    map.cam.x = p[0]; map.cam.y = p[1];
    if (map.z !== "all" && map.z !== p[2]) { map.z = p[2]; $("#z-layer").value = String(p[2]); }
    openAgent(id).catch(() => {});
  });
  map.onSelect = (id) => openAgent(id).catch(() => {});
  map.onHover = (ids) => { $("#hover-info").textContent = ids.length ? ids.slice(0, 5).join(", ") + (ids.length > 5 ? ` +${ids.length - 5}` : "") : ""; };
}

async function start() {
  bindControls();
  const hello = await getJSON("/v1/status");
  if (hello) {
    $("#chain-id").textContent = hello.chain_id;
    $("#node-moniker").textContent = hello.moniker;
    state.status = hello;
  }
  await loadAgents();
  map.fit();
  const validators = await getJSON("/v1/staking/validators");
  if (validators) for (const v of validators.validators) state.names.set(v.validator_id, v.name || v.operator);
  await loadModules();
  await backfillModuleEvents();
  state.height = hello ? hello.execution_height : 0;
  $("#chain-height").textContent = state.height;
  followStream({
    hello: (d) => { $("#chain-id").textContent = d.chain_id; $("#node-moniker").textContent = d.moniker; },
    block: onBlock,
    reset: (d) => { onReset(d).catch(() => {}); },
    state: (on) => { setConnected(on); if (on) state.ready = true; },
  }, () => state.height);
  setInterval(pollStatus, 2000);
  setInterval(() => { if (state.open) refreshAgent().catch(() => {}); }, 10_000);
}

window.awViewer = {
  get ready() { return state.ready; },
  get connected() { return state.connected; },
  get height() { return state.height; },
  get moveLog() { return state.moveLog; },
  agentCount: () => map.agents.size,
  agentPosition: (id) => map.position(id),
  openAgent: (id) => openAgent(id),
  frameStats: () => map.frameStats(),
  resetFrameStats: () => map.resetFrameStats(),
  forceRedraw: (on) => { map.continuous = !!on; map.dirty = true; },
  lastEventAt: () => state.lastMoveAt,
};

start().catch((err) => {
  $("#conn-status").textContent = "reconnecting";
  $("#hover-info").textContent = `could not load the world: ${err.message}; reload the page`;
});
