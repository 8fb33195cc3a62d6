// canaryd's operator console: plain JavaScript, no build step, no framework. Talks only to this origin:
// /api/v1 over fetch with the bearer token, and the deployment WebSocket with ?token= (browsers cannot set
// headers on a WebSocket). The token lives in sessionStorage: entered once per browser session.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "canaryd.token";
const SCOPES = ["read", "deploy", "operate", "admin"];
const TERMINAL = new Set(["completed", "rolled_back", "failed"]);
const STATUS_TEXT = {
  pending: "pending", deploying: "deploying", monitoring: "monitoring", paused: "paused",
  promoting: "promoting", rolling_back: "rolling back", completed: "completed",
  rolled_back: "rolled back", failed: "failed",
};
const OUTCOME_TEXT = { pass: "PASS", fail: "FAIL", inconclusive: "INCONCLUSIVE" };

const state = { token: sessionStorage.getItem(TOKEN_KEY), who: null, view: null };

// --- small helpers -------------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function notice(text, kind = "info") {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = !text;
}

function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false }) + (Date.now() - d > 86400000 ? ` ${d.toLocaleDateString()}` : "");
}

function pct(value, digits = 1) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(digits)} %`;
}

// A mirror test in its mirror phase (stage 1): the canary answers copies only, clients get stable.
function mirroring(s) {
  return s.strategy === "mirror" && s.config && s.config.mirror && s.current_stage <= 1
    && !["promoting", "completed"].includes(s.canary_status);
}

// Green beside blue on every server: strategy blue_green, or a mirror test with then: blue_green.
function blueGreen(s) {
  return s.strategy === "blue_green"
    || (s.strategy === "mirror" && !!s.config && !!s.config.mirror && s.config.mirror.then === "blue_green");
}

// A rolling update's batches (the status's `batches`): what the page says instead of a canary's share.
const BATCH_CLASS = {
  upgraded: "done", judged: "current", deploying: "current", upgrading: "current",
  "to come": "to come", "rolled back": "stopped", "not run": "not run",
};

function batchNames(b) {
  return b.servers.map((r) => r.name || `#${r.id}`).join(", ");
}

function rollingSummary(s) {
  const batches = s.batches || [];
  const active = batches.find((b) => b.state === "deploying") || batches.find((b) => b.state === "judged");
  const count = (state) => batches.filter((b) => b.state === state).reduce((n, b) => n + b.servers.length, 0);
  const total = batches.reduce((n, b) => n + b.servers.length, 0);
  const now = !active ? `${batches.length} batches`
    : active.state === "judged"
      ? `batch ${active.batch} of ${batches.length} (${batchNames(active)}) is judged against the servers not yet upgraded`
      : `batch ${active.batch} of ${batches.length} (${batchNames(active)}) is drained and being deployed`;
  return `rolling update: ${now}; ${count("upgraded")} of ${total} servers upgraded and passed`;
}

function ms(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(1)} ms`;
}

function badge(status) {
  return el("span", { class: `badge st-${status}` }, STATUS_TEXT[status] || status);
}

async function api(path, options = {}) {
  const response = await fetch(API + path, {
    ...options,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = typeof body === "object" && body ? body.detail : body;
    const text = Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : String(detail);
    const error = new Error(`${response.status}: ${text}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function can(scope) {
  return state.who !== null && SCOPES.indexOf(state.who.scope) >= SCOPES.indexOf(scope);
}

// --- token ---------------------------------------------------------------------------------------------------

async function useToken(token) {
  state.token = token;
  try {
    state.who = await api("/whoami");
  } catch (error) {
    state.token = null;
    state.who = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenForm();
    notice(error.status === 401 ? "That token is not valid." : `Could not check the token: ${error.message}`, "error");
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token-form").hidden = true;
  document.getElementById("whoami").hidden = false;
  document.getElementById("whoami-text").textContent =
    `${state.who.name} · scope ${state.who.scope}${can("operate") ? "" : " (read-only view)"}`;
  notice("");
  return true;
}

function showTokenForm() {
  document.getElementById("token-form").hidden = false;
  document.getElementById("whoami").hidden = true;
}

document.getElementById("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("token-input");
  const token = input.value.trim();
  input.value = "";
  if (token && (await useToken(token))) route();
});

document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.who = null;
  closeView();
  showTokenForm();
  document.getElementById("main").replaceChildren(el("p", { class: "muted" }, "Token forgotten."));
});

// --- views ---------------------------------------------------------------------------------------------------

function closeView() {
  if (state.view && state.view.close) state.view.close();
  state.view = null;
}

