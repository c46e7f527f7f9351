// The side panels: an agent's page, the chain, modules, staking and governance.

export function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
export const short = (h, n = 10) => (typeof h === "string" && h.length > n ? h.slice(0, n) + "…" : esc(h));

// The action kind behind the first event of an applied action.
const KIND_OF_EVENT = {
  "domain.agent_created": "create_agent", "domain.agent_moved": "move_agent",
  "domain.radiation_harvested": "harvest_radiation", "domain.resource_transferred": "transfer_resource",
  "module.artifact_compiled": "compile_module_artifact_from_source", "module.build_requested": "compile_module_artifact_from_source",
  "module.artifact_deployed": "deploy_module_artifact", "module.installed": "install_module_from_artifact",
  "module.upgraded": "upgrade_module_from_artifact", "module.activation_changed": "set_module_instance_active",
  "governance.proposal_submitted": "propose", "governance.vote_cast": "vote_proposal",
};

/** The actions ``agentId`` signed, newest first, from events (newest first) grouped by action id. */
export function agentActions(events, agentId) {
  const byId = new Map();
  for (const e of events) {
    const d = e.data || {};
    if (!d.action_id || d.agent_id !== agentId) continue;
    let a = byId.get(d.action_id);
    if (!a) byId.set(d.action_id, (a = { action_id: d.action_id, height: e.height, events: [] }));
    a.events.unshift(e); // oldest first within an action
  }
  const out = [];
  for (const a of byId.values()) {
    const first = a.events[0], d = first.data || {};
    const rejected = a.events.find((e) => e.kind === "domain.action_rejected");
    out.push({
      action_id: a.action_id, height: a.height,
      kind: rejected ? rejected.data.action_kind : (KIND_OF_EVENT[first.kind] || first.kind),
      outcome: rejected ? "rejected" : "applied",
      reason: rejected ? rejected.data.reason : "",
      fee: d.fee, memo: d.memo || (rejected && rejected.data.memo) || "",
      summary: rejected ? "" : describe(first),
    });
  }
  return out;
}

function describe(e) {
  const d = e.data || {};
  switch (e.kind) {
    case "domain.agent_moved": return `to (${(d.to || []).join(", ")})`;
    case "domain.resource_transferred": return `${d.amount} ${d.kind} to ${d.to}`;
    case "domain.radiation_harvested": return `+${d.amount ?? ""} electricity`;
    case "domain.agent_created": return `created ${d.created_agent_id}`;
    default: return d.module_id ? `${d.module_id} ${d.version ?? ""}` : "";
  }
}

export function sparkline(canvas, series, colour) {
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = canvas.clientWidth || 300), h = (canvas.height = canvas.clientHeight || 48);
  ctx.clearRect(0, 0, w, h);
  if (series.length < 2) return;
  const ys = series.map((p) => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const x0 = series[0][0], x1 = series[series.length - 1][0], xs = x1 - x0 || 1;
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  series.forEach(([x, y], i) => {
    const px = ((x - x0) / xs) * (w - 2) + 1, py = h - 3 - ((y - lo) / span) * (h - 6);
    i ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
  });
  ctx.stroke();
}

export function bars(canvas, values, colour) {
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = canvas.clientWidth || 300), h = (canvas.height = canvas.clientHeight || 48);
  ctx.clearRect(0, 0, w, h);
  const hi = Math.max(1, ...values), bw = w / Math.max(values.length, 1);
  ctx.fillStyle = colour;
  values.forEach((v, i) => ctx.fillRect(i * bw + 1, h - (v / hi) * (h - 2), Math.max(1, bw - 2), (v / hi) * (h - 2)));
}

