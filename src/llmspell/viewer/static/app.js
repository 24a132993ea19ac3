// llmspell view: the page. Plain JavaScript, no build step, no dependencies.
// Everything shown comes from one EventSource (/events): "hello", "events" (arrays of
// events), "coalesced" (what the server summarised instead of sending), "runs" (what
// changed in the runs' timelines) and "stats" (hook latency, breakers, backpressure).
// Text from events is only ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  const MAX_EVENTS = 1000;   // events kept in memory
  const MAX_ROWS = 300;      // events drawn
  const MAX_RUNS = 200;      // runs kept

  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");
  if (token !== null) {
    // Kept in memory (a restarted viewer no longer takes this page's cookie), but taken out
    // of the address bar, so it stays out of the history, bookmarks and screenshots. It is
    // never put in another address: requests carry it in a header (or the cookie), so it
    // stays out of access logs too.
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : "") +
      window.location.hash);
  }
  const $ = (id) => document.getElementById(id);

  const state = {
    source: null,
    lastId: "",
    idPrefix: "",
    pattern: params.get("pattern") || "",
    events: [],
    received: 0,
    coalesced: 0,
    runs: new Map(),
    selected: null,
    stats: null,
    es: null,
    dirty: { events: false, runs: false, stats: false },
    scheduled: false,
  };

  // fetch() options: the token in the Authorization header (which also renews the cookie)
  function authorized() {
    const options = { credentials: "same-origin" };
    if (token) options.headers = { "Authorization": "Bearer " + token };
    return options;
  }

  // An EventSource cannot send headers: it goes with the cookie the page was given. A
  // restarted viewer no longer takes that cookie; one request with the token renews it.
  let renewedAt = 0;
  async function renewSession() {
    if (!token || Date.now() - renewedAt < 5000) return false;
    renewedAt = Date.now();
    try {
      const answer = await fetch("api/check", authorized());
      return answer.ok;
    } catch (e) {
      return false;
    }
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clock(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const d = new Date(seconds * 1000);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3);
  }

  function ms(value) {
    if (value === null || value === undefined) return "";
    if (value >= 10000) return (value / 1000).toFixed(1) + " s";
    if (value >= 100) return value.toFixed(0) + " ms";
    if (value >= 1) return value.toFixed(1) + " ms";
    return value.toFixed(3) + " ms";
  }

  function money(value) {
    return value ? "$" + Number(value).toFixed(value < 0.01 ? 5 : 3) : "";
  }

  function preview(data) {
    const text = typeof data === "string" ? data : JSON.stringify(data);
    if (text === undefined) return "";
    return text.length > 160 ? text.slice(0, 157) + "..." : text;
  }

  function schedule(what) {
    state.dirty[what] = true;
    if (state.scheduled) return;
    state.scheduled = true;
    window.requestAnimationFrame(render);
  }

  function setStatus(text, kind) {
    const pill = $("status");
    pill.textContent = text;
    pill.className = "pill pill-" + kind;
  }

  function showBanner(text) {
    $("banner-text").textContent = text;
    $("banner").hidden = false;
  }

  // -- the connection -----------------------------------------------------------------
  function connect(fresh) {
    if (state.es) state.es.close();
    if (fresh) {
      state.lastId = "";
      state.events = [];
      schedule("events");
    }
    const query = [];
    if (state.pattern) query.push("pattern=" + encodeURIComponent(state.pattern));
    // A new stream after the old one closed goes on from the last event this page has.
    if (!fresh && state.lastId) query.push("after=" + encodeURIComponent(state.lastId));
    const url = "events" + (query.length ? "?" + query.join("&") : "");
    const es = new EventSource(url);
    state.es = es;
    es.onopen = () => setStatus("live", "live");
    es.onerror = async () => {
      if (es.readyState !== EventSource.CLOSED) {
        setStatus("reconnecting", "reconnecting");
        return;
      }
      setStatus("closed", "closed");
      if (state.es === es && await renewSession() && state.es === es) connect(false);
    };
    es.addEventListener("hello", (msg) => {
      const hello = JSON.parse(msg.data);
      state.source = hello.source;
      const cursor = String(hello.cursor || "");
      const dash = cursor.lastIndexOf("-");
      state.idPrefix = dash > 0 ? cursor.slice(0, dash + 1) : "";
      $("source").textContent = hello.source.kind + ": " + hello.source.where +
        (hello.source.problem ? " (" + hello.source.problem + ")" : "");
      if (!hello.resumed) {
        state.events = [];
        schedule("events");
      }
      if (hello.unknown_id) {
        showBanner("The viewer restarted: it does not know the last event this page had, " +
          "so the list starts again from its newest events.");
      }
      setStatus("live", "live");
    });
    es.addEventListener("events", (msg) => {
      if (msg.lastEventId) state.lastId = msg.lastEventId;
      const batch = JSON.parse(msg.data);
      state.received += batch.length;
      for (const event of batch) state.events.push(event);
      if (state.events.length > MAX_EVENTS) {
        state.events.splice(0, state.events.length - MAX_EVENTS);
      }
      schedule("events");
    });
    es.addEventListener("coalesced", (msg) => {
      const info = JSON.parse(msg.data);
      state.coalesced += info.count;
      const top = Object.entries(info.types).slice(0, 4)
        .map(([type, count]) => type + " " + count).join(", ");
      const why = info.reason === "backfill"
        ? "This page was away for long: "
        : info.reason === "overload"
          ? "The viewer could not keep up with the event rate: "
          : "This page fell behind the event rate: ";
      showBanner(why + info.count + " events were summarised instead of sent (" + top +
        "). They are in the store: llmspell events query.");
      const note = el("li", "notice notice-viewer");
      note.textContent = clock(Date.now() / 1000) + " viewer coalesced " + info.count +
        " events (" + top + ")";
      $("notices").prepend(note);
      $("notices-empty").hidden = true;
    });
    es.addEventListener("runs", (msg) => {
      for (const run of JSON.parse(msg.data)) mergeRun(run);
      schedule("runs");
    });
    es.addEventListener("stats", (msg) => {
      state.stats = JSON.parse(msg.data);
      schedule("stats");
    });
  }

  function mergeRun(update) {
    let run = state.runs.get(update.run_id);
    if (!run) {
      run = { steps: new Map() };
      state.runs.set(update.run_id, run);
    }
    for (const key of Object.keys(update)) {
      if (key !== "steps") run[key] = update[key];
    }
    for (const step of update.steps) run.steps.set(step.id, step);
    if (state.runs.size > MAX_RUNS) {
      const oldest = [...state.runs.values()].sort((a, b) => a.started - b.started)
        .slice(0, state.runs.size - MAX_RUNS);
      for (const gone of oldest) state.runs.delete(gone.run_id);
    }
  }

  // -- drawing ------------------------------------------------------------------------
  function render() {
    state.scheduled = false;
    if (state.dirty.events) renderEvents();
    if (state.dirty.runs) {
      renderRuns();
      renderTimeline();
    }
    if (state.dirty.stats) renderStats();
    if (state.dirty.events || state.dirty.stats) renderCounts();
    state.dirty = { events: false, runs: false, stats: false };
  }

  function renderEvents() {
    const body = $("event-list").tBodies[0];
    const rows = document.createDocumentFragment();
    const shown = state.events.slice(-MAX_ROWS).reverse();
    for (const event of shown) {
      const row = el("tr");
      row.dataset.pos = event.p;
      row.dataset.type = event.t;
      row.appendChild(el("td", "time", clock(event.ts)));
      row.appendChild(el("td", "type type-" + event.t.split(".").pop(), event.t));
      row.appendChild(el("td", "run", event.r ? event.r.slice(-8) : ""));
      row.appendChild(el("td", "data", preview(event.d) + (event.x ? " (cut)" : "")));
      rows.appendChild(row);
    }
    body.replaceChildren(rows);
  }

  function sortedRuns() {
    return [...state.runs.values()].sort((a, b) => b.started - a.started);
  }

  function renderRuns() {
    const list = $("run-list");
    const runs = sortedRuns();
    $("runs-empty").hidden = runs.length > 0;
    if ($("follow").checked && runs.length) state.selected = runs[0].run_id;
    const items = document.createDocumentFragment();
    for (const run of runs.slice(0, 100)) {
      const item = el("li", "run run-" + run.status);
      item.dataset.runId = run.run_id;
      if (run.run_id === state.selected) item.classList.add("selected");
      item.appendChild(el("span", "dot"));
      item.appendChild(el("span", "run-name", (run.kind || "run") + " " + (run.name || run.run_id.slice(-8))));
      const totals = run.totals || {};
      const bits = [];
      if (run.ended) bits.push(ms((run.ended - run.started) * 1000));
      else bits.push("running");
      bits.push(run.steps.size + " steps");
      if (totals.decisions) bits.push(totals.decisions + " decisions");
      item.appendChild(el("span", "run-info muted", bits.join(" · ")));
      item.addEventListener("click", () => {
        $("follow").checked = false;
        state.selected = run.run_id;
        schedule("runs");
      });
      items.appendChild(item);
    }
    list.replaceChildren(items);
  }

  function depthOf(step, steps) {
    let depth = 0;
    let parent = step.parent;
    while (parent !== null && parent !== undefined && depth < 16) {
      const up = steps.get(parent);
      if (!up) break;
      depth += 1;
      parent = up.parent;
    }
    return depth;
  }

  function renderTimeline() {
    const box = $("steps");
    const run = state.selected ? state.runs.get(state.selected) : null;
    if (!run) {
      $("run-title").textContent = "Timeline";
      $("run-meta").textContent = "Select a run.";
      box.replaceChildren();
      return;
    }
    $("run-title").textContent = (run.kind || "run") + " " + (run.name || "") + " · " + run.status;
    const totals = run.totals || {};
    const meta = [run.run_id, "started " + clock(run.started)];
    if (run.ended) meta.push(ms((run.ended - run.started) * 1000));
    if (totals.tokens_in || totals.tokens_out) meta.push((totals.tokens_in || 0) + " in / " + (totals.tokens_out || 0) + " out tokens");
    if (totals.cost_usd) meta.push(money(totals.cost_usd));
    if (run.dropped_steps) meta.push(run.dropped_steps + " more steps not shown");
    if (run.error) meta.push(run.error);
    $("run-meta").textContent = meta.join(" · ");
    const steps = [...run.steps.values()].sort((a, b) => a.started - b.started || a.id - b.id);
    const now = Date.now() / 1000;
    let end = run.ended || now;
    for (const step of steps) end = Math.max(end, step.ended || now);
    const span = Math.max(end - run.started, 0.001);
    const rows = document.createDocumentFragment();
    for (const step of steps) {
      const row = el("div", "step step-" + step.kind + " status-" + step.status);
      row.setAttribute("role", "listitem");
      row.dataset.kind = step.kind;
      row.dataset.name = step.name;
      row.dataset.status = step.status;
      const label = el("div", "step-label");
      label.style.paddingLeft = (depthOf(step, run.steps) * 1.2) + "em";
      label.appendChild(el("span", "step-kind", step.kind));
      label.appendChild(el("span", "step-name", step.name));
      row.appendChild(label);
      const track = el("div", "track");
      const bar = el("div", "bar");
      const left = Math.max(0, (step.started - run.started) / span);
      const width = Math.max(0.004, ((step.ended || now) - step.started) / span);
      bar.style.left = (left * 100).toFixed(2) + "%";
      bar.style.width = (Math.min(width, 1 - left) * 100).toFixed(2) + "%";
      track.appendChild(bar);
      row.appendChild(track);
      const info = el("div", "step-info");
      info.appendChild(el("span", "duration", step.ended ? ms(step.duration_ms) : "running..."));
      if (step.tokens_in || step.tokens_out) {
        info.appendChild(el("span", "tokens", step.tokens_in + " in / " + step.tokens_out + " out tokens"));
      }
      if (step.cost_usd) info.appendChild(el("span", "cost", money(step.cost_usd)));
      for (const [mark, detail] of Object.entries(step.marks || {})) {
        const badge = el("span", "mark mark-" + mark.replace(/\s+/g, "-"), detail ? mark + ": " + detail : mark);
        badge.title = detail || mark;
        info.appendChild(badge);
      }
      if (step.detail && !step.marks.blocked) info.appendChild(el("span", "detail", step.detail));
      row.appendChild(info);
      rows.appendChild(row);
    }
    box.replaceChildren(rows);
  }

  function renderCounts() {
    const stats = state.stats;
    const rate = stats ? Math.round(stats.rate_10s) + " events/s · " : "";
    $("rate").textContent = rate + state.received + " received by this page" +
      (state.coalesced ? " · " + state.coalesced + " coalesced" : "");
  }

  function cells(row, values) {
    for (const value of values) row.appendChild(el("td", null, value));
  }

  function renderStats() {
    const stats = state.stats;
    if (!stats) return;
    const client = stats.client || {};
    const hooks = $("hooks").tBodies[0];
    const hookRows = document.createDocumentFragment();
    for (const hook of stats.hooks) {
      const row = el("tr");
      const decisions = Object.entries(hook.decisions).map(([k, v]) => k + " " + v).join(", ");
      cells(row, [hook.hook, hook.calls, hook.p50_ms.toFixed(3), hook.p95_ms.toFixed(3),
        hook.p99_ms.toFixed(3), hook.max_ms.toFixed(3), decisions]);
      hookRows.appendChild(row);
    }
    hooks.replaceChildren(hookRows);
    $("hooks-empty").hidden = stats.hooks.length > 0;
    const breakers = $("breakers").tBodies[0];
    const breakerRows = document.createDocumentFragment();
    for (const breaker of stats.breakers) {
      const row = el("tr", "breaker breaker-" + breaker.state);
      cells(row, [breaker.hook, breaker.point, breaker.state, clock(breaker.at), breaker.reason]);
      breakerRows.appendChild(row);
    }
    breakers.replaceChildren(breakerRows);
    $("breakers-empty").hidden = stats.breakers.length > 0;
    $("viewer-flow").textContent = "This page: " + (client.pushed || 0) + " events matched, " +
      (client.coalesced || 0) + " coalesced, " + (client.buffered || 0) + " waiting to be sent.";
    const notices = $("notices");
    for (const old of notices.querySelectorAll(".notice-bus")) old.remove();
    for (const notice of stats.notices.slice(0, 20)) {
      const kind = notice.type.split(".").pop();
      const text = clock(notice.at) + " " + notice.type + " " + (notice.subscription || "") +
        (notice.capacity ? " " + notice.depth + "/" + notice.capacity : "") +
        (notice.dropped ? " dropped " + notice.dropped : "") +
        (notice.detail ? " " + notice.detail : "");
      notices.appendChild(el("li", "notice notice-bus notice-" + kind, text));
    }
    $("notices-empty").hidden = notices.children.length > 0;
  }

  // -- the page's controls ------------------------------------------------------------
  $("filter").addEventListener("submit", async (submit) => {
    submit.preventDefault();
    const pattern = $("pattern").value.trim();
    const answer = await fetch("api/check?pattern=" + encodeURIComponent(pattern),
      authorized());
    const result = await answer.json();
    if (!result.ok) {
      $("pattern-error").textContent = result.error + (result.hint ? " (" + result.hint + ")" : "");
      return;
    }
    $("pattern-error").textContent = "";
    state.pattern = pattern;
    connect(true);
  });

  $("event-list").addEventListener("click", async (click) => {
    const row = click.target.closest("tr[data-pos]");
    if (!row) return;
    const detail = $("event-detail");
    const answer = await fetch("api/events/" + state.idPrefix + row.dataset.pos, authorized());
    detail.textContent = JSON.stringify(await answer.json(), null, 2);
    detail.hidden = false;
  });

  $("banner-close").addEventListener("click", () => { $("banner").hidden = true; });
  $("follow").addEventListener("change", () => schedule("runs"));

  // Running steps grow with time even when no event arrives.
  window.setInterval(() => {
    const run = state.selected ? state.runs.get(state.selected) : null;
    if (run && run.status === "running") schedule("runs");
  }, 1000);

  $("pattern").value = state.pattern;
  connect(true);
})();
