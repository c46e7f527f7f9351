// The node's JSON API and its push stream (GET /v1/stream, Server-Sent Events).

/** GET a JSON document; null for 404; throws Error(message) for anything else. */
export async function getJSON(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (resp.status === 404) return null;
  if (!resp.ok) {
    let msg = `${resp.status}`;
    try { msg = (await resp.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${msg}`);
  }
  return resp.json();
}

/** Every agent record, paging through GET /v1/agents 1,000 at a time. */
export async function loadAllAgents() {
  const out = [];
  let after = null;
  for (;;) {
    const q = after === null ? "" : `&after=${encodeURIComponent(after)}`;
    const page = await getJSON(`/v1/agents?limit=1000${q}`);
    if (!page) break;
    out.push(...page.agents);
    if (page.next_after === null || page.next_after === undefined) break;
    after = page.next_after;
  }
  return out;
}

/**
 * Follow the node's stream. handlers: {hello(data), block(data), reset(data), state(connected)}.
 * The browser's EventSource reconnects by itself (sending Last-Event-ID, so no block is missed);
 * when the node refused the connection outright, a new one is opened after a pause, resuming
 * after the last height seen (lastHeight()).
 */
export function followStream(handlers, lastHeight) {
  let source = null;
  const open = () => {
    const h = lastHeight();
    source = new EventSource(h > 0 ? `/v1/stream?from_height=${h}` : "/v1/stream");
    source.onopen = () => handlers.state(true);
    source.onerror = () => {
      handlers.state(false);
      if (source.readyState === EventSource.CLOSED) setTimeout(open, 2000);
    };
    for (const name of ["hello", "block", "reset"]) {
      source.addEventListener(name, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch (_) { return; }
        handlers[name](data);
      });
    }
  };
  open();
}