export function renderAgent(el, view) {
  const { record, actions, history, modules } = view;
  if (!record) {
    el.innerHTML = `<p class="bad">No agent ${esc(view.id)} on this node.</p>`;
    return;
  }
  const last = actions[0];
  const lastHtml = last
    ? `<span class="${last.outcome === "applied" ? "ok" : "bad"}">${last.outcome}</span> ${esc(last.kind)} at height ${last.height}` +
      (last.reason ? ` — ${esc(last.reason)}` : "") + (last.memo ? ` <span class="memo">“${esc(last.memo)}”</span>` : "")
    : `<span class="dim">no action seen yet</span>`;
  const rows = actions.map((a) => `<tr><td class="num">${a.height}</td><td>${esc(a.kind)}<br>` +
    `<span class="dim">${esc(a.summary)}</span>${a.memo ? `<br><span class="memo">“${esc(a.memo)}”</span>` : ""}</td>` +
    `<td class="${a.outcome === "applied" ? "ok" : "bad"}">${a.outcome}${a.reason ? `<br><span class="dim">${esc(a.reason)}</span>` : ""}</td>` +
    `<td class="num">${a.fee ?? ""}</td></tr>`).join("");
  const mods = modules.map((m) => `<tr><td>${esc(m.instance_id)}</td><td>${esc(m.module_id)} ${esc(m.version)}</td>` +
    `<td class="num">${m.calls}</td><td class="num">${m.failures}</td><td class="num">${m.fees}</td></tr>`).join("");
  el.innerHTML = `
    <h3>${esc(record.agent_id)}</h3>
    <div class="kv">
      <div>position</div><div>(${record.position.join(", ")})</div>
      <div>electricity</div><div>${record.electricity}</div>
      <div>data</div><div>${record.data}</div>
      <div>nonce</div><div>${record.last_nonce}</div>
      <div>created at height</div><div>${record.registered_at ?? 0}</div>
    </div>
    <div id="last-action-outcome">last action: ${lastHtml}</div>
    <h3>Balances since this page opened</h3>
    <div class="dim">electricity</div><canvas class="spark" id="spark-e"></canvas>
    <div class="dim">data</div><canvas class="spark" id="spark-d"></canvas>
    <h3>Recent actions</h3>
    ${rows ? `<table><tr><th>height</th><th>action (and stated intent)</th><th>outcome</th><th>fee</th></tr>${rows}</table>` : `<p class="dim">none in the recent events</p>`}
    <h3>Modules it owns or that target it</h3>
    ${mods ? `<table><tr><th>instance</th><th>module</th><th>calls</th><th>failed</th><th>fees</th></tr>${mods}</table>` : `<p class="dim">none</p>`}`;
  sparkline(el.querySelector("#spark-e"), history.map((p) => [p.height, p.electricity]), "#4fc3f7");
  sparkline(el.querySelector("#spark-d"), history.map((p) => [p.height, p.data]), "#81c784");
}

export function renderChain(el, chain, status, names, evidenceCount) {
  const blocks = chain.blocks.slice(-20);
  const times = blocks.map((b) => b.time_ms);
  const interval = times.length > 1 ? (times[times.length - 1] - times[0]) / (times.length - 1) : 0;
  const validators = [...new Set(blocks.flatMap((b) => b.signers))].sort();
  const name = (v) => esc(names.get(v) || short(v, 8));
  const recent = blocks.slice().reverse().map((b) => `<tr><td class="num">${b.height}</td><td class="num">${b.actions}</td>` +
    `<td>${name(b.proposer)}</td><td class="sigs">${validators.map((v) => `<span class="${b.signers.includes(v) ? "on" : ""}" title="${name(v)}"></span>`).join("")}</td>` +
    `<td class="mono">${short(b.execution_state_root, 12)}</td></tr>`).join("");
  const peers = ((status && status.peer_execution) || []).map((p) => `<tr><td class="mono">${short(p.peer, 16)}</td>` +
    `<td class="num">${p.execution_height}</td><td class="mono">${short(p.execution_state_root, 12)}</td>` +
    `<td class="${p.agrees === false ? "bad" : p.agrees ? "ok" : "dim"}">${p.agrees === null ? "not executed here yet" : p.agrees ? "agrees" : "DIFFERS"}</td></tr>`).join("");
  el.innerHTML = `
    <div class="kv">
      <div>height</div><div>${status ? status.height : "-"} (executed ${status ? status.execution_height : "-"})</div>
      <div>block interval</div><div>${interval ? (interval / 1000).toFixed(2) + " s" : "-"} (last ${blocks.length} blocks)</div>
      <div>state root</div><div class="mono">${status ? short(status.execution_state_root, 24) : "-"}</div>
      <div>execution mismatches</div><div class="${status && status.execution_mismatches ? "bad" : ""}">${status ? status.execution_mismatches : "-"}</div>
      <div>evidence</div><div>${evidenceCount}</div>
      <div>peers</div><div>${status ? status.peer_count : "-"}</div>
      <div>mempool</div><div>${status ? status.mempool_size : "-"}</div>
    </div>
    <h3>Actions per block</h3><canvas class="bars" id="bars"></canvas>
    <h3>Recent blocks</h3>
    <table><tr><th>height</th><th>actions</th><th>proposer</th><th>signed the certificate</th><th>state root</th></tr>${recent}</table>
    <h3>Execution roots of the peers</h3>
    ${peers ? `<table><tr><th>peer</th><th>height</th><th>state root</th><th></th></tr>${peers}</table>` : `<p class="dim">no peer report yet</p>`}`;
  bars(el.querySelector("#bars"), chain.blocks.slice(-60).map((b) => b.actions), "#4fc3f7");
}

