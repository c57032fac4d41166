// Plait inspector: flows listed with filters, one flow's saga drawn from its workflow's graph, live from its
// event stream. Plain JavaScript, no dependencies: the API it talks to is the one that served the page.
"use strict";

(() => {
  const BASE = document.querySelector('meta[name="plait-api"]').content;
  const TERMINAL = new Set(["completed", "failed", "cancelled", "compensated"]);
  const KIND_LABEL = {
    step: "step", wait_for: "\u25F7 waits for a signal", sleep: "\u263E sleeps",
    for_each: "\u21BB for each item", sub_workflow: "\u229E sub-workflow",
  };
  const PAGE_SIZE = 25;

  const state = {
    workflows: new Map(),   // name -> graph from GET /workflows
    permissions: { read_only: true, workflows: {} },
    filters: { workflow: "", status: "", parent_id: "" },
    cursors: [null],        // cursors of the pages seen, to go back
    page: 0,
    flowId: null,
    flow: null,             // GET /flows/{id}
    events: [],
    lastSeq: 0,
    source: null,           // EventSource of the open flow
    selectedNode: null,
    drafts: {},             // signal name -> payload text being edited
  };

  // -- small helpers --

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key in el && typeof value !== "string") el[key] = value;
      else el.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);

  async function api(path, options = {}) {
    const init = { headers: { accept: "application/json" }, ...options };
    if (options.body !== undefined) {
      init.method = init.method || "POST";
      init.headers["content-type"] = "application/json";
      init.body = typeof options.body === "string" ? options.body : JSON.stringify(options.body);
    }
    const response = await fetch(BASE + path, init);
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.message) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.body = body;
      throw error;
    }
    return body;
  }

  const flowPath = (id) => "/flows/" + encodeURIComponent(id);

  function notice(text, bad = false) {
    const el = $("notice");
    el.textContent = text;
    el.classList.toggle("bad", bad);
    clearTimeout(notice.timer);
    if (text) notice.timer = setTimeout(() => { el.textContent = ""; }, 6000);
  }

  function time(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const d = new Date(seconds * 1000);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function duration(seconds) {
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 120) return `${seconds.toFixed(1)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  const pill = (status) => h("span", { class: `pill s-${status}` }, status);
  const allowed = (workflow, action) => ((state.permissions.workflows[workflow] || []).includes(action));

  // -- routing: #/flows/<id>?workflow=&status=&parent_id= --

  function readHash() {
    const [path, query] = location.hash.replace(/^#/, "").split("?");
    const params = new URLSearchParams(query || "");
    const match = /^\/flows\/(.+)$/.exec(path || "");
    return {
      flowId: match ? decodeURIComponent(match[1]) : null,
      filters: { workflow: params.get("workflow") || "", status: params.get("status") || "", parent_id: params.get("parent_id") || "" },
    };
  }

  function hashFor(flowId, filters = state.filters) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
    const query = params.toString();
    return "#/" + (flowId ? "flows/" + encodeURIComponent(flowId) : "") + (query ? "?" + query : "");
  }

  function onHash() {
    const { flowId, filters } = readHash();
    const changed = JSON.stringify(filters) !== JSON.stringify(state.filters);
    state.filters = filters;
    $("f-workflow").value = filters.workflow;
    $("f-status").value = filters.status;
    $("parent-filter").hidden = !filters.parent_id;
    $("parent-id").textContent = filters.parent_id;
    if (changed) { state.cursors = [null]; state.page = 0; }
    loadList();
    if (flowId !== state.flowId) openFlow(flowId);
  }

  // -- the list --

  async function loadList() {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [key, value] of Object.entries(state.filters)) if (value) params.set(key, value);
    const cursor = state.cursors[state.page];
    if (cursor) params.set("cursor", cursor);
    let page;
    try {
      page = await api("/flows?" + params);
    } catch (error) {
      notice("Could not list flows: " + error.message, true);
      return;
    }
    state.cursors[state.page + 1] = page.next_cursor;
    const list = $("flows");
    // The list refreshes itself every few seconds: redraw only when it changed, and keep the keyboard's place.
    const drawn = JSON.stringify(page);
    if (drawn !== list.dataset.drawn) {
      const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.dataset.flow : null;
      const rows = page.items.map((flow) => h("li", {},
        h("a", { href: hashFor(flow.flow_id), "aria-current": flow.flow_id === state.flowId ? "true" : "false", "data-flow": flow.flow_id },
          pill(flow.status),
          h("span", { class: "wf" }, flow.workflow),
          h("span", { class: "when", title: new Date(flow.created_at * 1000).toString() }, time(flow.created_at)),
          flow.error ? h("span", { class: "err", title: flow.error }, flow.error)
            : h("span", { class: "fid mono", title: flow.flow_id }, flow.flow_id))));
      list.replaceChildren(...(rows.length ? rows : [h("li", { class: "empty" }, "No flows match.")]));
      list.dataset.drawn = drawn;
      if (focused) list.querySelector(`a[data-flow="${CSS.escape(focused)}"]`)?.focus();
    }
    $("newer").disabled = state.page === 0;
    $("older").disabled = !page.next_cursor;
    $("page-info").textContent = `Page ${state.page + 1}`;
  }

  function markCurrent() {
    for (const a of $("flows").querySelectorAll("a[data-flow]")) {
      a.setAttribute("aria-current", a.dataset.flow === state.flowId ? "true" : "false");
    }
  }

  // -- one flow --

  function closeStream() {
    if (state.source) { state.source.close(); state.source = null; }
  }

  async function openFlow(flowId) {
    closeStream();
    clearTimeout(state.poll);
    state.flowId = flowId;
    state.flow = null;
    state.events = [];
    state.lastSeq = 0;
    state.selectedNode = null;
    state.drafts = {};
    markCurrent();
    if (!flowId) { renderPlaceholder(); return; }
    await refreshFlow();
    if (state.flowId === flowId && state.flow) openStream();
  }

  async function refreshFlow() {
    const flowId = state.flowId;
    try {
      const flow = await api(flowPath(flowId));
      if (flowId !== state.flowId) return;
      state.flow = flow;
      if (!state.workflows.has(flow.workflow)) await loadWorkflows();
      render();
    } catch (error) {
      if (flowId !== state.flowId) return;
      $("detail").replaceChildren(h("div", { class: "placeholder" },
        h("h2", {}, error.status === 404 ? "No such flow" : "Could not load the flow"),
        h("p", {}, error.message)));
    }
  }

  let refreshTimer = null;
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refreshFlow, 80);
  }

  function openStream() {
    closeStream();
    const flowId = state.flowId;
    const url = BASE + flowPath(flowId) + "/events" + (state.lastSeq ? `?after=${state.lastSeq}` : "");
    const source = new EventSource(url);
    state.source = source;
    $("detail").dataset.stream = "open";  // tells tests and styles whether events may still come
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (flowId !== state.flowId || event.seq <= state.lastSeq) return;
      state.lastSeq = event.seq;
      state.events.push(event);
      appendEvent(event);
      scheduleRefresh();
      if (event.type.startsWith("flow_")) scheduleListRefresh();
    };
    source.addEventListener("end", () => {
      source.close();
      if (state.source === source) state.source = null;
      refreshFlow().then(() => {
        if (flowId === state.flowId) $("detail").dataset.stream = "ended";
        // A flow that is being undone after it ended has more to say: follow it until it ends again.
        if (flowId === state.flowId && state.flow && !TERMINAL.has(state.flow.status)) {
          state.poll = setTimeout(openStream, 1000);
        }
      });
      scheduleListRefresh();
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CONNECTING) notice("Event stream interrupted; reconnecting\u2026", true);
    };
    source.onopen = () => { if ($("notice").classList.contains("bad")) notice(""); };
  }

  let listTimer = null;
  function scheduleListRefresh() {
    clearTimeout(listTimer);
    listTimer = setTimeout(loadList, 250);
  }

  async function loadWorkflows() {
    try {
      const [graphs, permissions] = await Promise.all([api("/workflows"), api("/permissions")]);
      state.workflows = new Map(graphs.workflows.map((w) => [w.name, w]));
      state.permissions = permissions;
    } catch (error) {
      notice("Could not load the workflows: " + error.message, true);
      return;
    }
    const select = $("f-workflow");
    const current = state.filters.workflow;
    select.replaceChildren(h("option", { value: "" }, "All workflows"),
      ...[...state.workflows.keys()].map((name) => h("option", { value: name }, name)));
    select.value = current;
    $("mode").textContent = state.permissions.read_only ? "read-only" : "operator";
    $("mode").title = state.permissions.read_only
      ? "This API is read-only: give workflows_api() an authorize callback to allow changes"
      : "You may change flows where the buttons show";
  }

  // -- rendering one flow --

  function renderPlaceholder() {
    $("detail").replaceChildren(h("div", { class: "placeholder" },
      h("h2", {}, "Pick a flow"),
      h("p", {}, "Its saga appears here: each step's fate, what was rolled back and in which order, and its events, live.")));
  }

  function rollbackOrder() {
    // The order rollbacks ran in, from the events (each step, or for-each item, once).
    const seen = new Map();
    for (const event of state.events) {
      if (!event.type.startsWith("rollback_")) continue;
      const key = event.step + (event.index === null || event.index === undefined ? "" : `[${event.index}]`);
      const entry = seen.get(key) || { step: event.step, label: key, status: "running", error: null };
      if (event.type === "rollback_completed") { entry.status = "done"; entry.error = null; }
      if (event.type === "rollback_failed" && !event.will_retry) { entry.status = "failed"; entry.error = event.error; }
      seen.set(key, entry);
    }
    return [...seen.values()];
  }

  function render() {
    const flow = state.flow;
    const graph = state.workflows.get(flow.workflow);
    const detail = $("detail");
    const scroll = detail.scrollTop;
    const timeline = detail.querySelector(".timeline");
    const timelineScroll = timeline ? timeline.scrollTop : null;
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focusKey : null;

    const children = flow.steps.filter((s) => s.child_id);
    const facts = [
      ["Created", time(flow.created_at)],
      flow.finished_at ? ["Took", duration(flow.finished_at - flow.created_at)] : ["Running for", duration(Date.now() / 1000 - flow.created_at)],
      flow.meta && flow.meta.correlation_id ? ["Correlation", h("code", {}, flow.meta.correlation_id)] : null,
      flow.parent_id ? ["Parent", h("a", { href: hashFor(flow.parent_id) }, flow.parent_id)] : null,
      flow.retry_of ? ["Retry of", h("a", { href: hashFor(flow.retry_of) }, flow.retry_of)] : null,
      children.length ? ["Children", h("a", { href: hashFor(null, { workflow: "", status: "", parent_id: flow.flow_id }) }, `${children.length} listed`)] : null,
      flow.wake_at && !TERMINAL.has(flow.status) ? ["Next timer", time(flow.wake_at)] : null,
    ].filter(Boolean);

    const parts = [
      h("header", { class: "flow-head" },
        h("h2", {}, pill(flow.status), flow.workflow),
        h("code", { class: "id" }, flow.flow_id),
        h("div", { class: "actions" }, actionButtons(flow)),
        h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))))),
      flow.error ? h("div", { class: "error-box", role: "alert" }, flow.error) : null,
      flow.progress ? progressBar(flow.progress) : null,
      h("h3", {}, "Saga"),
      graph ? renderGraph(graph, flow) : h("p", { class: "muted" }, `Workflow '${flow.workflow}' is not known to this API, so its graph cannot be drawn.`),
      h("div", { class: "legend" }, "Solid border: ran or runs \u00B7 dashed: conditional \u00B7 dotted: skipped \u00B7 \u21A9n: rolled back n-th \u00B7 \u21A9 (outlined): would be rolled back"),
      h("div", { class: "columns" },
        h("section", {}, h("h3", {}, "Node"), nodePanel(flow, graph)),
        h("section", { class: "compensation" }, h("h3", {}, "Compensation"), compensationPanel(flow, graph))),
      signalPanel(flow, graph),
      h("h3", {}, "Events"),
      h("ol", { class: "timeline", "aria-label": "Events, oldest first" }, state.events.map(eventRow)),
    ];
    detail.replaceChildren(...parts.filter(Boolean));
    detail.scrollTop = scroll;
    const newTimeline = detail.querySelector(".timeline");
    if (timelineScroll !== null) newTimeline.scrollTop = timelineScroll; else newTimeline.scrollTop = newTimeline.scrollHeight;
    if (focused) {
      const again = detail.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
    drawDagEdges();
  }

  function progressBar(progress) {
    const fill = h("div", { class: "fill" });
    fill.style.width = `${Math.round(progress.fraction * 100)}%`;
    return h("div", { class: "progress" },
      h("div", { class: "track", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(progress.fraction * 100)) }, fill),
      h("span", {}, `${Math.round(progress.fraction * 100)}%`, progress.message ? ` \u2014 ${progress.message}` : "", progress.step ? ` (${progress.step})` : ""));
  }

  function actionButtons(flow) {
    const wf = flow.workflow;
    const status = flow.status;
    const failedRollbacks = flow.steps.some((s) => s.status === "compensation_failed");
    const buttons = [];
    if (allowed(wf, "cancel") && ["pending", "running", "waiting"].includes(status)) {
      buttons.push(h("button", { type: "button", class: "danger", "data-focus-key": "cancel", onclick: () => confirmAction("cancel") }, "Cancel flow"));
    }
    if (allowed(wf, "compensate") && status === "completed") {
      buttons.push(h("button", { type: "button", "data-focus-key": "compensate", onclick: () => confirmAction("compensate") }, "Compensate\u2026"));
    }
    if (allowed(wf, "retry_compensation") && TERMINAL.has(status) && failedRollbacks) {
      buttons.push(h("button", { type: "button", class: "primary", "data-focus-key": "retry-compensation", onclick: () => act("retry-compensation") }, "Retry compensation"));
    }
    if (allowed(wf, "retry") && ["failed", "cancelled", "compensated"].includes(status)) {
      buttons.push(h("button", { type: "button", "data-focus-key": "retry", onclick: () => act("retry") }, "Retry as a new flow"));
    }
    return buttons;
  }

  function confirmAction(action) {
    const dialog = $("confirm");
    const cancel = action === "cancel";
    $("confirm-title").textContent = cancel ? "Cancel this flow?" : "Undo this completed flow?";
    $("confirm-text").textContent = cancel
      ? "Running steps are cancelled, completed steps are rolled back in reverse order, then on_error runs."
      : "Its completed steps are rolled back in reverse order, and it ends compensated.";
    $("confirm-ok").textContent = cancel ? "Cancel flow" : "Compensate";
    $("confirm-reason").value = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "ok") {
        const reason = $("confirm-reason").value.trim();
        act(action, reason ? { reason } : {});
      }
    };
    dialog.showModal();
  }

  async function act(action, body = {}) {
    const flowId = state.flowId;
    try {
      const answer = await api(`${flowPath(flowId)}/${action}`, { body });
      if (action === "retry") {
        notice(`Started ${answer.flow_id}`);
        location.hash = hashFor(answer.flow_id);
        return;
      }
      notice(`${action.replace("-", " ")}: the flow is ${answer.status}`);
    } catch (error) {
      notice(`${action.replace("-", " ")} refused: ${error.message}`, true);
    }
    await refreshFlow();
    if (flowId === state.flowId && !state.source) openStream();
    scheduleListRefresh();
  }

  // -- the graph: groups top to bottom; nodes in a row (parallel), a chain (sequential) or by their edges (dag) --

  function rollbackRanks() {
    const ranks = new Map();
    rollbackOrder().forEach((entry, i) => { if (!ranks.has(entry.step)) ranks.set(entry.step, i + 1); });
    return ranks;
  }

  function plannedRollbacks(flow, graph) {
    // What would be rolled back if the flow failed now: completed nodes with a rollback, latest first.
    const byName = new Map(flow.steps.map((s) => [s.name, s]));
    const planned = [];
    for (const group of graph.groups) {
      for (const node of group.nodes) {
        const step = byName.get(node.name);
        if (node.rollback && step && step.status === "completed") planned.push(node.name);
      }
    }
    return planned.reverse();
  }

  function renderGraph(graph, flow) {
    const byName = new Map(flow.steps.map((s) => [s.name, s]));
    const ranks = rollbackRanks();
    const planned = TERMINAL.has(flow.status) && flow.status !== "completed" ? [] : plannedRollbacks(flow, graph);
    const ended = TERMINAL.has(flow.status);
    const box = (node) => nodeBox(node, byName.get(node.name), ranks.get(node.name), planned.includes(node.name), ended);
    const groups = graph.groups.map((group, i) => {
      let body;
      if (group.kind === "dag") {
        const level = new Map();
        for (const node of group.nodes) level.set(node.name, node.after.length ? 1 + Math.max(...node.after.map((a) => level.get(a))) : 0);
        const columns = [];
        for (const node of group.nodes) (columns[level.get(node.name)] = columns[level.get(node.name)] || []).push(node);
        body = h("div", { class: "dag-cols", "data-edges": JSON.stringify(group.nodes.flatMap((n) => n.after.map((a) => [a, n.name]))) },
          columns.map((col) => h("div", { class: "col" }, col.map(box))));
      } else {
        const items = [];
        group.nodes.forEach((node, j) => {
          if (j && group.kind === "sequential") items.push(h("span", { class: "arrow", "aria-hidden": "true" }, "\u2193"));
          items.push(box(node));
        });
        body = h("div", { class: "lane" }, items);
      }
      const label = `${i + 1} \u00B7 ${group.kind}` + (group.conditional ? " \u00B7 if" : "");
      return h("div", { class: `group ${group.kind}${group.conditional ? " conditional" : ""}`, role: "group", "aria-label": `Group ${label}` },
        h("div", { class: "group-label" }, label), body);
    });
    const row = groups.flatMap((group, i) => (i ? [h("span", { class: "between", "aria-hidden": "true" }, "\u2192"), group] : [group]));
    return h("div", { class: "graph" }, row);
  }

  function nodeBox(node, step, rank, planned, ended) {
    step = step || { status: "pending", attempts: 0 };
    const bits = [step.status === "pending" && ended ? "not run" : step.status.replace("_", " ")];
    if (step.attempts > 1) bits.push(`\u00D7${step.attempts}`);
    if (step.items_total !== null && step.items_total !== undefined) bits.push(`${step.items_done}/${step.items_total}`);
    let badge = null;
    if (rank) badge = h("span", { class: "n-badge", title: `rolled back ${rank}${ordinal(rank)}` }, `\u21A9${rank}`);
    else if (planned) badge = h("span", { class: "n-badge planned", title: "would be rolled back if the flow failed now" }, "\u21A9");
    const kind = KIND_LABEL[node.kind] + (node.kind === "sub_workflow" && node.workflow ? ` ${node.workflow}` : "") + (node.conditional ? " \u00B7 if" : "");
    const label = `${node.name}: ${step.status}${step.attempts > 1 ? `, ${step.attempts} attempts` : ""}${rank ? `, rolled back ${rank}${ordinal(rank)}` : ""}`;
    return h("button", {
      type: "button",
      class: `node k-${node.kind} st-${step.status}${node.conditional ? " conditional" : ""}${state.selectedNode === node.name ? " selected" : ""}`,
      "data-node": node.name,
      "data-focus-key": "node:" + node.name,
      "aria-label": label,
      "aria-pressed": state.selectedNode === node.name ? "true" : "false",
      onclick: () => { state.selectedNode = state.selectedNode === node.name ? null : node.name; render(); },
    },
    h("span", { class: "n-name" }, node.name),
    h("span", { class: "n-kind" }, kind),
    h("span", { class: "n-status" }, bits.join(" \u00B7 ")),
    badge);
  }

  const ordinal = (n) => (n % 10 === 1 && n % 100 !== 11 ? "st" : n % 10 === 2 && n % 100 !== 12 ? "nd" : n % 10 === 3 && n % 100 !== 13 ? "rd" : "th");

  function drawDagEdges() {
    for (const cols of document.querySelectorAll(".dag-cols")) {
      const edges = JSON.parse(cols.dataset.edges || "[]");
      cols.querySelector("svg")?.remove();
      if (!edges.length) continue;
      const origin = cols.getBoundingClientRect();
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "dag-edges");
      svg.setAttribute("aria-hidden", "true");
      for (const [from, to] of edges) {
        const a = cols.querySelector(`[data-node="${CSS.escape(from)}"]`).getBoundingClientRect();
        const b = cols.querySelector(`[data-node="${CSS.escape(to)}"]`).getBoundingClientRect();
        const x1 = a.right - origin.left, y1 = a.top + a.height / 2 - origin.top;
        const x2 = b.left - origin.left - 4, y2 = b.top + b.height / 2 - origin.top;
        const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
        const mid = (x1 + x2) / 2;
        path.setAttribute("d", `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2} m-6,-4 l6,4 l-6,4`);
        svg.append(path);
      }
      cols.prepend(svg);
    }
  }

  function nodePanel(flow, graph) {
    if (!state.selectedNode) return h("div", { class: "panel muted" }, "Select a node in the saga to see its attempts, errors, items, child flow or signal.");
    const step = flow.steps.find((s) => s.name === state.selectedNode) || { status: "pending" };
    const node = graph ? graph.groups.flatMap((g) => g.nodes).find((n) => n.name === state.selectedNode) : null;
    const rows = [
      ["Node", h("strong", {}, state.selectedNode)],
      ["Kind", node ? KIND_LABEL[node.kind] : step.kind],
      ["Status", step.status.replace("_", " ")],
      ["Attempts", step.attempts || 0],
      node && node.output ? ["Output", node.output] : null,
      node && node.after.length ? ["After", node.after.join(", ")] : null,
      node && node.conditional ? ["Condition", "runs only when its condition holds"] : null,
      node && node.rollback !== null ? ["Rollback", node.rollback ? "yes" : "none"] : null,
      step.items_total !== null && step.items_total !== undefined ? ["Items", `${step.items_done} of ${step.items_total} done`] : null,
      step.child_id ? ["Child flow", h("a", { href: hashFor(step.child_id) }, step.child_id)] : null,
      step.signal !== null && step.signal !== undefined ? ["Signal", h("code", {}, JSON.stringify(step.signal))] : null,
      step.wake_at ? ["Wakes at", time(step.wake_at)] : null,
      step.error ? ["Error", h("span", { class: "form-error" }, step.error)] : null,
      step.rollback_error ? ["Rollback error", h("span", { class: "form-error" }, step.rollback_error)] : null,
    ].filter(Boolean);
    return h("dl", { class: "panel node-facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function compensationPanel(flow, graph) {
    const done = rollbackOrder();
    if (done.length) {
      return h("div", { class: "panel" },
        h("ol", { "aria-label": "Rollbacks in the order they ran" }, done.map((entry) => h("li", {},
          h("strong", {}, entry.label), " ",
          entry.status === "done" ? h("span", { class: "ok" }, "rolled back")
            : entry.status === "failed" ? h("span", { class: "bad" }, "rollback failed") : h("span", { class: "muted" }, "rolling back\u2026"),
          entry.error ? h("div", { class: "form-error" }, entry.error) : null))));
    }
    if (graph && !TERMINAL.has(flow.status)) {
      const planned = plannedRollbacks(flow, graph);
      return h("div", { class: "panel" }, planned.length
        ? [h("p", { class: "muted" }, "Nothing rolled back. If the flow failed now, these would be undone, in this order:"), h("ol", {}, planned.map((n) => h("li", {}, n)))]
        : h("p", { class: "muted" }, "Nothing rolled back, and nothing to roll back yet."));
    }
    return h("div", { class: "panel muted" }, flow.status === "completed" ? "Completed: nothing was rolled back." : "Nothing was rolled back.");
  }

  function signalPanel(flow, graph) {
    if (!graph || TERMINAL.has(flow.status) || !allowed(flow.workflow, "signal")) return null;
    const open = Object.keys(graph.signals).filter((name) => {
      const step = flow.steps.find((s) => s.name === name);
      return step && ["pending", "waiting"].includes(step.status) && (flow.signals || {})[name] === undefined;
    });
    if (!open.length) return null;
    return h("section", {}, h("h3", {}, "Send a signal"), open.map((name) => signalForm(name, graph.signals[name])));
  }

  function skeleton(schema) {
    const out = {};
    for (const [key, prop] of Object.entries(schema.properties || {})) {
      if (!(schema.required || []).includes(key)) continue;
      const type = prop.type || (prop.anyOf && prop.anyOf[0].type);
      out[key] = "default" in prop ? prop.default : type === "boolean" ? true : type === "integer" || type === "number" ? 0 : type === "array" ? [] : type === "object" ? {} : "";
    }
    return JSON.stringify(out, null, 2);
  }

  function signalForm(name, schema) {
    const id = `signal-${name}`;
    const area = h("textarea", { id, "data-focus-key": id, spellcheck: "false", "aria-describedby": `${id}-error`, oninput: (e) => { state.drafts[name] = e.target.value; } });
    area.value = state.drafts[name] ?? skeleton(schema);
    const error = h("div", { id: `${id}-error`, class: "form-error", role: "alert" });
    const submit = async (event) => {
      event.preventDefault();
      error.textContent = "";
      let payload;
      try { payload = JSON.parse(area.value); } catch (e) { error.textContent = "Not JSON: " + e.message; return; }
      try {
        await api(`${flowPath(state.flowId)}/signals/${encodeURIComponent(name)}`, { body: payload });
        delete state.drafts[name];
        notice(`Signal '${name}' sent`);
        scheduleRefresh();
      } catch (e) {
        const fields = (e.body && e.body.fields) || [];
        error.textContent = e.message + (fields.length ? "\n" + fields.map((f) => `${f.field}: ${f.message}`).join("\n") : "");
      }
    };
    return h("form", { class: "panel signal-form", onsubmit: submit },
      h("label", { for: id }, h("strong", {}, name), ` \u2014 payload (${schema.title || "JSON"})`),
      area,
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary", "data-focus-key": `${id}-send` }, `Send ${name}`), error));
  }

  // -- the events timeline --

  function eventText(event) {
    const where = event.step ? event.step + (event.index !== null && event.index !== undefined ? `[${event.index}]` : "") : "";
    switch (event.type) {
      case "step_started": return [where, event.attempt > 1 ? `attempt ${event.attempt}` : ""];
      case "step_failed": return [where, `${event.error || ""}${event.will_retry ? ` \u2014 retry in ${duration(event.delay)}` : " \u2014 for good"}`];
      case "rollback_failed": return [where, `${event.error || ""}${event.will_retry ? ` \u2014 retry in ${duration(event.delay)}` : " \u2014 for good"}`];
      case "signal_received": return [event.name, ""];
      case "progress": return [where, `${Math.round(event.fraction * 100)}%${event.message ? " " + event.message : ""}`];
      case "flow_failed": case "flow_cancelled": case "flow_compensated": return ["", [event.reason, event.error].filter(Boolean).join(" \u2014 ")];
      default: return [where, ""];
    }
  }

  function eventClass(type) {
    if (type.endsWith("failed") || type === "flow_cancelled") return "bad";
    if (type.startsWith("rollback") || type === "flow_compensated") return "undo";
    if (type.endsWith("completed")) return "good";
    return "";
  }

  function eventRow(event) {
    const start = state.events.length ? Date.parse(state.events[0].at) : Date.parse(event.at);
    const [where, detail] = eventText(event);
    return h("li", {},
      h("span", { class: "seq" }, `#${event.seq}`),
      h("span", { class: "t", title: new Date(event.at).toString() }, `+${duration((Date.parse(event.at) - start) / 1000)}`),
      h("span", { class: `ev ${eventClass(event.type)}` }, event.type.replace("_", " "), where ? ` ${where}` : ""),
      h("span", { class: "detail-text" }, detail));
  }

  function appendEvent(event) {
    const timeline = document.querySelector(".timeline");
    if (!timeline) return;
    const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 24;
    timeline.append(eventRow(event));
    if (atBottom) timeline.scrollTop = timeline.scrollHeight;
  }

  // -- wiring --

  function setFilter(key, value) {
    const filters = { ...state.filters, [key]: value };
    location.hash = hashFor(state.flowId, filters);
  }

  $("f-workflow").addEventListener("change", (e) => setFilter("workflow", e.target.value));
  $("f-status").addEventListener("change", (e) => setFilter("status", e.target.value));
  $("clear-parent").addEventListener("click", () => setFilter("parent_id", ""));
  $("refresh").addEventListener("click", () => { loadList(); if (state.flowId) refreshFlow(); });
  $("newer").addEventListener("click", () => { if (state.page > 0) { state.page -= 1; loadList(); } });
  $("older").addEventListener("click", () => { if (state.cursors[state.page + 1]) { state.page += 1; loadList(); } });
  window.addEventListener("hashchange", onHash);
  window.addEventListener("resize", () => drawDagEdges());
  // The list refreshes itself while the first page is shown; a page further back stays as it was read.
  setInterval(() => { if (state.page === 0 && !document.hidden) loadList(); }, 4000);

  loadWorkflows().then(onHash);
})();
