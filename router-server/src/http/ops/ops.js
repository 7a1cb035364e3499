// The fleet page: polls /ops/summary.json every second and redraws in place (morphdom
// patches the elements already there, so a button under the pointer or a field being
// typed into is the same element after a poll): one line per region, problem regions
// first; the nodes only of the regions opened (a click on
// the region's line) and of the search, problem nodes first. A small fleet comes with
// every region open. Registry values are written as text (textContent), never parsed
// as markup. Actions call the admin API with the token kept in this tab's session
// storage.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "gateway-router-admin-token";
let last = null; // previous poll's counters, for rates
let adminAvailable = false;
const opened = new Set(); // regions whose nodes are listed
let search = "";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-") || k === "role") e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

// Replaces `parent`'s children with `children` by patching: an element that is still
// there (a region by its name, a node's row by its id, others by place) is updated,
// not replaced. A field keeps what the operator typed into it, and the focus: moving
// a row to its new place (problem nodes first) takes the focus from what it holds,
// so it is given back.
function redraw(parent, children) {
  const focused = document.activeElement;
  const next = parent.cloneNode(false);
  next.append(...children);
  morphdom(parent, next, {
    childrenOnly: true,
    getNodeKey: n => {
      if (n.nodeType !== Node.ELEMENT_NODE) return undefined;
      if (n.tagName === "TR" && n.dataset.node) return "node " + n.dataset.node;
      if (n.tagName === "SECTION" && n.dataset.region) return "region " + n.dataset.region;
      return n.id || undefined;
    },
    onBeforeElUpdated: (from, to) => {
      if (from.tagName === "INPUT") to.value = from.value;
      // The policy refuses style attributes written as markup (morphdom's way), so
      // the bars' widths go through the style object.
      if (from.style.cssText !== to.style.cssText) from.style.cssText = to.style.cssText;
      return !from.isEqualNode(to);
    },
  });
  if (focused && focused !== document.activeElement && focused.isConnected) focused.focus();
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function age(ms) {
  if (ms === null || ms === undefined) return "-";
  return ms < 10000 ? (ms / 1000).toFixed(1) + "s" : Math.round(ms / 1000) + "s";
}

function renderRouter(f) {
  const r = f.router;
  const status = document.getElementById("status");
  const problems = [];
  if (!r.ready) problems.push("not ready");
  if (!r.registry_connected) problems.push("registry disconnected");
  if (r.protect_active) problems.push("PROTECT ALARM");
  if (r.stale) problems.push("answers stale");
  for (const g of r.registries) {
    for (const a of g.alarms) problems.push("etcd ALARM " + a.toUpperCase() + " (" + g.name + ")");
    if (g.lag_ms !== null && g.lag_ms > r.max_lag_ms) problems.push(g.name + " view " + (g.lag_ms / 1000).toFixed(1) + "s behind etcd");
  }
  status.textContent = problems.length ? problems.join(" · ") : "following the registry";
  status.className = problems.length ? "status bad" : "status";
  status.dataset.connected = String(r.registry_connected);

  let rates = { ok: 0, r429: 0, r503: 0 };
  const now = performance.now();
  if (last) {
    const dt = (now - last.t) / 1000;
    rates = {
      ok: (r.gateways_ok - last.ok) / dt,
      r429: (r.rate_limited - last.r429) / dt,
      r503: (r.no_gateways - last.r503) / dt,
    };
  }
  last = { t: now, ok: r.gateways_ok, r429: r.rate_limited, r503: r.no_gateways };
  const items = [
    ["registry", r.registry_connected ? "connected" : "DISCONNECTED", !r.registry_connected],
    ["revision", r.revision],
    ["snapshot age", r.snapshot_age_secs === null ? "-" : r.snapshot_age_secs.toFixed(1) + "s"],
    ["protect", r.protect_active ? "ALARM: holding departed nodes" : "ok", r.protect_active],
    ["routers", r.routers_live + " (this one's answers count " + r.herd_scale.toFixed(2) + "x)"],
    ["versions", versions(r.routers), new Set(r.routers.map(p => p.version)).size > 1],
    ["/gateways", rates.ok.toFixed(1) + "/s"],
    ["429", rates.r429.toFixed(1) + "/s", rates.r429 > 0],
    ["503 no_gateways", rates.r503.toFixed(1) + "/s", rates.r503 > 0],
    ["max_load", pct(r.max_load)],
    ["policies", policies(r.policies)],
    ["demoted", demoted(r.demoted), r.demoted.length > 0],
  ];
  const box = document.getElementById("router");
  redraw(box, items.map(([k, v, alarm]) =>
    el("span", { class: "item" + (alarm ? " alarm" : "") }, k + ": ", el("b", {}, v))));

  redraw(document.getElementById("dc-list"), r.registries.map(g => {
    const state = !g.loaded ? "LOADING" : g.dropped ? "DROPPED (out of reach)"
      : g.demoted ? "DEMOTED (out of reach " + g.unreachable_secs + "s)"
      : !g.connected ? "unreachable " + g.unreachable_secs + "s"
      : g.protecting ? "PROTECT ALARM" : "connected";
    const lagging = g.lag_ms !== null && g.lag_ms > r.max_lag_ms;
    const bad = !g.connected || g.demoted || g.dropped || g.protecting || g.alarms.length > 0 || lagging;
    return el("tr", { class: bad ? "alarm" : "", "data-registry": g.name },
      el("td", {}, el("b", {}, g.name), g.local ? " (this router's own)" : ""),
      el("td", { "data-state": state }, state),
      el("td", {}, String(g.nodes)),
      el("td", {}, String(g.revision)),
      el("td", { class: lagging ? "alarm" : "" }, g.lag_ms === null ? "-" : g.lag_ms + " ms"),
      el("td", { "data-alarms": g.alarms.join(",") },
        g.alarms.length ? g.alarms.map(a => "ALARM " + a.toUpperCase()).join(" · ") : "none"));
  }));

  renderDns(r.dns);

  const inv = document.getElementById("invalid");
  inv.hidden = r.invalid.length === 0;
  redraw(document.getElementById("invalid-list"),
    r.invalid.map(i => el("li", {}, el("code", {}, i.key), " — " + i.reason)));

  adminAvailable = r.admin;
  document.getElementById("admin").hidden = !r.admin;
  const has = !!token();
  document.getElementById("token-clear").hidden = !has;
  document.getElementById("token").hidden = has;
  document.getElementById("token-save").hidden = has;
  renderAudit(r.admin && has);
}

// The audit trail's newest changes, from the admin API (with the token), once every
// few polls.
let auditPolled = 0;
async function renderAudit(show) {
  const box = document.getElementById("audit");
  box.hidden = !show;
  if (!show || (auditPolled++ % 5) !== 0) return;
  const res = await fetch("/admin/audit?limit=20", {
    cache: "no-store", headers: { "Authorization": "Bearer " + token() } });
  if (!res.ok) return;
  const body = await res.json();
  const short = v => { const s = v === null ? "-" : JSON.stringify(v); return s.length > 60 ? s.slice(0, 60) + "…" : s; };
  redraw(document.getElementById("audit-list"), body.entries.map(e =>
    el("tr", { "data-audit": e.action },
      el("td", {}, age(Date.now() - e.at_ms)),
      el("td", {}, e.by), el("td", {}, e.via), el("td", {}, e.action),
      el("td", {}, el("code", {}, e.key)),
      el("td", {}, short(e.before) + " → " + short(e.after)))));
}

// DNS answers by response code, and the rate limit's drops, with their rates since
// the last poll.
let lastDns = null;
function renderDns(d) {
  const box = document.getElementById("dns");
  box.hidden = !d;
  if (!d) return;
  document.getElementById("dns-zone").textContent = d.zone;
  const rows = Object.entries(d.by_rcode).map(([k, v]) => [k, v]);
  rows.push(["RRL dropped", d.rrl_dropped], ["RRL truncated", d.rrl_slipped]);
  const now = performance.now();
  const rate = (k, v) => {
    if (!lastDns || !(k in lastDns.v)) return "-";
    return ((v - lastDns.v[k]) / ((now - lastDns.t) / 1000)).toFixed(1);
  };
  redraw(document.getElementById("dns-list"), rows.map(([k, v]) => {
    const bad = k !== "NOERROR" && k !== "NXDOMAIN" && v > 0;
    return el("tr", { class: bad ? "alarm" : "", "data-dns": k },
      el("td", {}, k), el("td", {}, rate(k, v)), el("td", { "data-total": String(v) }, String(v)));
  }));
  lastDns = { t: now, v: Object.fromEntries(rows) };
}

function nodeRow(n, maxLoad) {
  const fill = el("div", { class: "fill" });
  fill.style.width = Math.min(100, 100 * n.load).toFixed(2) + "%";
  const proj = el("div", { class: "proj" });
  proj.style.left = Math.min(100, 100 * n.projected_load).toFixed(2) + "%";
  const bar = el("div", { class: "bar", "data-load": n.load.toFixed(4), title: pct(n.load) }, fill, proj);
  const ports = Object.entries(n.ports).map(([p, v]) => p + ":" + v).join(" ");
  const row = el("tr", { class: "node " + n.state, "data-node": n.id, "data-state": n.state },
    el("td", {}, el("code", {}, n.id)),
    el("td", {}, n.state),
    el("td", { class: "bar-cell" }, bar),
    el("td", {}, n.connections + " / " + n.capacity),
    el("td", { class: "proj-text" }, pct(n.projected_load)),
    el("td", {}, ports),
    el("td", {}, age(n.report_age_ms)),
    el("td", {}, n.hook || "-"));
  if (adminAvailable && token()) {
    // A click on one reaches `act` through the document's handler.
    const percent = el("input", { type: "number", min: 1, max: 100, value: 20, "data-percent": n.id });
    const button = action => el("button", {
      type: "button", "data-action": action, "data-node": n.id, "data-dc": n.dc || "",
    }, action);
    row.append(el("td", { class: "actions" },
      n.state === "draining" ? button("serve") : button("drain"), button("migrate"), percent, "%"));
  }
  return row;
}

function nodeTable(list, maxLoad) {
  const head = el("tr", {}, ...["node", "state", "connections / capacity", "", "projected", "ports", "report age", "hook"]
    .map(h => el("th", {}, h)));
  const parts = [el("table", {}, el("thead", {}, head), el("tbody", {}, ...list.nodes.map(n => nodeRow(n, maxLoad))))];
  if (list.more > 0) parts.push(el("p", { class: "more", "data-more": String(list.more) },
    list.more + " more (search to narrow)"));
  return parts;
}

function countsText(r) {
  const order = ["overloaded", "unhealthy", "draining", "serving"];
  return order.filter(k => r.counts[k]).map(k => r.counts[k] + " " + k).join(", ");
}

function renderRegions(f) {
  const main = document.getElementById("regions");
  const found = document.getElementById("found");
  found.hidden = !f.found;
  if (f.found) {
    document.getElementById("found-count").textContent =
      String(f.found.nodes.length + f.found.more) + " nodes match";
    redraw(document.getElementById("found-list"), nodeTable(f.found, f.router.max_load));
  }
  // Problem regions first (the router's order).
  redraw(main, f.regions.map(r => {
    const dc = r.dcs.join(", ");
    const total = Object.values(r.counts).reduce((a, b) => a + b, 0);
    const open = !!r.nodes;
    const opener = f.all_open ? {} : { "data-toggle": r.region, tabIndex: 0, role: "button" };
    const title = el("h2", opener,
      f.all_open ? "" : el("span", { class: "toggle" }, open ? "▾ " : "▸ "),
      (dc ? dc + " · " : "") + r.region,
      el("span", { class: "mean" }, total + " nodes, mean load " + pct(r.mean_load)
        + ", highest projected " + pct(r.max_projected)),
      el("span", { class: "counts" + (r.problems ? " alarm" : ""), "data-problems": String(r.problems) },
        countsText(r)));
    return el("section", { class: "region" + (r.problems ? " troubled" : ""), "data-region": r.region, "data-dc": dc,
      "data-open": String(open) }, title, ...(open ? nodeTable(r.nodes, f.router.max_load) : []));
  }));
}

// A region's line opens or closes its node list.
function toggle(region) {
  if (opened.has(region)) opened.delete(region); else opened.add(region);
  poll();
}

// A node's action button: drain / serve, or migrate the percentage in its row.
function act(button) {
  const { node, dc, action } = button.dataset;
  const percent = button.closest("tr").querySelector("input[data-percent]");
  command(node, dc, action, action === "migrate" ? { percent: Number(percent.value) } : null);
}

async function command(node, dc, action, body) {
  const out = document.getElementById("action-result");
  const where = dc ? "?registry=" + encodeURIComponent(dc) : "";
  const res = await fetch("/admin/nodes/" + encodeURIComponent(node) + "/" + action + where, {
    method: "POST",
    headers: Object.assign({ "Authorization": "Bearer " + token() },
      body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    out.textContent = "the token was refused; enter it again";
  } else if (res.ok) {
    const cmd = JSON.parse(text).command;
    out.textContent = action + " issued to " + node + " (command " + cmd.id + ")";
  } else {
    let msg = text;
    try { msg = JSON.parse(text).error.message; } catch (_) { /* keep the text */ }
    out.textContent = action + " " + node + " failed: " + res.status + " " + msg;
  }
  out.dataset.status = String(res.status);
  poll();
}

async function poll() {
  try {
    const q = new URLSearchParams();
    for (const r of opened) q.append("open", r);
    if (search) q.set("q", search);
    const res = await fetch("/ops/summary.json?" + q, { cache: "no-store" });
    const f = await res.json();
    document.body.dataset.nodes = String(f.nodes);
    renderRouter(f);
    renderRegions(f);
    document.body.dataset.revision = String(f.router.revision);
    document.body.dataset.polled = String(Date.now());
  } catch (e) {
    const status = document.getElementById("status");
    status.textContent = "router unreachable: " + e;
    status.className = "status bad";
  }
}

// Buttons and region lines are handled here, on the document: a redraw patches
// elements and carries no handlers.
document.addEventListener("click", ev => {
  const button = ev.target.closest("button[data-action]");
  if (button) return act(button);
  const line = ev.target.closest("[data-toggle]");
  if (line) toggle(line.dataset.toggle);
});
document.addEventListener("keydown", ev => {
  const line = ev.target.closest && ev.target.closest("[data-toggle]");
  if (line && (ev.key === "Enter" || ev.key === " ")) {
    ev.preventDefault();
    toggle(line.dataset.toggle);
  }
});
document.getElementById("token-form").addEventListener("submit", ev => {
  ev.preventDefault();
  const t = document.getElementById("token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  document.getElementById("token").value = "";
  poll();
});
let searchTimer = null;
document.getElementById("search").addEventListener("input", ev => {
  search = ev.target.value.trim();
  clearTimeout(searchTimer);
  searchTimer = setTimeout(poll, 200);
});
document.getElementById("token-clear").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  poll();
});

poll();
setInterval(poll, POLL_MS);

// The operator policies in force, one phrase each: whose clients, what is excluded,
// and each share with the answers it got.
function policies(list) {
  if (list.length === 0) return "none";
  return list.map(p => {
    const who = p.region + (p.isp ? "/" + p.isp : "");
    const parts = [];
    if (p.exclude && p.exclude.length) parts.push("not " + p.exclude.join(", "));
    if (p.ratios && p.ratios.length) {
      parts.push(p.ratios.map((x, k) => x.to + " " + x.percent + "% (" + p.answers[k] + ")").join(", "));
    }
    if (p.caps && p.caps.length) {
      parts.push(p.caps.map(x => x.to + " first in at most " + x.percent + "%").join(", "));
    }
    return p.name + " [" + who + "]: " + parts.join("; ");
  }).join(" · ");
}

// Gateways demoted for a client network, one phrase each: whose clients, which
// gateway, what they reported, how long it lasts.
function demoted(list) {
  if (list.length === 0) return "none";
  return list.map(d => {
    const who = (d.region || "any region") + (d.isp ? "/" + d.isp : "");
    return d.gateway + " for " + who + " (" + d.ok + " ok, " + d.failed + " failed; "
      + Math.ceil(d.remaining_ms / 1000) + "s left)";
  }).join(" · ");
}

// "0.1.0 (1a2b3c4) x3": how many live routers run each version (two or more: an
// upgrade in progress, shown as an alarm so it is not forgotten half-way).
function versions(routers) {
  const count = new Map();
  for (const p of routers) count.set(p.version, (count.get(p.version) || 0) + 1);
  return [...count].map(([v, n]) => v + " \u00d7" + n).join(", ") || "-";
}
