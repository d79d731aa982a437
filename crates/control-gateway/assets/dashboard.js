// understudy dashboard: the "Network Discovery" view.
//
// Plain JavaScript, no framework, no external resources. It reads the gateway's
// JSON API (docs/openapi.json):
//   GET  /api/v1/groups                                  the group picker
//   GET  /api/v1/groups/{g}                              the roster document
//   PUT  /api/v1/groups/{g}/devices/{d}/score            score editing (admin token)
//   PUT  /api/v1/groups/{g}/devices/{d}/online           online/offline (admin token)
//   POST /api/v1/groups/{g}/election[?force=true]        trigger (admin token)
// The roster document carries the group's show hold (`hold`), shown as a
// banner while the group is held; a `hold_changed` event re-reads it at once.
//   GET  /api/v1/groups/{g}/events?client=dashboard      live events (SSE)
//   GET  /api/v1/groups/{g}/ledger?limit=20              the Ledger panel
//   GET  /api/v1/groups/{g}/why                          its paragraph
// The ledger is read when a group is chosen and after election events. The
// winner writes its entry just after its `server_elected` event, so when
// the roster shows a newer term than the ledger's newest entry, the ledger
// is read again (a few times per term at most).
// Every call carries `Authorization: Bearer <token>` once a token is entered
// (kept in sessionStorage, for this tab only; never in a URL). A gateway with
// tokens configured wants one on reads too: then the page asks for it. The
// events are Server-Sent Events read with fetch() and a streamed body, since
// EventSource and a browser's WebSocket cannot send the header.
// It re-reads the roster on every event and every 2 s. A lost event stream is
// resumed with `after=<last id>`, and ids already shown are skipped, so no
// event is missed or shown twice.
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 2000;
  const GROUPS_POLL_MS = 5000;
  const LOG_MAX = 300;
  const LEDGER_LIMIT = 20;
  // Reads of the ledger one newer term may cause before the page waits for
  // the next event.
  const LEDGER_TRIES = 5;
  const TOKEN_KEY = "understudy.apiToken";
  const ASK_FOR_TOKEN = "This gateway needs a token: enter it at the top and press Use token.";

  const $ = (sel) => document.querySelector(sel);

  const state = {
    group: null,
    doc: null,
    statusSeq: 0,
    refreshTimer: null,
    // The token in use (set by the token form; "" for none).
    token: "",
    // Event stream.
    streamGen: 0,
    stream: null,
    transport: "sse",
    reconnectAttempt: 0,
    reconnectTimer: null,
    lastEventId: null,
    // Server changes seen in the events, for the chart.
    changes: [],
    // Ends of terms (loss, step-down, hand-over) and elections not yet
    // matched into a change, by term.
    ends: [],
    elections: [],
    // The ledger panel: the read in flight, the refresh pending, the newest
    // term it shows, and the term the roster is ahead with (and how often
    // the ledger was read for it).
    ledgerSeq: 0,
    ledgerTimer: null,
    ledgerTerm: null,
    ledgerWant: { term: null, tries: 0 },
  };

  // ---- small helpers -------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    const text = String(value);
    if (node.getAttribute(name) !== text) node.setAttribute(name, text);
  }

  function groupPath(group) {
    return `${API}/groups/${encodeURIComponent(group)}`;
  }

  // `base` plus the token, when one is in use.
  function authHeaders(base) {
    const headers = Object.assign({ Accept: "application/json" }, base || {});
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    return headers;
  }

  // Shows that the gateway wants a (different) token, and where to enter it.
  function askForToken(needed) {
    const form = $("#token-form");
    setAttr(form, "data-needs-token", needed ? "true" : "false");
    if (needed && document.activeElement !== $("#token")) $("#token").focus();
  }

  function formatAgo(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "?";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 3600000) return `${Math.round(ms / 60000)} min`;
    return `${(ms / 3600000).toFixed(1)} h`;
  }

  function formatTime(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "";
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  // Reads a JSON error `{"error":{"code","message"}}` from a failed response.
  async function errorText(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (body && body.error && (body.error.message || body.error.code)) {
      const code = body.error.code ? `${body.error.code}: ` : "";
      return `${code}${body.error.message || ""}`.trim();
    }
    return `HTTP ${response.status} ${response.statusText || ""}`.trim();
  }

  async function send(method, path, body) {
    const headers = authHeaders();
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new Error(`cannot reach the gateway (${e.message || e})`);
    }
    if (!response.ok) {
      let text = await errorText(response);
      if (response.status === 401) text += " — enter the admin token at the top";
      else if (response.status === 403) text += " — enter the admin token at the top to change the group";
      throw new Error(text);
    }
    try {
      return await response.json();
    } catch (_) {
      return {};
    }
  }

  function showMessage(text, ok) {
    const box = $("#message");
    box.textContent = text;
    box.classList.toggle("ok", !!ok);
    box.setAttribute("role", ok ? "status" : "alert");
    box.hidden = !text;
  }

  // ---- problems and colours (B2) ------------------------------------------

  function problemText(p) {
    if (typeof p === "string") return p;
    if (!p || typeof p !== "object") return String(p);
    switch (p.code) {
      case "no_server":
        return "Project group has no server";
      case "missing_peers": {
        const missing = Math.max(0, (p.expected || 0) - (p.actual || 0));
        return `Not receiving peer data from ${missing} peer(s): expected ${p.expected}, actual ${p.actual}`;
      }
      case "bus_unreachable":
        return "Cannot reach the message bus";
      case "duplicate_device_id":
        return "Duplicate device id";
      case "project_conflict":
        return `${p.changes} project change(s) conflict with the server's copy`;
      default:
        if (p.message) return String(p.message);
        if (p.text) return String(p.text);
        if (p.problem) return (p.device ? `${p.device}: ` : "") + problemText(p.problem);
        return p.code ? String(p.code).replace(/_/g, " ") : JSON.stringify(p);
    }
  }

  function problemTitle(p) {
    if (p && typeof p === "object" && p.code === "missing_peers") {
      return `Peers expected: ${p.expected}; peers actually heard: ${p.actual}`;
    }
    if (p && typeof p === "object" && p.code === "project_conflict") {
      return `${p.changes} change(s) kept in the device's conflicts folder`;
    }
    return problemText(p);
  }

  // The colour a device is shown in: a missing device is grey whatever it
  // last reported.
  function deviceColour(d) {
    if (d.live === false) return "grey";
    return ["grey", "blue", "red"].includes(d.colour) ? d.colour : "grey";
  }

  function colourLabel(d) {
    const colour = deviceColour(d);
    if (d.live === false) return "Grey: missing";
    if (colour === "grey") return "Grey: offline";
    if (colour === "red") return "Red: problems";
    return "Blue: OK";
  }

  function colourSummary(doc) {
    const given = [doc.colours, doc.colour_summary, doc.colour_counts, doc.colour].find(
      (c) => c && typeof c === "object" && !Array.isArray(c)
    );
    if (given) return given;
    const counted = { grey: 0, blue: 0, red: 0 };
    for (const d of doc.devices || []) counted[deviceColour(d)] += 1;
    return counted;
  }

  // ---- the roster ----------------------------------------------------------

  function renderServer(doc) {
    const server = doc && doc.server;
    const name = $("#server");
    const term = $("#term");
    if (server && server.device) {
      setText(name, server.device);
      setAttr(name, "data-server", server.device);
      name.classList.remove("none");
      setText(term, server.term);
    } else {
      setText(name, doc ? "No server" : "—");
      setAttr(name, "data-server", "");
      name.classList.toggle("none", !!doc);
      setText(term, "—");
    }
    const summary = doc ? colourSummary(doc) : { grey: 0, blue: 0, red: 0 };
    const badge = $("#group-colour");
    let colour = "grey";
    let label = "unknown";
    if (doc) {
      if (!server || (summary.red || 0) > 0) {
        colour = "red";
        label = server ? `Red: ${summary.red} device(s) with problems` : "Red: no server";
      } else {
        colour = "blue";
        label = "Blue: OK";
      }
    }
    badge.className = `badge badge-${colour}`;
    setAttr(badge, "data-colour", colour);
    setText(badge, label);
    setText(
      $("#colour-summary"),
      doc ? `${summary.blue || 0} blue · ${summary.red || 0} red · ${summary.grey || 0} grey` : "–"
    );
  }

  const COUNT_FIELDS = [
    "devices_online",
    "devices_offline",
    "devices_missing",
    "servers",
    "clients",
    "gui_sessions",
    "control_sessions",
  ];

  function renderCounts(doc) {
    const counts = (doc && doc.counts) || {};
    for (const field of COUNT_FIELDS) {
      const node = document.getElementById(`count-${field}`);
      setText(node, typeof counts[field] === "number" ? counts[field] : "–");
    }
    const n = doc && doc.network_counts;
    setText(
      $("#network-counts"),
      n
        ? `${n.devices_online} online, ${n.devices_offline} offline, ${n.devices_missing} missing; ` +
            `${n.servers} server(s), ${n.clients} client(s); ` +
            `${n.gui_sessions} GUI and ${n.control_sessions} control session(s)`
        : "–"
    );
  }

  function renderGroupProblems(doc) {
    const list = $("#group-problems");
    const problems = (doc && Array.isArray(doc.problems) && doc.problems) || [];
    const texts = problems.map((p) => {
      const who = p && typeof p === "object" && p.device ? `${p.device}: ` : "";
      const text = p && typeof p === "object" && p.text && !p.code ? String(p.text) : problemText(p);
      return [`${who}${text}`, problemTitle(p)];
    });
    const key = JSON.stringify(texts);
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(...texts.map(([text, title]) => el("li", { text, title })));
  }

  function buildRow(device) {
    const id = `score-${device.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const input = el("input", {
      id,
      type: "number",
      min: 0,
      max: 255,
      step: 1,
      inputmode: "numeric",
      "data-score-input": true,
    });
    const setButton = el("button", {
      type: "submit",
      "data-score-set": true,
      "aria-label": `Set the score of ${device}`,
      text: "Set",
    });
    const onlineButton = el("button", { type: "button", "data-online-toggle": true, text: "Go offline" });
    const form = el("form", { className: "score-form", "data-score-form": true }, [
      el("label", { className: "visually-hidden", for: id, text: `New score for ${device}` }),
      input,
      setButton,
      onlineButton,
    ]);
    const result = el("span", { className: "score-error", "data-score-error": true, role: "status" });
    const row = el("tr", { "data-device": device }, [
      el("td", {}, [el("span", { className: "device-name", "data-field": "device", text: device })]),
      el("td", {}, [el("span", { className: "badge", "data-field": "colour" })]),
      el("td", {}, [el("span", { "data-field": "role" }), el("span", { className: "note", "data-field": "role-note" })]),
      el("td", { className: "num" }, [el("span", { "data-field": "score" })]),
      el("td", {}, [el("span", { className: "mono", "data-field": "mac" })]),
      el("td", {}, [el("span", { "data-field": "last-seen" })]),
      el("td", {}, [el("ul", { className: "problems", "data-field": "problems" })]),
      el("td", {}, [form, result]),
    ]);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setScore(device, input, setButton, result);
    });
    onlineButton.addEventListener("click", () => toggleOnline(device, onlineButton, result));
    return row;
  }

  function updateRow(row, d) {
    const colour = deviceColour(d);
    setAttr(row, "data-colour", colour);
    setAttr(row, "data-role", d.role || "");
    setAttr(row, "data-live", d.live === false ? "false" : "true");
    setAttr(row, "data-online", d.online ? "true" : "false");
    const field = (name) => row.querySelector(`[data-field="${name}"]`);

    const badge = field("colour");
    badge.className = `badge badge-${colour}`;
    setAttr(badge, "data-colour", colour);
    setText(badge, colourLabel(d));

    const role = field("role");
    setText(role, d.role || "?");
    role.className = d.role === "server" ? "role-server" : "";
    let note = "";
    if (d.live === false) note = " (last known)";
    else if (!d.online) note = " (offline)";
    else if (d.in_grace) note = " (start-up grace)";
    setText(field("role-note"), note);

    setText(field("score"), d.score);
    const input = row.querySelector("[data-score-input]");
    if (document.activeElement !== input) setAttr(input, "placeholder", d.score);
    setText(field("mac"), d.mac || "");

    const seen = field("last-seen");
    seen.className = d.live === false ? "" : "seen-live";
    setText(
      seen,
      d.live === false
        ? `missing — last heard ${formatAgo(d.last_seen_ms_ago)} ago`
        : `${formatAgo(d.last_seen_ms_ago)} ago`
    );
    if (typeof d.sent_at_ms === "number") {
      setAttr(seen, "title", `its last heartbeat was sent at ${new Date(d.sent_at_ms).toLocaleString()} (device clock)`);
    }

    const problems = Array.isArray(d.problems) ? d.problems : [];
    const list = field("problems");
    const extra = [];
    if (d.duplicate && !problems.some((p) => p && p.code === "duplicate_device_id")) {
      extra.push({ code: "duplicate_device_id" });
    }
    const all = problems.concat(extra);
    const key = JSON.stringify(all);
    if (list.dataset.key !== key) {
      list.dataset.key = key;
      list.replaceChildren(
        ...all.map((p) =>
          el("li", {
            text: problemText(p),
            title: problemTitle(p),
            "data-problem": (p && p.code) || "other",
          })
        )
      );
    }

    const lines = [`${d.device}: ${colourLabel(d)}`, `role ${d.role}${note}, score ${d.score}, term ${d.term}`];
    if (d.instance) lines.push(`instance ${d.instance}`);
    for (const p of all) lines.push(`${problemText(p)} — ${problemTitle(p)}`);
    setAttr(row, "title", lines.join("\n"));

    const onlineButton = row.querySelector("[data-online-toggle]");
    setText(onlineButton, d.online ? "Go offline" : "Go online");
    setAttr(onlineButton, "aria-label", `${d.online ? "Take" : "Bring"} ${d.device} ${d.online ? "offline" : "online"}`);
    setAttr(onlineButton, "data-online", d.online ? "true" : "false");
  }

  function renderDevices(doc) {
    const body = $("#device-rows");
    const devices = (doc && Array.isArray(doc.devices) && doc.devices) || [];
    const existing = new Map();
    for (const row of body.querySelectorAll("tr[data-device]")) existing.set(row.dataset.device, row);
    let previous = null;
    for (const d of devices) {
      let row = existing.get(d.device);
      if (!row) row = buildRow(d.device);
      existing.delete(d.device);
      updateRow(row, d);
      const wanted = previous ? previous.nextSibling : body.firstChild;
      if (wanted !== row) body.insertBefore(row, wanted);
      previous = row;
    }
    for (const row of existing.values()) row.remove();
    $("#no-devices").hidden = devices.length > 0 || !doc;
  }

  // The show hold banner: shown while the group is held (on, not lapsed),
  // with the reason, who set it and until when.
  function renderHold(doc) {
    const banner = $("#hold-banner");
    const hold = doc && doc.hold;
    const held = !!(hold && hold.held);
    banner.hidden = !held;
    setAttr(banner, "data-held", held ? "true" : "false");
    if (!held) {
      setText($("#hold-detail"), "");
      return;
    }
    const r = hold.record || {};
    const parts = [];
    if (r.reason) parts.push(`Reason: ${r.reason}`);
    parts.push(`set by ${r.set_by || "an unnamed operator"}${typeof r.since_ms === "number" ? ` at ${formatTime(r.since_ms)}` : ""}`);
    if (typeof r.until_ms === "number") {
      parts.push(`until ${new Date(r.until_ms).toLocaleString([], { hour12: false })} (in ${formatAgo(r.until_ms - Date.now())})`);
    } else {
      parts.push("until lifted");
    }
    parts.push("an election trigger needs force");
    setText($("#hold-detail"), parts.join(" · "));
  }

  function render(doc) {
    state.doc = doc;
    renderHold(doc);
    renderServer(doc);
    renderCounts(doc);
    renderGroupProblems(doc);
    renderDevices(doc);
  }

  async function refreshStatus() {
    const group = state.group;
    if (!group) return;
    const seq = ++state.statusSeq;
    try {
      const response = await fetch(groupPath(group), { headers: authHeaders() });
      if (seq !== state.statusSeq || group !== state.group) return;
      if (!response.ok) {
        const text = await errorText(response);
        if (seq !== state.statusSeq || group !== state.group) return;
        if (response.status === 401) {
          setText($("#group-note"), `${ASK_FOR_TOKEN} (${text})`);
          askForToken(true);
          render(null);
          return;
        }
        setText($("#group-note"), `Cannot read group ${group}: ${text}`);
        if (response.status === 404) render(null);
        return;
      }
      askForToken(false);
      const doc = await response.json();
      if (seq !== state.statusSeq || group !== state.group) return;
      const reporter = doc.reporter ? ` (as seen by ${doc.reporter})` : "";
      setText($("#group-note"), `Group ${group}${reporter}, updated ${formatTime(Date.now())}`);
      render(doc);
      ledgerCatchUp(doc);
    } catch (e) {
      if (seq !== state.statusSeq) return;
      setText($("#group-note"), `Cannot reach the gateway: ${e.message || e}`);
    }
  }

  // Coalesces the refreshes a burst of events asks for.
  function scheduleRefresh() {
    if (state.refreshTimer !== null) return;
    state.refreshTimer = setTimeout(() => {
      state.refreshTimer = null;
      refreshStatus();
    }, 50);
  }

  // ---- the election ledger -------------------------------------------------

  const RULES = {
    only_candidate: "only candidate",
    highest_score: "highest score",
    lower_mac: "lower MAC (tie)",
    device_id: "lower device id (tie)",
    named_successor: "named successor",
  };

  function words(code) {
    return typeof code === "string" && code ? code.replace(/_/g, " ") : "?";
  }

  function previousText(p) {
    if (!p || typeof p !== "object") return "—";
    const how = p.stepped_down ? ` — ${words(p.stepped_down)}` : "";
    return `${p.device || "?"} (term ${p.term})${how}`;
  }

  function candidatesText(e) {
    const list = Array.isArray(e.candidates) ? e.candidates : [];
    return list
      .map((c) => `${c.device} score ${c.score}${c.online ? "" : " offline"} (${c.mac})`)
      .join(", ");
  }

  function ledgerRow(e) {
    const kept = e.kind === "kept";
    const t = e.timings || {};
    const server = el("td", {}, [el("span", { className: "ledger-server", text: e.server })]);
    if (e.held) server.append(el("span", { className: "held-mark", text: "held", title: "the show hold was on" }));
    const row = el(
      "tr",
      {
        "data-term": e.term,
        "data-server": e.server,
        "data-kind": e.kind,
        "data-cause": e.cause,
        title: `Candidates heard: ${candidatesText(e) || "none"}` +
          (typeof t.detection_ms === "number" ? `\nLost server silent for ${t.detection_ms} ms when given up` : "") +
          (typeof t.claim_ms === "number" ? `\nClaim took ${t.claim_ms} ms` : ""),
      },
      [
        el("td", { className: "num", text: formatTime(e.at_ms), title: new Date(e.at_ms).toLocaleString() }),
        el("td", { className: "num", text: kept ? `${e.term} (kept)` : String(e.term) }),
        server,
        el("td", { "data-field": "cause", text: words(e.cause) }),
        el("td", { "data-field": "rule", text: RULES[e.rule] || words(e.rule) }),
        el("td", { "data-field": "previous", text: previousText(e.previous) }),
        el("td", { className: "num", text: typeof t.without_server_ms === "number" ? formatAgo(t.without_server_ms) : "—" }),
      ]
    );
    return row;
  }

  function renderLedger(entries) {
    const body = $("#ledger-rows");
    const key = JSON.stringify(entries);
    if (body.dataset.key !== key) {
      body.dataset.key = key;
      body.replaceChildren(...entries.slice().reverse().map(ledgerRow));
    }
    const terms = entries.map((e) => e.term).filter((t) => typeof t === "number");
    state.ledgerTerm = terms.length ? Math.max(...terms) : null;
    setText($("#ledger-note"), entries.length ? "" : "No election recorded in this group's ledger yet.");
  }

  function renderWhy(why) {
    const node = $("#why");
    setText(node, (why && why.paragraph) || "No election recorded yet.");
    setAttr(node, "data-server", (why && why.server) || "");
  }

  function clearLedger() {
    state.ledgerSeq += 1;
    state.ledgerTerm = null;
    state.ledgerWant = { term: null, tries: 0 };
    const body = $("#ledger-rows");
    delete body.dataset.key;
    body.replaceChildren();
    renderWhy(null);
    setText($("#ledger-note"), "");
  }

  async function refreshLedger() {
    const group = state.group;
    if (!group) return;
    const seq = ++state.ledgerSeq;
    const current = () => seq === state.ledgerSeq && group === state.group;
    try {
      const [ledger, why] = await Promise.all([
        fetch(`${groupPath(group)}/ledger?limit=${LEDGER_LIMIT}`, { headers: authHeaders() }),
        fetch(`${groupPath(group)}/why`, { headers: authHeaders() }),
      ]);
      if (!current()) return;
      if (!ledger.ok) {
        const text = await errorText(ledger);
        if (current()) setText($("#ledger-note"), `Cannot read the ledger: ${text}`);
        return;
      }
      const body = await ledger.json();
      const explained = why.ok ? await why.json() : null;
      if (!current()) return;
      renderLedger(Array.isArray(body.entries) ? body.entries : []);
      renderWhy(explained);
    } catch (e) {
      if (current()) setText($("#ledger-note"), `Cannot read the ledger: ${e.message || e}`);
    }
  }

  // Coalesces the ledger reads a burst of election events asks for.
  function scheduleLedger(delay) {
    if (state.ledgerTimer !== null) return;
    state.ledgerTimer = setTimeout(() => {
      state.ledgerTimer = null;
      refreshLedger();
    }, delay);
  }

  // The roster shows a newer term than the ledger: its entry is on its way.
  function ledgerCatchUp(doc) {
    const term = doc && doc.server && doc.server.term;
    if (typeof term !== "number" || (state.ledgerTerm !== null && term <= state.ledgerTerm)) return;
    const want = state.ledgerWant;
    if (want.term !== term) {
      want.term = term;
      want.tries = 0;
    }
    if (want.tries >= LEDGER_TRIES) return;
    want.tries += 1;
    // A moment for the winner to store it.
    scheduleLedger(250);
  }

  // ---- actions -------------------------------------------------------------

  async function setScore(device, input, button, result) {
    const raw = input.value.trim();
    result.classList.remove("ok");
    if (raw === "") {
      result.textContent = "Enter a score from 0 to 255.";
      return;
    }
    const score = Number(raw);
    button.disabled = true;
    result.textContent = "setting…";
    try {
      const reply = await send("PUT", `${groupPath(state.group)}/devices/${encodeURIComponent(device)}/score`, {
        score,
      });
      // The reply's `server` is the device's view at once, before the
      // election the change starts; the roster shows the outcome.
      result.classList.add("ok");
      result.textContent = `Score set to ${reply.score !== undefined ? reply.score : score}; an election follows.`;
      input.value = "";
      showMessage("", true);
    } catch (e) {
      result.textContent = e.message;
      showMessage(`Could not set the score of ${device}: ${e.message}`, false);
    } finally {
      button.disabled = false;
      scheduleRefresh();
    }
  }

  async function toggleOnline(device, button, result) {
    const online = button.getAttribute("data-online") !== "true";
    button.disabled = true;
    result.classList.remove("ok");
    try {
      await send("PUT", `${groupPath(state.group)}/devices/${encodeURIComponent(device)}/online`, { online });
      result.classList.add("ok");
      result.textContent = online ? "Brought online" : "Taken offline";
      showMessage("", true);
    } catch (e) {
      result.textContent = e.message;
      showMessage(`Could not take ${device} ${online ? "online" : "offline"}: ${e.message}`, false);
    } finally {
      button.disabled = false;
      scheduleRefresh();
    }
  }

  async function triggerElection() {
    const button = $("#trigger");
    button.disabled = true;
    const held = !!(state.doc && state.doc.hold && state.doc.hold.held);
    if (held && !window.confirm(`Group ${state.group} is under a show hold. Trigger an election anyway (force)?`)) {
      button.disabled = false;
      return;
    }
    try {
      const reply = await send("POST", `${groupPath(state.group)}/election${held ? "?force=true" : ""}`);
      showMessage(`Election triggered in ${state.group}${reply && reply.held ? " past the show hold" : ""}.`, true);
    } catch (e) {
      showMessage(`Could not trigger an election: ${e.message}`, false);
    } finally {
      button.disabled = false;
      scheduleRefresh();
    }
  }

  // ---- the event log -------------------------------------------------------

  function describe(type, ev) {
    const e = ev || {};
    const reason = e.reason ? ` (${e.reason})` : "";
    if (type === "election") {
      switch (e.type) {
        case "election_started":
          return `${e.reporter} started an election${reason}`;
        case "server_elected":
          return `${e.device} elected server: term ${e.term}, score ${e.score}${reason}`;
        case "server_lost":
          return `server ${e.device} lost (term ${e.term})${typeof e.silent_ms === "number" ? ` after ${e.silent_ms} ms of silence` : ""}, noticed by ${e.reporter}`;
        case "stepped_down":
          return `${e.device} stepped down (term ${e.term})${reason}`;
        case "handed_over":
          return `${e.from} handed over to ${e.to} (term ${e.term})`;
        case "no_viable_candidate":
          return "no viable candidate: every online score is 0";
        case "hold_changed":
          return e.held
            ? `show hold ON${e.reason ? `: ${e.reason}` : ""}${e.set_by ? `, by ${e.set_by}` : ""}${e.until_ms ? `, until ${formatTime(e.until_ms)}` : ""}`
            : `show hold lifted${e.set_by ? ` by ${e.set_by}` : ""}`;
        default:
          break;
      }
    } else if (type === "project") {
      switch (e.type) {
        case "serving_project":
          return `${e.device} serves the project, revision ${e.revision} (term ${e.term}) at ${e.address}`;
        case "revision_committed":
          return `revision ${e.revision} committed by ${e.changed_by} (${e.size} bytes, term ${e.term})`;
        case "change_conflicted":
          return `change ${e.change_id} on ${e.device} conflicts (made on revision ${e.base_revision}, head is ${e.head_revision})`;
        case "change_refused":
          return `change ${e.change_id} on ${e.device} refused: ${e.reason}`;
        default:
          break;
      }
    }
    return `${e.type || "event"} ${JSON.stringify(e)}`;
  }

  // ---- the server-change chart ----------------------------------------------

  const CHANGES_MAX = 30;
  const SVG = "http://www.w3.org/2000/svg";

  // Time without a server, from the events: a failover from the lost
  // server's last heartbeat (`server_lost` at_ms minus its `silent_ms`), a
  // planned change from its `stepped_down` or `handed_over`; each ends at the
  // `server_elected` of the next term. The old server and the new one report
  // on their own, so their events may reach the stream in either order: the
  // two sides are matched by term, not by arrival.
  const ENDS_KEPT = 16;
  const STALE_END_MS = 3600 * 1000;
  function noteChange(ev) {
    if (!ev || typeof ev.at_ms !== "number") return;
    switch (ev.type) {
      case "server_lost":
      case "stepped_down":
      case "handed_over": {
        if (typeof ev.term !== "number") return;
        const kind = ev.type === "server_lost" ? "failover" : "planned";
        const start = kind === "failover" ? ev.at_ms - (typeof ev.silent_ms === "number" ? ev.silent_ms : 0) : ev.at_ms;
        const from = ev.device || ev.from;
        const known = state.ends.find((e) => e.term === ev.term);
        if (known) {
          // A loss outranks a step-down of the same term (a deposed server
          // reports its step-down after the others gave it up); otherwise
          // the earliest report stands.
          if (known.kind === "planned" && kind === "failover") Object.assign(known, { kind, start, from });
          else if (known.kind === kind && start < known.start) known.start = start;
          if (known.change) updateChange(known);
        } else {
          state.ends.push({ term: ev.term, kind, start, from, change: null });
          while (state.ends.length > ENDS_KEPT) state.ends.shift();
          pairElections();
        }
        break;
      }
      case "server_elected":
        if (typeof ev.term !== "number") return;
        if (!state.elections.some((e) => e.term === ev.term)) {
          state.elections.push({ term: ev.term, device: ev.device, at: ev.at_ms, paired: false });
          while (state.elections.length > ENDS_KEPT) state.elections.shift();
          pairElections();
        }
        break;
      default:
        break;
    }
  }

  // Pairs each unpaired election with the latest unpaired end of an older
  // term, and draws what was paired.
  function pairElections() {
    let drawn = false;
    for (const won of state.elections) {
      if (won.paired) continue;
      let end = null;
      for (const e of state.ends) {
        // An end long before the election is one whose own successor's
        // event was not seen (before the page opened): not this change.
        const recent = won.at - e.start <= STALE_END_MS;
        if (!e.change && recent && e.term < won.term && (!end || e.term > end.term)) end = e;
      }
      if (!end) continue;
      won.paired = true;
      end.change = { kind: end.kind, from: end.from, to: won.device, at: won.at, ms: Math.max(0, won.at - end.start), term: won.term };
      state.changes.push(end.change);
      state.changes.sort((a, b) => a.term - b.term);
      while (state.changes.length > CHANGES_MAX) state.changes.shift();
      drawn = true;
    }
    if (drawn) drawChanges();
  }

  // A paired end learnt more (a loss reported after a step-down, an
  // earlier report): its bar follows.
  function updateChange(end) {
    const c = end.change;
    c.kind = end.kind;
    c.from = end.from;
    c.ms = Math.max(0, c.at - end.start);
    drawChanges();
  }

  function drawChanges() {
    const svg = $("#change-chart");
    const list = state.changes;
    const top = Math.max(1000, ...list.map((c) => c.ms));
    const width = 600 / CHANGES_MAX;
    const y = (ms) => 120 - (ms / top) * 110;
    const nodes = list.map((c, i) => {
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", String(i * width + 1));
      bar.setAttribute("width", String(width - 2));
      const height = Math.max(2, 120 - y(c.ms)); // a short one still shows
      bar.setAttribute("y", String(120 - height));
      bar.setAttribute("height", String(height));
      bar.setAttribute("class", c.kind);
      bar.setAttribute("data-ms", String(c.ms));
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `${formatTime(c.at)}: ${c.kind === "failover" ? "failover" : "hand-over"} ${c.from} → ${c.to}, ${c.ms} ms without a server`;
      bar.append(tip);
      return bar;
    });
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("class", "target");
    line.setAttribute("x1", "0");
    line.setAttribute("x2", "600");
    line.setAttribute("y1", String(y(500)));
    line.setAttribute("y2", String(y(500)));
    svg.replaceChildren(line, ...nodes);
    const failovers = list.filter((c) => c.kind === "failover");
    const longest = list.reduce((m, c) => Math.max(m, c.ms), 0);
    const last = failovers.length ? `, last ${failovers[failovers.length - 1].ms} ms` : "";
    setText(
      $("#change-summary"),
      list.length
        ? `${failovers.length} failover(s)${last}; ${list.length - failovers.length} hand-over(s); longest time without a server ${longest} ms`
        : "No server change seen yet."
    );
  }

  function handleEvent(id, type, ev) {
    const numeric = typeof id === "number" && isFinite(id) ? id : Number(id);
    const hasId = id !== null && id !== undefined && id !== "" && isFinite(numeric);
    if (hasId) {
      if (state.lastEventId !== null && numeric <= state.lastEventId) return; // already shown
      state.lastEventId = numeric;
    }
    if (type === "election") {
      noteChange(ev);
      scheduleLedger(300);
    }
    const log = $("#event-log");
    const placeholder = log.querySelector(".empty");
    if (placeholder) placeholder.remove();
    const kind = (ev && ev.type) || "event";
    const item = el(
      "li",
      {
        "data-event-id": hasId ? numeric : null,
        "data-event-type": type,
        "data-kind": kind,
        className: kind === "server_elected" || kind === "server_lost" ? "important" : null,
      },
      [
        el("span", { className: "when", text: formatTime(ev && ev.at_ms) }),
        el("span", { className: "kind", text: `${type}: ${kind.replace(/_/g, " ")}` }),
        el("span", { className: "what", text: describe(type, ev) }),
      ]
    );
    if (ev && ev.reporter) item.title = `reported by ${ev.reporter}${hasId ? `, event #${numeric}` : ""}`;
    log.prepend(item);
    while (log.children.length > LOG_MAX) log.lastElementChild.remove();
    scheduleRefresh();
  }

  function setConnection(stateName, text) {
    const node = $("#connection");
    setAttr(node, "data-state", stateName);
    setAttr(node, "data-transport", state.transport);
    setText(node, text);
  }

  function closeStream() {
    state.streamGen += 1;
    if (state.reconnectTimer !== null) {
      clearTimeout(state.reconnectTimer);
      state.reconnectTimer = null;
    }
    const old = state.stream;
    state.stream = null;
    if (old) old.abort();
  }

  function streamQuery() {
    const query = new URLSearchParams({ client: "dashboard" });
    if (state.lastEventId !== null) query.set("after", String(state.lastEventId));
    else query.set("last", "20");
    return query.toString();
  }

  function connectEvents() {
    if (!state.group) return;
    closeStream();
    openEventStream(state.streamGen);
  }

  function scheduleReconnect(gen) {
    if (gen !== state.streamGen) return;
    const delay = Math.min(5000, 500 * 2 ** state.reconnectAttempt);
    state.reconnectAttempt += 1;
    setConnection("down", `events: reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    state.reconnectTimer = setTimeout(() => {
      state.reconnectTimer = null;
      if (gen === state.streamGen) connectEvents();
    }, delay);
  }

  // One SSE block (the lines between blank lines): its event, if it has data.
  function dispatchBlock(block) {
    let id = null;
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue; // a comment: keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0 || (type !== "election" && type !== "project")) return;
    let ev;
    try {
      ev = JSON.parse(data.join("\n"));
    } catch (_) {
      return;
    }
    handleEvent(id, type, ev);
  }

  // Server-Sent Events through fetch(), so the request carries the token.
  async function openEventStream(gen) {
    if (!window.fetch || !window.AbortController || !window.TextDecoder) {
      setConnection("down", "events: not supported by this browser (status is polled)");
      return;
    }
    const controller = new AbortController();
    state.stream = controller;
    setConnection("connecting", "events: connecting (SSE)…");
    try {
      const response = await fetch(`${groupPath(state.group)}/events?${streamQuery()}`, {
        headers: authHeaders({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal: controller.signal,
      });
      if (gen !== state.streamGen) return;
      if (response.status === 401) {
        // No use retrying with the same token: wait for another one.
        setConnection("down", `events: ${await errorText(response)}`);
        askForToken(true);
        return;
      }
      if (!response.ok || !response.body) throw new Error(await errorText(response));
      state.reconnectAttempt = 0;
      setConnection("live", "events: live (SSE)");
      scheduleRefresh();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (gen !== state.streamGen) return;
        if (done) break;
        buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          dispatchBlock(block);
        }
      }
    } catch (_) {
      /* reconnect below */
    }
    // The stream ended or failed: resume after the last event shown.
    if (gen === state.streamGen) scheduleReconnect(gen);
  }

  // ---- groups --------------------------------------------------------------

  async function refreshGroups() {
    let groups = [];
    try {
      const response = await fetch(`${API}/groups`, { headers: authHeaders() });
      if (response.status === 401) {
        setText($("#group-note"), `${ASK_FOR_TOKEN} (${await errorText(response)})`);
        askForToken(true);
        return;
      }
      if (response.ok) {
        const body = await response.json();
        groups = Array.isArray(body.groups) ? body.groups : [];
      }
    } catch (_) {
      return;
    }
    const select = $("#group");
    const names = groups.map((g) => (typeof g === "string" ? g : g.group)).filter(Boolean);
    const counts = new Map(groups.filter((g) => g && typeof g === "object").map((g) => [g.group, g.devices]));
    if (state.group && !names.includes(state.group)) names.push(state.group);
    names.sort();
    const options = names.map((name) => {
      const n = counts.get(name);
      const label = n === undefined ? `${name} (not seen)` : `${name} (${n} device${n === 1 ? "" : "s"})`;
      return [name, label];
    });
    const key = JSON.stringify(options);
    if (select.dataset.key !== key) {
      select.dataset.key = key;
      select.replaceChildren(...options.map(([value, text]) => el("option", { value, text })));
    }
    if (!state.group && names.length > 0) chooseGroup(names[0], false);
    if (state.group) select.value = state.group;
    if (names.length === 0) setText($("#group-note"), "No group seen on the bus yet (devices announce themselves every second).");
  }

  function chooseGroup(group, push) {
    if (!group || group === state.group) return;
    state.group = group;
    state.statusSeq += 1;
    state.lastEventId = null;
    state.changes = [];
    state.ends = [];
    state.elections = [];
    drawChanges();
    state.reconnectAttempt = 0;
    $("#group").value = group;
    $("#event-log").replaceChildren(el("li", { className: "empty", text: "No events yet." }));
    $("#device-rows").replaceChildren();
    clearLedger();
    render(null);
    const url = new URL(location.href);
    url.searchParams.set("group", group);
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
    document.title = `understudy — ${group} — Network Discovery`;
    refreshStatus();
    refreshLedger();
    connectEvents();
  }

  // ---- start ---------------------------------------------------------------

  // Uses `value` as the token from now on (kept for this tab), and reads
  // everything again with it.
  function useToken(value) {
    state.token = value;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* storage disabled: the token lasts until the page is left */
    }
    showMessage("", true);
    refreshGroups();
    refreshStatus();
    refreshLedger();
    connectEvents();
  }

  function start() {
    const tokenInput = $("#token");
    try {
      state.token = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      /* storage disabled */
    }
    tokenInput.value = state.token;
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useToken(tokenInput.value.trim());
    });
    $("#token-forget").addEventListener("click", () => {
      tokenInput.value = "";
      useToken("");
    });
    $("#group").addEventListener("change", (event) => chooseGroup(event.target.value, true));
    $("#trigger").addEventListener("click", triggerElection);
    window.addEventListener("popstate", () => {
      const wanted = new URL(location.href).searchParams.get("group");
      if (wanted) chooseGroup(wanted, false);
    });

    render(null);
    const wanted = new URL(location.href).searchParams.get("group");
    if (wanted) chooseGroup(wanted, false);
    refreshGroups();
    setInterval(refreshStatus, POLL_MS);
    setInterval(refreshGroups, GROUPS_POLL_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