export function renderModules(el, mods, stats) {
  if (!mods) { el.innerHTML = `<p class="dim">loading…</p>`; return; }
  const arts = mods.artifacts.map((a) => `<tr><td>${esc(a.module_id)}</td><td>${esc(a.version)}</td><td>${esc(a.publisher)}</td>` +
    `<td class="mono">${short(a.wasm_hash, 10)}</td><td class="num">${a.published_at}</td></tr>`).join("");
  const insts = mods.instances.map((i) => {
    const s = stats.get(i.instance_id) || { calls: 0, failures: {}, fees: 0, upgrades: 0 };
    const fails = Object.entries(s.failures).map(([c, n]) => `${esc(c)} ${n}`).join(", ");
    return `<tr><td>${esc(i.instance_id)}</td><td>${esc(i.module_id)} ${esc(i.version)}${s.upgrades ? ` <span class="dim">(${s.upgrades} upgrade${s.upgrades > 1 ? "s" : ""})</span>` : ""}</td>` +
      `<td>${esc(i.owner_agent_id)}<br><span class="dim">${esc(i.install_target)}</span></td>` +
      `<td class="${i.active ? "ok" : "bad"}">${i.active ? "active" : "off"}</td><td class="num">${s.calls}</td>` +
      `<td>${fails || "-"}</td><td class="num">${s.fees}</td></tr>`;
  }).join("");
  el.innerHTML = `
    <h3>Instances</h3>
    ${insts ? `<table><tr><th>instance</th><th>module</th><th>owner / target</th><th></th><th>calls</th><th>failures</th><th>fees</th></tr>${insts}</table>` : `<p class="dim">none installed</p>`}
    <p class="dim">calls, failures and fees counted over the events this page has read (the last 2,000 module events, then live)</p>
    <h3>Artifacts</h3>
    ${arts ? `<table><tr><th>module</th><th>version</th><th>publisher</th><th>wasm_hash</th><th>at</th></tr>${arts}</table>` : `<p class="dim">none</p>`}`;
}

export function renderGovernance(el, validators, sets, proposals, names) {
  const vals = (validators ? validators.validators : []).map((v) => `<tr><td>${esc(v.name || short(v.validator_id, 8))}</td>` +
    `<td>${esc(v.operator)}</td><td class="num">${v.bonded}</td><td class="num">${v.power}</td>` +
    `<td>${v.in_current_set ? "yes" : v.next_power ? "next epoch" : "no"}</td>` +
    `<td class="${v.jailed ? "bad" : ""}">${v.jailed ? `until ${v.jailed_until} (${esc(v.jail_reason)})` : "no"}</td><td class="num">${v.slashed}</td></tr>`).join("");
  const setRows = (sets ? sets.sets : []).slice(-8).reverse().map((s) => `<tr><td class="num">${s.epoch}</td>` +
    `<td>${s.validators.map(([v, p]) => `${names.has(v) ? esc(names.get(v)) : short(v, 8)}:${p}`).join(" ")}</td><td class="num">${s.total_power}</td></tr>`).join("");
  const props = (proposals ? proposals.proposals : []).map((p) => `<tr><td class="num">${p.proposal_id}</td><td>${esc(p.title)}` +
    `<br><span class="dim">${esc(p.kind)} by ${esc(p.proposer)}</span></td><td>${esc(p.status)}</td>` +
    `<td>${Object.entries(p.tally || {}).map(([k, n]) => `${esc(k)} ${n}`).join(", ") || "-"}</td><td class="num">${p.voting_end}</td></tr>`).join("");
  el.innerHTML = `
    <h3>Validators${validators ? ` (epoch ${validators.epoch}, total power ${validators.total_power})` : ""}</h3>
    ${vals ? `<table><tr><th>name</th><th>operator</th><th>bonded</th><th>power</th><th>in set</th><th>jailed</th><th>slashed</th></tr>${vals}</table>` : `<p class="dim">none</p>`}
    <h3>Validator set by epoch</h3>
    ${setRows ? `<table><tr><th>epoch</th><th>validators:power</th><th>total</th></tr>${setRows}</table>` : `<p class="dim">none</p>`}
    <h3>Proposals</h3>
    ${props ? `<table><tr><th>#</th><th>title</th><th>status</th><th>tally</th><th>voting ends</th></tr>${props}</table>` : `<p class="dim">no proposal yet</p>`}`;
}