async function route() {
  closeView();
  if (!state.token || !state.who) return;
  const match = location.hash.match(/^#\/deployments\/(\d+)$/);
  try {
    if (match) await showDeployment(Number(match[1]));
    else await showOverview();
  } catch (error) {
    notice(error.message, "error");
  }
}

window.addEventListener("hashchange", route);

async function showOverview() {
  const main = document.getElementById("main");
  const [apps, servers, deployments] = await Promise.all([
    api("/applications?limit=500"), api("/servers?limit=500"), api("/deployments?limit=200"),
  ]);
  const serverName = new Map(servers.map((s) => [s.id, s]));
  const appName = new Map(apps.map((a) => [a.id, a.name]));
  const filter = el("select", { id: "status-filter" },
    el("option", { value: "" }, "all"),
    el("option", { value: "active" }, "active"),
    ...Object.keys(STATUS_TEXT).map((s) => el("option", { value: s }, STATUS_TEXT[s])));
  const body = el("tbody");
  const fill = () => {
    const wanted = filter.value;
    const rows = deployments.filter((d) =>
      !wanted || (wanted === "active" ? !TERMINAL.has(d.canary_status) : d.canary_status === wanted));
    body.replaceChildren(...rows.map((d) => el("tr", {},
      el("td", {}, el("a", { href: `#/deployments/${d.id}` }, `#${d.id}`)),
      el("td", {}, appName.get(d.application_id) || d.application_id),
      el("td", {}, `${d.previous_version} → ${d.version}`),
      el("td", {}, badge(d.canary_status)),
      el("td", {}, d.total_stages ? `${d.current_stage} / ${d.total_stages}` : "—"),
      el("td", { class: "num" }, d.strategy === "ab" ? "A/B" : blueGreen(d) ? "blue-green" : pct(d.current_traffic_percentage)),
      el("td", {}, fmtTime(d.created_at)))));
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No deployments.")));
  };
  filter.addEventListener("change", fill);
  fill();
  main.replaceChildren(
    el("section", { class: "card" },
      el("h2", {}, "Applications"),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["Application", "Current version", "Proxy", "Servers"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...(apps.length ? apps.map((a) => el("tr", {},
          el("td", {}, a.name),
          el("td", {}, a.current_version),
          el("td", {}, `${a.proxy.kind} (generation ${a.proxy_generation})`),
          el("td", {}, a.server_ids.map((id) => serverName.get(id) ? `${serverName.get(id).name} (${serverName.get(id).host})` : `#${id}`).join(", ")))) :
          [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No applications."))]))))),
    el("section", { class: "card" },
      el("h2", {}, "Deployments"),
      el("p", {}, el("label", { for: "status-filter" }, "Status "), filter),
      el("div", { class: "scroll" }, el("table", { id: "deployments" },
        el("thead", {}, el("tr", {}, ...["Deployment", "Application", "Versions", "Status", "Stage", "Canary share", "Started"].map((h) => el("th", {}, h)))),
        body))));
}

// --- one deployment, live ------------------------------------------------------------------------------------

function chart(title, series, yLabel, height = 180) {
  const box = el("figure", { class: "chart" }, el("figcaption", {}, title));
  const data = [[], ...series.map(() => [])];
  const colors = ["#c0392b", "#2471a3", "#e67e22", "#5dade2"];
  const plot = new uPlot({
    width: 400, height, scales: { x: { time: true } },
    series: [{}, ...series.map((label, i) => ({ label, stroke: colors[i], width: 2, dash: i >= 2 ? [6, 4] : undefined, spanGaps: true }))],
    axes: [{}, { label: yLabel, size: 60 }],
    legend: { live: false },
  }, data, box);
  const resize = () => plot.setSize({ width: Math.max(240, box.clientWidth - 8), height });
  return {
    node: box, plot, data,
    add(t, values) {
      const xs = data[0];
      if (xs.length && t <= xs[xs.length - 1]) t = xs[xs.length - 1] + 0.001;
      xs.push(t);
      values.forEach((v, i) => data[i + 1].push(v === undefined ? null : v));
      plot.setData(data);
      box.dataset.points = String(xs.length); // lets a reader (and the browser tests) see the chart grow
    },
    resize,
  };
}

async function showDeployment(id) {
  const main = document.getElementById("main");
  const [status, events] = await Promise.all([api(`/deployments/${id}`), api(`/deployments/${id}/events?limit=5000`)]);
  const [app, servers] = await Promise.all([api(`/applications/${status.application_id}`), api("/servers?limit=500")]);
  const serverById = new Map(servers.map((s) => [s.id, s]));

  const split = chart("Canary share of requests over time", ["canary %", "target %"], "%");
  split.node.id = "split-chart";
  const errors = chart("Error rate: canary vs stable", ["canary", "stable"], "%");
  const latency = chart("Latency: canary vs stable (p50, p95)", ["canary p95", "stable p95", "canary p50", "stable p50"], "ms");
  const header = el("div", { class: "dep-head" });
  const timeline = el("ol", { class: "timeline", "aria-label": "stages" });
  const actions = el("div", { class: "actions", role: "group", "aria-label": "actions" });
  const verdict = el("div", { class: "verdict" });
  const serverTable = el("tbody", { id: "servers" });
  const history = el("tbody");
  const view = { id, lastSeq: 0, status, socket: null, closed: false, finished: false, retry: null, reached: 0 };

  main.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← all deployments")),
    el("section", { class: "card" }, header, timeline, actions),
    el("section", { class: "card charts" }, split.node, errors.node, latency.node),
    el("section", { class: "card" }, el("h2", {}, "Verdict of the last check"), verdict),
    el("section", { class: "card" }, el("h2", {}, "Servers"), el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["Server", "Host", "Role", "Version"].map((h) => el("th", {}, h)))), serverTable))),
    el("section", { class: "card" }, el("h2", {}, "History"), el("div", { class: "scroll" }, el("table", { id: "history" },
      el("thead", {}, el("tr", {}, ...["#", "Time", "Event", "State", "Stage", "Share", "Actor", "Reasons", "Metrics"].map((h) => el("th", {}, h)))), history))));
  for (const c of [split, errors, latency]) c.resize();
  const onResize = () => { for (const c of [split, errors, latency]) c.resize(); };
  window.addEventListener("resize", onResize);

  function plotStatus(s, when) {
    const t = (when ? new Date(when) : new Date()).getTime() / 1000;
    split.add(t, [s.current_traffic_percentage, s.target_traffic_percentage]);
    const m = s.metrics || {};
    if (m.canary && m.stable) {
      const rate = (c) => (c.error_rate === null || c.error_rate === undefined ? null : c.error_rate * 100);
      errors.add(t, [rate(m.canary), rate(m.stable)]);
      latency.add(t, [m.canary.p95_ms, m.stable.p95_ms, m.canary.p50_ms, m.stable.p50_ms]);
    }
  }

  // What a blue-green deployment's proxy does in each state (domain/strategy.py BlueGreen.backends).
  const BLUE_GREEN_TEXT = {
    monitoring: "green gets only the test requests, blue every other one",
    waiting_for_approval: "green gets only the test requests, blue every other one",
    paused: "green gets only the test requests, blue every other one",
    promoting: "every request goes to green; blue keeps running until keep_old ends",
    completed: "green serves every request; blue stopped",
  };

  function renderStatus(s) {
    view.status = s;
    const stages = (s.config && s.config.stages) || [];
    view.reached = Math.max(view.reached, s.current_stage);
    const finished = TERMINAL.has(s.canary_status);
    const where = finished
      ? `Finished: ${STATUS_TEXT[s.canary_status]}${s.canary_status === "completed" ? "" : ` after stage ${view.reached} of ${s.total_stages}`}`
      : `Stage ${s.current_stage} of ${s.total_stages}`;
    header.replaceChildren(
      el("h2", {}, `Deployment #${s.id}: ${app.name} ${s.previous_version} → ${s.version} `, badge(s.canary_status)),
      el("p", { id: "dep-summary" },
        s.strategy === "ab"
          ? `${where} · A/B test: the canary gets only the requests that match its rules`
          : mirroring(s) && blueGreen(s)
            ? `${where} · mirror test: green gets a copy of ${s.config.mirror.percent} % of requests; clients get blue's answers`
          : blueGreen(s)
            ? `${where} · blue-green: ${BLUE_GREEN_TEXT[s.canary_status] || "blue serves every request"}`
          : s.strategy === "rolling" && s.batches
            ? `${where} · ${rollingSummary(s)}`
            : mirroring(s)
              ? `${where} · mirror test: the canary gets a copy of ${s.config.mirror.percent} % of requests; clients get stable's answers`
              : `${where} · canary gets ${pct(s.current_traffic_percentage)} of requests (target ${pct(s.target_traffic_percentage)})`,
        s.next_stage_at ? ` · stage ends ${fmtTime(s.next_stage_at)}` : "",
        s.paused_from ? ` · paused from ${s.paused_from}` : "",
        s.config && s.config.analysis === "observe"
          ? " · analysis: observe only (verdicts are recorded, never acted on: the new version ships)" : ""),
      s.reasons && s.reasons.length ? el("p", { id: "dep-reasons", class: "reasons" }, s.reasons.join(" · ")) : null);
    const batches = s.strategy === "rolling" && s.batches ? s.batches : null;
    timeline.replaceChildren(...stages.map((share, i) => {
      const n = i + 1;
      const batch = batches && batches[i];
      if (batch) {
        const cls = BATCH_CLASS[batch.state] || "to come";
        return el("li", { class: `stage ${cls}`, "aria-current": cls === "current" ? "step" : null },
          el("span", { class: "share" }, `batch ${batch.batch}: ${batchNames(batch)}`),
          el("span", { class: "label" }, batch.state));
      }
      let label = "to come";
      if (s.canary_status === "completed" || (s.current_stage > n) || s.canary_status === "promoting") label = "done";
      else if (s.current_stage === n && !TERMINAL.has(s.canary_status)) label = "current";
      if (["rolled_back", "rolling_back", "failed"].includes(s.canary_status)) {
        label = n < view.reached ? "done" : n === view.reached ? "stopped" : "not run";
      }
      return el("li", { class: `stage ${label}`, "aria-current": label === "current" ? "step" : null },
        el("span", { class: "share" }, s.strategy === "mirror" && n === 1 && s.config.mirror
          ? `mirror ${s.config.mirror.percent} %` : `${share} %`),
        el("span", { class: "label" }, `stage ${n}: ${label}`));
    }));
    renderActions(s);
    renderVerdict(s);
    // Rolling: each server's batch and where it stands instead of canary or stable.
    const batchOf = new Map((batches || []).flatMap((b) => b.servers.map((r) => [r.id, b])));
    const roleOf = (role, r) => {
      const b = batchOf.get(r.id);
      return b ? [["upgraded", "judged", "deploying", "upgrading"].includes(b.state) ? "canary" : "stable",
        `batch ${b.batch}: ${b.state}`] : [role, role];
    };
    serverTable.replaceChildren(...[
      ...s.canary_servers.map((r) => ["canary", r]), ...s.stable_servers.map((r) => ["stable", r])].map(([role, r]) =>
      el("tr", {}, el("td", {}, r.name || `#${r.id}`), el("td", {}, r.host || "—"),
        el("td", {}, el("span", { class: `role ${roleOf(role, r)[0]}` }, roleOf(role, r)[1])),
        el("td", {}, (s.server_versions || {})[String(r.id)] || "—"))));
    if (!s.canary_servers.length && !s.stable_servers.length) {
      serverTable.append(...app.server_ids.map((sid) => el("tr", {},
        el("td", {}, serverById.get(sid)?.name || `#${sid}`), el("td", {}, serverById.get(sid)?.host || "—"),
        el("td", {}, "not chosen yet"), el("td", {}, (s.server_versions || {})[String(sid)] || app.current_version))));
    }
  }

  function renderVerdict(s) {
    const v = s.metrics && s.metrics.verdict;
    if (!v) {
      verdict.replaceChildren(el("p", { class: "muted" }, "No verdict yet: the judge runs while the canary takes traffic."));
      return;
    }
    verdict.replaceChildren(
      el("p", {}, "Overall: ", el("span", { class: `outcome o-${v.outcome}` }, OUTCOME_TEXT[v.outcome] || v.outcome),
        ` (compared with ${v.compared_with || "stable"}, stage ${s.metrics.stage ?? "—"})`),
      el("div", { class: "scroll" }, el("table", { id: "verdicts" },
        el("thead", {}, el("tr", {}, ...["Metric", "Verdict", "Evidence / what it waits for", "Figures"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...(v.metrics || []).map((m) => el("tr", {},
          el("td", {}, m.metric),
          el("td", {}, el("span", { class: `outcome o-${m.outcome}` }, OUTCOME_TEXT[m.outcome] || m.outcome)),
          el("td", {}, m.outcome === "inconclusive" ? `waiting: ${m.reason}` : m.reason),
          el("td", { class: "figures" }, Object.entries(m.figures || {}).map(([k, val]) => `${k}=${typeof val === "number" ? +val.toFixed(4) : JSON.stringify(val)}`).join(", ")))))))); 
  }

  // The action bar is built once per page and its buttons updated in place on each status: rebuilt on every
  // status, it threw away a reason being typed and the focus of the button about to be pressed.
  let bar = null;
  function renderActions(s) {
    const allowed = new Set(s.allowed_actions || []);
    const operate = can("operate");
    if (!bar) {
      const reason = el("input", { id: "action-reason", type: "text", maxlength: 500, placeholder: "reason (kept in the history)", disabled: !operate });
      const button = (action, label, body, cls = "") => el("button", {
        type: "button", class: cls, "data-action": action + (body && body.to ? `-${body.to}` : ""),
        "data-verb": action, "data-label": label, onclick: () => act(action, body || {}, reason),
      }, label);
      bar = [
        button("promote", "Promote to next stage", { to: "next" }),
        button("promote", "Promote fully", { to: "full" }),
        button("pause", "Pause"),
        button("resume", "Resume"),
        el("label", { for: "action-reason", class: "sr" }, "Reason"),
        reason,
        button("rollback", "Roll back", null, "danger"),
      ];
      actions.replaceChildren(
        ...(operate ? [] : [el("p", { class: "muted" }, `Read-only view: the token's scope (${state.who.scope}) cannot act on deployments.`)]),
        ...bar);
    }
    for (const b of bar.filter((node) => node.tagName === "BUTTON")) {
      const verb = b.dataset.verb;
      b.disabled = !operate || !allowed.has(verb);
      b.title = !operate ? "needs the operate scope" : allowed.has(verb) ? b.dataset.label : `not possible while ${s.canary_status}`;
    }
  }

  async function act(action, body, reasonInput) {
    const reason = reasonInput.value.trim();
    if (action === "rollback" && !reason) {
      notice("Give a reason for the rollback (it is kept in the history).", "error");
      reasonInput.focus();
      return;
    }
    try {
      const s = await api(`/deployments/${id}/${action}`, { method: "POST", body: JSON.stringify({ ...body, ...(reason ? { reason } : {}) }) });
      reasonInput.value = "";
      notice(`${action} accepted: the deployment is ${STATUS_TEXT[s.canary_status] || s.canary_status}.`);
      renderStatus(s);
    } catch (error) {
      notice(`${action} refused: ${error.message}`, "error");
    }
  }

  function addEvent(e) {
    if (e.seq <= view.lastSeq) return;
    view.lastSeq = e.seq;
    const metrics = e.metrics && Object.keys(e.metrics).length
      ? el("details", {}, el("summary", {}, "snapshot"), el("pre", {}, JSON.stringify(e.metrics, null, 1)))
      : "—";
    history.prepend(el("tr", { "data-seq": e.seq },
      el("td", { class: "num" }, e.seq), el("td", {}, fmtTime(e.at)), el("td", {}, e.kind),
      el("td", {}, e.from_state && e.to_state && e.from_state !== e.to_state ? `${e.from_state} → ${e.to_state}` : (e.to_state || "")),
      el("td", { class: "num" }, e.stage ?? ""), el("td", { class: "num" }, e.traffic_percentage === null ? "" : pct(e.traffic_percentage)),
      el("td", {}, e.actor), el("td", { class: "reasons" }, (e.reasons || []).join(" · ")), el("td", {}, metrics)));
    if (e.stage) view.reached = Math.max(view.reached, e.stage);
    if (e.kind === "stage_advanced" && e.traffic_percentage !== null && e.traffic_percentage !== undefined) {
      split.add(new Date(e.at).getTime() / 1000, [e.traffic_percentage, e.traffic_percentage]);
    }
  }

  function connect() {
    if (view.closed || view.finished) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${API}/deployments/${id}/ws?token=${encodeURIComponent(state.token)}&after_seq=${view.lastSeq}`;
    const socket = new WebSocket(url);
    view.socket = socket;
    socket.addEventListener("message", (m) => {
      const message = JSON.parse(m.data);
      if (message.type === "event") addEvent(message);
      else if (message.type === "status") {
        renderStatus(message);
        plotStatus(message);
        if (message.final) {
          view.finished = true;
          notice(`Deployment #${id} finished: ${STATUS_TEXT[message.canary_status] || message.canary_status}.`);
        }
      }
    });
    socket.addEventListener("close", (c) => {
      if (view.closed || view.finished || c.code === 1000) return;
      if ([4401, 4403, 4404].includes(c.code)) {
        notice(`Live view refused: ${c.reason} (${c.code})`, "error");
        return;
      }
      view.retry = setTimeout(connect, 1000); // reconnect; after_seq makes sure nothing is missed
    });
  }

  for (const e of events) addEvent(e);
  renderStatus(status);
  plotStatus(status, status.updated_at);
  if (!TERMINAL.has(status.canary_status)) connect();
  view.close = () => {
    view.closed = true;
    clearTimeout(view.retry);
    window.removeEventListener("resize", onResize);
    if (view.socket) view.socket.close(1000);
  };
  state.view = view;
}

// --- start ---------------------------------------------------------------------------------------------------

(async () => {
  if (state.token && (await useToken(state.token))) route();
  else showTokenForm();
})();
