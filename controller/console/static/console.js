// signaltwin operator console: draws the state it receives over Server-Sent Events.
// Text goes into the page as DOM text nodes only (never innerHTML): controller ids,
// candidate names and error messages come from outside.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // the wait-change axis shared by every interval strip on the page (fractions); it
  // spans zero, the gate's threshold and every interval shown, in 10 % steps
  const AXIS = { low: -0.3, high: 0.1 };
  const STRIP = { width: 220, height: 26 };
  let videoName = null;
  // cycle id -> the row drawn for it and what it was drawn from: an unchanged cycle
  // keeps its element (its open details, the reader's place) across updates
  const rows = new Map();
  let selected = null;
  let latest = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function pct(value, digits) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    const text = (value * 100).toFixed(digits === undefined ? 1 : digits);
    return (value > 0 ? "+" : "") + text + " %";
  }

  function intervalText(interval) {
    if (!interval) return "–";
    return pct(interval.mean) + " (" + pct(interval.low) + " … " + pct(interval.high) + ")";
  }

  function clock(iso) {
    if (!iso) return "–";
    const t = new Date(iso);
    if (isNaN(t.getTime())) return String(iso);
    return t.toLocaleTimeString([], { hour12: false });
  }

  function seconds(value) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(1) + " s" : "–";
  }

  function replace(container, ...children) {
    container.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  // --- the calm visual: one interval strip per decision -----------------------------

  function x(value) {
    const clipped = Math.min(AXIS.high, Math.max(AXIS.low, value));
    return ((clipped - AXIS.low) / (AXIS.high - AXIS.low)) * STRIP.width;
  }

  // how sure: "clears" (the whole interval beyond the threshold), "straddles", "short"
  function confidence(interval, threshold) {
    if (!interval || threshold === null || threshold === undefined) return "unknown";
    if (interval.high <= -threshold) return "clears";
    if (interval.low <= -threshold) return "straddles";
    return "short";
  }

  function strip(rows, threshold, label) {
    const height = STRIP.height * rows.length;
    const root = svg("svg", {
      class: "strip",
      viewBox: "0 0 " + STRIP.width + " " + height,
      width: STRIP.width,
      height: height,
      role: "img",
      "aria-label": label,
    });
    root.append(svg("rect", { class: "track", x: 0, y: 0, width: STRIP.width, height: height }));
    root.append(svg("line", { class: "zero", x1: x(0), x2: x(0), y1: 0, y2: height }));
    if (typeof threshold === "number") {
      const t = x(-threshold);
      root.append(svg("line", { class: "threshold", x1: t, x2: t, y1: 0, y2: height }));
    }
    rows.forEach((row, i) => {
      const mid = i * STRIP.height + STRIP.height / 2;
      if (!row.interval) return;
      const left = x(row.interval.low);
      const right = x(row.interval.high);
      root.append(
        svg("rect", {
          class: "interval " + row.kind,
          "data-confidence": row.confidence || "unknown",
          x: left,
          y: mid - 5,
          width: Math.max(2, right - left),
          height: 10,
          rx: 5,
        })
      );
      root.append(svg("circle", { class: "mean " + row.kind, cx: x(row.interval.mean), cy: mid, r: 4 }));
    });
    const title = svg("title", {});
    title.textContent = label;
    root.append(title);
    return root;
  }

  // --- cycles -----------------------------------------------------------------------

  function decisionText(cycle) {
    if (cycle.outcome === "skipped") return "skipped (" + (cycle.reason || "?") + ")";
    if (cycle.failed_stage) return "failed in " + cycle.failed_stage;
    if (cycle.held) return "gate passed, held";
    if (cycle.decision === "none") return "no decision";
    if (cycle.decision === "pass") {
      const done = cycle.result === "deployed" ? "deployed" : cycle.result === "shadow" ? "shadow" : "passed";
      return "gate passed: " + done + (cycle.sequence ? " plan " + cycle.sequence : "");
    }
    // why the candidate drawn (the closest one) was refused; every verdict is in the details
    const shown = shownCandidate(cycle);
    const verdict = shown && shown.verdict.startsWith("refuse_") ? shown.verdict : cycle.decision;
    const why = { refuse_wait: "too little wait reduction", refuse_nox: "NOx", refuse_failed: "failed" };
    return "gate refused (" + (why[verdict] || verdict.replace("refuse_", "")) + ")";
  }

  function decisionKind(cycle) {
    if (cycle.failed_stage || cycle.result === "failed") return "failed";
    if (cycle.outcome === "skipped") return "skipped";
    if (cycle.held) return "held";
    if (cycle.decision === "pass") return cycle.result === "deployed" ? "deployed" : "passed";
    return "refused";
  }

  function shownCandidate(cycle) {
    const candidates = cycle.candidates || [];
    if (cycle.chosen) {
      const chosen = candidates.find((c) => c.name === cycle.chosen);
      if (chosen) return chosen;
    }
    // refused: the candidate that came closest (the largest predicted reduction)
    let best = null;
    for (const c of candidates) {
      if (c.wait && (!best || !best.wait || c.wait.high < best.wait.high)) best = c;
    }
    return best;
  }

  function stages(cycle) {
    const entries = Object.entries(cycle.stage_s || {}).filter(([, v]) => v >= 0.05);
    const total = entries.reduce((sum, [, v]) => sum + v, 0) || 1;
    const bar = el("div", { class: "stage-bar", role: "img", "aria-label": "stage times" });
    for (const [name, value] of entries) {
      const part = el("span", { class: "stage", "data-stage": name, title: name + " " + value.toFixed(1) + " s" });
      part.style.width = ((value / total) * 100).toFixed(2) + "%";
      bar.append(part);
    }
    const text = entries.map(([name, value]) => name + " " + value.toFixed(1) + "s").join(" · ");
    return el("div", { class: "stages" }, bar, el("span", { class: "stage-text" }, text || "–"));
  }

  function candidateTable(cycle) {
    const head = el(
      "tr",
      {},
      el("th", {}, "candidate"),
      el("th", {}, "verdict"),
      el("th", {}, "wait change (interval)"),
      el("th", {}, "NOx change (interval)"),
      el("th", {}, "reasons")
    );
    const rows = (cycle.candidates || []).map((c) =>
      el(
        "tr",
        { class: c.name === cycle.chosen ? "chosen" : null },
        el("td", {}, c.name),
        el("td", {}, c.verdict),
        el("td", {}, intervalText(c.wait)),
        el("td", {}, intervalText(c.nox)),
        el("td", {}, c.failed ? "failed: " + c.failed : (c.reasons || []).join("; "))
      )
    );
    return el("table", { class: "candidates" }, el("thead", {}, head), el("tbody", {}, ...rows));
  }

  function cycleRow(cycle) {
    const candidate = shownCandidate(cycle);
    const threshold = cycle.min_wait_reduction;
    // a candidate refused for its NOx is drawn apart: its wait interval alone would mislead
    const refusedForNox = candidate && candidate.verdict === "refuse_nox";
    const sure = refusedForNox ? "nox" : confidence(candidate && candidate.wait, threshold);
    const label = candidate
      ? candidate.name + ": wait " + intervalText(candidate.wait) + ", threshold " + pct(-threshold) +
        (refusedForNox ? "; refused for NOx " + intervalText(candidate.nox) : "")
      : "no prediction";
    const visual = candidate && candidate.wait
      ? strip([{ interval: candidate.wait, kind: "predicted", confidence: sure }], threshold, label)
      : el("span", { class: "no-visual" }, "–");
    const summary = el(
      "summary",
      { class: "cycle-row", "data-kind": decisionKind(cycle) },
      el("span", { class: "slot" }, clock(cycle.slot_time)),
      el("span", { class: "decision", "data-kind": decisionKind(cycle) }, decisionText(cycle)),
      el("span", { class: "visual" }, visual),
      el(
        "span",
        { class: "prediction" },
        candidate && candidate.wait
          ? candidate.name + " " + pct(candidate.wait.mean) +
            (refusedForNox && candidate.nox ? ", NOx up to " + pct(candidate.nox.high, 2) : "")
          : ""
      ),
      stages(cycle),
      el("span", { class: "total" }, seconds(cycle.total_s))
    );
    const details = [];
    if (cycle.held) details.push(el("p", {}, "held: " + cycle.held));
    if (cycle.reason && !cycle.held) details.push(el("p", {}, "reason: " + cycle.reason));
    if (cycle.error) details.push(el("p", { class: "error" }, "error: " + cycle.error));
    if ((cycle.candidates || []).length) details.push(candidateTable(cycle));
    if (cycle.basis) details.push(el("p", { class: "hint" }, "decided on the " + cycle.basis.replace("_", " ")));
    if (!details.length) details.push(el("p", { class: "hint" }, "nothing more recorded"));
    const open = document.querySelector(
      '#cycles details[data-cycle-id="' + CSS.escape(cycle.cycle_id) + '"]'
    );
    return el(
      "details",
      { class: "cycle", "data-cycle-id": cycle.cycle_id, open: open && open.open ? "" : null },
      summary,
      el("div", { class: "cycle-details" }, ...details)
    );
  }

  function drawCycles(state) {
    const container = document.getElementById("cycles");
    if (!state.cycles.length) {
      replace(container, el("p", { class: "empty" }, "no cycle yet"));
      return;
    }
    const header = el(
      "div",
      { class: "cycle-head" },
      el("span", {}, "slot"),
      el("span", {}, "gate decision"),
      el("span", { title: "the axis of every bar" }, "wait change " + pct(AXIS.low, 0) + " … " + pct(AXIS.high, 0)),
      el("span", {}, ""),
      el("span", {}, "stage times"),
      el("span", {}, "total")
    );
    const shown = new Set();
    const nodes = state.cycles.map((cycle) => {
      shown.add(cycle.cycle_id);
      const key = JSON.stringify(cycle) + "|" + AXIS.low + "|" + AXIS.high;
      const drawn = rows.get(cycle.cycle_id);
      if (drawn && drawn.key === key) return drawn.node;
      const node = cycleRow(cycle);
      rows.set(cycle.cycle_id, { key: key, node: node });
      return node;
    });
    for (const id of [...rows.keys()]) if (!shown.has(id)) rows.delete(id);
    replace(container, header, ...nodes);
  }

  // --- the map ------------------------------------------------------------------------

  function drawMap(state) {
    const byId = new Map(state.intersections.map((i) => [i.id, i]));
    for (const marker of document.querySelectorAll("#map circle.tls")) {
      const info = byId.get(marker.dataset.tls);
      marker.dataset.status = info ? info.status : "unchanged";
      marker.dataset.up = info && info.up === false ? "false" : "true";
    }
    if (selected) showIntersection(selected);
  }

  function showIntersection(id) {
    selected = id;
    const detail = document.getElementById("map-detail");
    const info = latest && latest.intersections.find((i) => i.id === id);
    for (const marker of document.querySelectorAll("#map circle.tls")) {
      marker.classList.toggle("selected", marker.dataset.tls === id);
    }
    if (!info) {
      replace(detail, id + ": no plan recorded");
      return;
    }
    const parts = [
      info.id + ": plan " + (info.plan_sequence || "base"),
      info.mode ? info.mode + ", cycle " + info.cycle_s + " s, offset " + info.offset_s + " s" : null,
      info.last_change ? "last changed by plan " + info.last_change : "never changed",
      info.previous_cycle_s && info.previous_cycle_s !== info.cycle_s
        ? "cycle was " + info.previous_cycle_s + " s"
        : null,
      info.up === false ? "controller NOT answering" : info.up ? "controller answering" : "controller not observed yet",
    ];
    replace(detail, parts.filter(Boolean).join(" · "));
  }

  // --- controllers --------------------------------------------------------------------

  function drawHealth(state) {
    const health = state.controllers;
    const summary = document.getElementById("health-summary");
    const observed = health.observed ? " (cycle " + clock(health.observed) + ")" : "";
    if (!health.observed) {
      summary.textContent = health.total + " controllers, not observed yet";
    } else {
      summary.textContent = health.up.length + " of " + health.total + " controllers answering" + observed;
    }
    summary.dataset.down = String(health.down.length);
    const grid = document.getElementById("health-grid");
    const cells = [];
    const status = new Map();
    health.up.forEach((id) => status.set(id, "up"));
    health.down.forEach((id) => status.set(id, "down"));
    health.unknown.forEach((id) => status.set(id, "unknown"));
    for (const [id, value] of status) {
      const errors = health.errors[id];
      cells.push(
        el("span", { class: "controller", "data-status": value, title: id + ": " + value + (errors ? ", " + errors + " OPC UA errors" : "") }, id)
      );
    }
    replace(grid, ...cells);
    const down = document.getElementById("health-down");
    down.textContent = health.down.length ? "not answering: " + health.down.join(", ") : "";
  }

  // --- deployments --------------------------------------------------------------------

  function drawDeployments(state) {
    const container = document.getElementById("deployments");
    if (!state.deployments.length) {
      replace(container, el("p", { class: "empty" }, "no deployment yet"));
      return;
    }
    const threshold = state.gate.min_wait_reduction;
    const rows = state.deployments.map((d) => {
      const measuredText = d.measured_wait
        ? "measured " + intervalText(d.measured_wait)
        : d.measured_status === "pending"
          ? "not measured yet"
          : d.measured_status.replace("_", " ");
      const visual = strip(
        [
          { interval: d.predicted_wait, kind: "predicted", confidence: confidence(d.predicted_wait, threshold) },
          { interval: d.measured_wait, kind: "measured", confidence: confidence(d.measured_wait, threshold) },
        ],
        threshold,
        "plan " + d.sequence + ": predicted " + intervalText(d.predicted_wait) + ", " + measuredText
      );
      return el(
        "div",
        { class: "deployment", "data-sequence": d.sequence },
        el("span", { class: "plan" }, "plan " + d.sequence),
        el("span", { class: "result" }, d.result || "?"),
        el("span", { class: "visual" }, visual),
        el(
          "span",
          { class: "numbers" },
          el("span", {}, "predicted " + intervalText(d.predicted_wait)),
          el("span", { class: "measured", "data-status": d.measured_status }, measuredText),
          d.note ? el("small", {}, d.note) : null
        )
      );
    });
    replace(container, ...rows);
  }

  // --- video and header ---------------------------------------------------------------

  function drawVideo(state) {
    const container = document.getElementById("video");
    if (!state.video) {
      if (videoName !== null) {
        replace(container, el("p", { class: "empty" }, "no video yet"));
        videoName = null;
      }
      return;
    }
    if (state.video.name === videoName) return;
    videoName = state.video.name;
    replace(
      container,
      el("video", { controls: "", preload: "metadata", src: state.video.url, width: "100%" }),
      el("p", { class: "hint" }, state.video.name + ": current plan on the left, the candidate on the right")
    );
  }

  function drawHeader(state) {
    document.getElementById("network").textContent = state.network_id;
    document.getElementById("mode").textContent = "mode " + state.mode;
    document.getElementById("schedule").textContent = "a cycle every " + state.interval_s + " s";
    const line = document.getElementById("status-line");
    if (state.running) {
      line.textContent = "cycle " + clock(state.running) + " running since " + clock(state.running_since);
      line.dataset.running = "true";
    } else if (state.cycles.length) {
      const last = state.cycles[0];
      line.textContent = "last cycle " + clock(last.slot_time) + ": " + decisionText(last);
      line.dataset.running = "false";
    } else {
      line.textContent = "waiting for the first cycle";
      line.dataset.running = "false";
    }
    const ledger = document.getElementById("ledger-line");
    ledger.textContent = state.ledger.problem
      ? state.ledger.problem
      : "ledger: " + state.ledger.records + " records" +
        (state.ledger.unreadable ? ", " + state.ledger.unreadable + " not shown (unreadable)" : "");
  }

  function updateAxis(state) {
    const values = [0, -(state.gate.min_wait_reduction || 0)];
    for (const cycle of state.cycles) {
      const c = shownCandidate(cycle);
      if (c && c.wait) values.push(c.wait.low, c.wait.high);
      if (typeof cycle.min_wait_reduction === "number") values.push(-cycle.min_wait_reduction);
    }
    for (const d of state.deployments) {
      for (const i of [d.predicted_wait, d.measured_wait]) if (i) values.push(i.low, i.high);
    }
    const finite = values.filter((v) => typeof v === "number" && isFinite(v));
    AXIS.low = Math.max(-1, Math.floor(Math.min(...finite) * 10 - 0.5) / 10);
    AXIS.high = Math.min(1, Math.ceil(Math.max(...finite) * 10 + 0.5) / 10);
  }

  function draw(state) {
    latest = state;
    updateAxis(state);
    document.body.dataset.version = String(state.version);
    drawHeader(state);
    drawCycles(state);
    drawMap(state);
    drawHealth(state);
    drawDeployments(state);
    drawVideo(state);
  }

  function connection(text, value) {
    const node = document.getElementById("connection");
    node.textContent = text;
    node.dataset.state = value;
  }

  function poll() {
    fetch("/api/state", { cache: "no-store", credentials: "same-origin" })
      .then((r) => r.json())
      .then(draw)
      .catch(() => connection("not connected", "lost"))
      .finally(() => setTimeout(poll, 5000));
  }

  function start() {
    document.getElementById("map").addEventListener("click", (event) => {
      const target = event.target.closest("circle.tls");
      if (target) showIntersection(target.dataset.tls);
    });
    if (!("EventSource" in window)) {
      connection("polling", "polling");
      poll();
      return;
    }
    const events = new EventSource("/events");
    events.addEventListener("state", (event) => {
      connection("live", "live");
      draw(JSON.parse(event.data));
    });
    events.addEventListener("open", () => connection("live", "live"));
    events.addEventListener("error", () => connection("reconnecting", "reconnecting"));
  }

  document.addEventListener("DOMContentLoaded", start);
})();
