// The aiperimeter watch dashboard: fetches /admin/api/overview and draws it in SVG. Every value in the data may come
// from an attacker (key names, models, addresses, paths), so the DOM is built with textContent and attributes that
// this script names itself; no HTML is ever parsed from data.
"use strict";
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const RANGES = { "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  const REFRESH_MS = 10000;
  const SEVERITIES = ["low", "medium", "high", "critical"];
  const STATUS_ORDER = ["2xx", "3xx", "4xx", "5xx", "1xx", "other"];
  const MAX_EVIDENCE = 12;
  const $ = (id) => document.getElementById(id);

  let range = "1h";
  let last = null;
  let names = new Map();
  let loading = false;

  // --- DOM helpers: element names and attribute names are always literals of this script ---

  function build(node, props, children) {
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (typeof value === "function") node.addEventListener(name, value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }
  const h = (tag, props, ...children) => build(document.createElement(tag), props, children);
  const s = (tag, props, ...children) => build(document.createElementNS(SVG_NS, tag), props, children);
  const str = (value) => (value === null || value === undefined ? "" : String(value));
  const num = (value) => (typeof value === "number" && Number.isFinite(value) ? value : 0);

  // --- formatting ---

  function fmt(n) {
    if (n === null || n === undefined || !Number.isFinite(n)) return "–";
    const a = Math.abs(n);
    for (const [size, unit] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
      if (a >= size) return (n / size).toFixed(a >= size * 10 ? 0 : 1) + unit;
    }
    return String(Math.round(n * 10) / 10);
  }
  function ms(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
    return (v >= 10 ? Math.round(v) : Math.round(v * 10) / 10) + " ms";
  }
  function clock(t, withDay) {
    const d = new Date(t * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return withDay ? d.toLocaleDateString([], { weekday: "short" }) + " " + hm : hm;
  }
  function stamp(t) {
    if (!Number.isFinite(t)) return "–";
    return new Date(t * 1000).toLocaleString([], {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }
  function span(seconds) {
    const a = Math.abs(seconds);
    if (a < 90) return Math.round(a) + " s";
    if (a < 5400) return Math.round(a / 60) + " min";
    if (a < 172800) return Math.round(a / 3600) + " h";
    return Math.round(a / 86400) + " d";
  }
  const ago = (t, now) => (Number.isFinite(t) ? span(now - t) + " ago" : "–");
  function keyText(key, kind) {
    if (kind === "other") return "other keys";
    if (kind === "none" || !key) return "no valid key";
    const name = names.get(String(key));
    return name ? `${name} (${key})` : String(key);
  }
  function shorten(text, max) {
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  // --- chart scaffolding ---

  const PAD = { left: 46, right: 10, top: 8, bottom: 22 };

  // The axis for values up to v: a round step (1, 2 or 5 times a power of ten; whole numbers for counts) and at most
  // five steps to the top.
  function scale(v, whole) {
    if (!(v > 0)) return { max: whole ? 4 : 1, step: whole ? 1 : 0.25 };
    const raw = v / 5;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 5, 10].map((m) => m * exp).find((m) => m >= raw * (1 - 1e-9));
    if (whole) step = Math.max(1, Math.round(step));
    return { max: Math.ceil(v / step - 1e-9) * step, step };
  }
  function frame(container) {
    const width = Math.max(container.clientWidth, 280);
    const height = Math.max(container.clientHeight, 140);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    const plot = {
      svg, width, height,
      x0: PAD.left, x1: width - PAD.right, y0: PAD.top, y1: height - PAD.bottom,
    };
    plot.w = plot.x1 - plot.x0;
    plot.h = plot.y1 - plot.y0;
    return plot;
  }
  function gridY(plot, axis, label) {
    const ticks = Math.round(axis.max / axis.step);
    for (let i = 0; i <= ticks; i++) {
      const y = plot.y1 - (plot.h * i) / ticks;
      plot.svg.append(
        s("line", { class: i ? "grid" : "axis", x1: plot.x0, x2: plot.x1, y1: y, y2: y }),
        s("text", { x: plot.x0 - 6, y: y + 4, "text-anchor": "end", text: label(Math.round(axis.step * i * 1e6) / 1e6) }),
      );
    }
  }
  function axisX(plot, times, x) {
    const n = times.length;
    const withDay = RANGES[range] > 86400;
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plot.w / 90))));
    for (let i = 0; i < n; i += every) {
      const at = x(i);
      const anchor = at < plot.x0 + 30 ? "start" : at > plot.x1 - 30 ? "end" : "middle";
      plot.svg.append(s("text", { x: at, y: plot.y1 + 15, "text-anchor": anchor, text: clock(times[i], withDay) }));
    }
  }
  function empty(container, text, code) {
    container.replaceChildren(h("p", { class: "empty" }, text, code ? h("code", { text: code }) : null));
  }

  // A hover readout for time series: a dashed rule and a box listing each series at that point.
  function hover(plot, times, x, rows) {
    const tip = $("tip");
    const rule = s("line", { class: "rule", y1: plot.y0, y2: plot.y1, x1: plot.x0, x2: plot.x0, visibility: "hidden" });
    const hit = s("rect", { class: "hit", x: plot.x0, y: plot.y0, width: plot.w, height: plot.h });
    plot.svg.append(rule, hit);
    const n = times.length;
    hit.addEventListener("mousemove", (ev) => {
      const box = plot.svg.getBoundingClientRect();
      const mx = ((ev.clientX - box.left) * plot.width) / box.width;
      const i = Math.min(n - 1, Math.max(0, Math.round(((mx - plot.x0) / plot.w) * (n - 1))));
      rule.setAttribute("x1", x(i));
      rule.setAttribute("x2", x(i));
      rule.setAttribute("visibility", "visible");
      const step = last && last.traffic ? last.traffic.step : 60;
      tip.replaceChildren(h("p", { class: "when", text: `${stamp(times[i])} (+${span(step)})` }));
      for (const row of rows(i)) {
        tip.append(h("div", {}, h("span", { class: `sw ${row.cls}` }), h("span", { text: row.label }), h("b", { text: row.value })));
      }
      tip.hidden = false;
      const left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
      tip.style.left = `${Math.max(8, left)}px`;
      tip.style.top = `${Math.max(8, ev.clientY - tip.offsetHeight - 10)}px`;
    });
    hit.addEventListener("mouseleave", () => {
      tip.hidden = true;
      rule.setAttribute("visibility", "hidden");
    });
  }

  // Series stacked on each other, as filled areas (lines between points) or as bars (one per point).
  function stacked(container, times, series, opts) {
    const plot = frame(container);
    const n = times.length;
    const totals = new Array(n).fill(0);
    const layers = series.map((one) => {
      const base = totals.slice();
      one.values.forEach((v, i) => { totals[i] += num(v); });
      return { one, base, top: totals.slice() };
    });
    const axis = scale(Math.max(0, ...totals), true);
    const max = axis.max;
    const bars = opts.bars;
    const slot = plot.w / Math.max(n, 1);
    const x = bars ? (i) => plot.x0 + slot * (i + 0.5) : (i) => plot.x0 + (n > 1 ? (i * plot.w) / (n - 1) : plot.w / 2);
    const y = (v) => plot.y1 - (v / max) * plot.h;
    gridY(plot, axis, fmt);
    for (const { one, base, top } of layers) {
      const title = s("title", { text: one.label });
      if (bars) {
        const g = s("g", { class: one.cls }, title);
        const bw = Math.max(1, slot * 0.78);
        top.forEach((t, i) => {
          if (t > base[i]) {
            g.append(s("rect", { x: (x(i) - bw / 2).toFixed(1), y: y(t).toFixed(1), width: bw.toFixed(1), height: (y(base[i]) - y(t)).toFixed(1) }));
          }
        });
        plot.svg.append(g);
      } else {
        let d = "";
        for (let i = 0; i < n; i++) d += `${i ? "L" : "M"}${x(i).toFixed(1)},${y(top[i]).toFixed(1)}`;
        for (let i = n - 1; i >= 0; i--) d += `L${x(i).toFixed(1)},${y(base[i]).toFixed(1)}`;
        plot.svg.append(s("path", { class: `area ${one.cls}`, d: d + "Z" }, title));
      }
    }
    axisX(plot, times, x);
    hover(plot, times, x, (i) => {
      const rows = layers
        .filter((layer) => num(layer.one.values[i]) > 0)
        .map((layer) => ({ cls: layer.one.cls, label: layer.one.label, value: fmt(num(layer.one.values[i])) }))
        .reverse();
      rows.push({ cls: "", label: "total", value: fmt(totals[i]) });
      return rows;
    });
    container.replaceChildren(plot.svg);
  }

  function legend(list, items) {
    list.replaceChildren(...items.map((item) => h("li", { title: item.label }, h("span", { class: `sw ${item.cls}` }), h("span", { text: item.label }))));
  }

  // Horizontal bars, one row per item; each row may hold several segments laid end to end.
  function rows(container, items, note) {
    const width = Math.max(container.clientWidth, 280);
    const rowH = 26;
    const height = items.length * rowH + 4;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    const labelW = Math.min(200, Math.round(width * 0.36));
    const valueW = 110;
    const barW = Math.max(40, width - labelW - valueW - 12);
    const max = Math.max(1, ...items.map((it) => it.parts.reduce((a, p) => a + p.value, 0)));
    items.forEach((item, r) => {
      const y = r * rowH + 4;
      svg.append(s("text", { class: "label", x: 0, y: y + 15 }, shorten(item.label, Math.max(8, Math.floor(labelW / 7.2))), s("title", { text: item.label })));
      let at = labelW;
      for (const part of item.parts) {
        const w = (part.value / max) * barW;
        if (w > 0) svg.append(s("rect", { class: part.cls, x: at.toFixed(1), y, width: Math.max(1, w).toFixed(1), height: 18, rx: 3 }, s("title", { text: `${part.label}: ${part.value}` })));
        at += w;
      }
      svg.append(s("text", { class: "value", x: width, y: y + 15, "text-anchor": "end", text: item.value }));
    });
    container.replaceChildren(svg);
    if (note) container.append(note);
  }

  function lines(container, times, series) {
    const plot = frame(container);
    const n = times.length;
    const axis = scale(Math.max(0, ...series.flatMap((one) => one.values.map(num))), false);
    const max = axis.max;
    const x = (i) => plot.x0 + (n > 1 ? (i * plot.w) / (n - 1) : plot.w / 2);
    const y = (v) => plot.y1 - (v / max) * plot.h;
    gridY(plot, axis, ms);
    for (const one of series) {
      let d = "";
      let pen = false;
      one.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(num(v)).toFixed(1)}`;
        pen = true;
      });
      // A lone point would draw nothing: mark every point when the series is sparse.
      if (d) plot.svg.append(s("path", { class: `line ${one.cls}`, d }, s("title", { text: one.label })));
      one.values.forEach((v, i) => {
        const alone = v !== null && (i === 0 || one.values[i - 1] === null) && (i === n - 1 || one.values[i + 1] === null);
        if (alone) plot.svg.append(s("circle", { class: one.cls, cx: x(i), cy: y(num(v)), r: 2.5 }));
      });
    }
    axisX(plot, times, x);
    hover(plot, times, x, (i) => series.map((one) => ({ cls: one.cls, label: one.label, value: ms(one.values[i]) })));
    container.replaceChildren(plot.svg);
  }

  // --- sections ---

  function renderTiles(data) {
    const t = (data.traffic && data.traffic.totals) || null;
    const critical = data.alerts.filter((a) => a.severity === "critical" || a.severity === "high").length;
    const tile = (label, value, warn) => h("div", { class: warn ? "tile warn" : "tile" }, h("b", { text: value }), h("span", { text: label }));
    const denied = t ? num(t.denied) : 0;
    const share = t && t.requests ? ` (${Math.round((denied / t.requests) * 100)}%)` : "";
    $("tiles").replaceChildren(
      tile("requests", t ? fmt(t.requests) : "–"),
      tile("denied" + share, t ? fmt(denied) : "–", denied > 0),
      tile("tokens in", t ? fmt(t.tokens_in) : "–"),
      tile("tokens out", t ? fmt(t.tokens_out) : "–"),
      tile("p95 latency", t ? ms(t.p95_ms) : "–"),
      tile("keys seen", t ? fmt(t.keys) : "–"),
      tile(critical ? "alerts (high or critical: " + critical + ")" : "alerts", String(data.alerts.length), critical > 0),
    );
  }

  function renderTraffic(data) {
    const chart = $("traffic-chart");
    const t = data.traffic;
    if (!t) {
      empty(chart, data.watch.message || "Watch is off, so no traffic is counted.");
      $("traffic-legend").replaceChildren();
      return;
    }
    if (!t.totals.requests) {
      empty(chart, "No requests in this window. Requests appear here within seconds of the gateway serving them; choose a longer range to see earlier traffic.");
      $("traffic-legend").replaceChildren();
      return;
    }
    let k = 0;
    const series = t.requests.map((one) => ({
      label: keyText(one.key, one.kind),
      cls: one.kind === "other" ? "s8" : `s${k++ % 8}`,
      values: one.values,
    }));
    stacked(chart, t.times, series, { bars: false });
    legend($("traffic-legend"), series);
  }

  function renderDenies(data) {
    const chart = $("deny-chart");
    const totals = $("deny-totals");
    const t = data.traffic;
    if (!t || !t.totals.denied) {
      empty(chart, t ? "No denied requests in this window." : "Watch is off, so no denied requests are counted.");
      totals.replaceChildren();
      return;
    }
    const label = (reason) => (reason === null ? "other reasons" : str(reason));
    const series = t.denied.map((one, i) => ({ label: label(one.reason), cls: one.reason === null ? "d8" : `d${i % 8}`, values: one.values }));
    stacked(chart, t.times, series, { bars: true });
    const cls = new Map(series.map((one) => [one.label, one.cls]));
    rows(totals, t.deny_totals.map((one) => {
      const text = label(one.reason);
      return { label: text, value: fmt(num(one.count)), parts: [{ cls: cls.get(text) || "d8", value: num(one.count), label: text }] };
    }));
  }

  function renderTokens(data) {
    const chart = $("token-chart");
    const t = data.traffic;
    if (!t || !t.top_tokens.length) {
      empty(chart, t ? "No token usage in this window. Tokens are counted from the usage the model server reports in its responses." : "Watch is off, so no tokens are counted.");
      return;
    }
    rows(chart, t.top_tokens.map((one) => ({
      label: keyText(one.key, one.kind),
      value: `${fmt(num(one.tokens_in))} in · ${fmt(num(one.tokens_out))} out`,
      parts: [
        { cls: "tin", value: num(one.tokens_in), label: "tokens in" },
        { cls: "tout", value: num(one.tokens_out), label: "tokens out" },
      ],
    })), h("ul", { class: "legend" },
      h("li", {}, h("span", { class: "sw tin" }), h("span", { text: "tokens in (prompt)" })),
      h("li", {}, h("span", { class: "sw tout" }), h("span", { text: "tokens out (completion)" }))));
  }

  function renderLatency(data) {
    const chart = $("latency-chart");
    const t = data.traffic;
    const status = $("status-chart");
    if (!t || !t.totals.requests) {
      empty(chart, t ? "No requests in this window." : "Watch is off, so latency is not measured here.");
      $("latency-legend").replaceChildren();
      status.replaceChildren();
      return;
    }
    const series = [
      { label: "p50 (median)", cls: "p50", values: t.latency.p50 },
      { label: "p95", cls: "p95", values: t.latency.p95 },
    ];
    lines(chart, t.times, series);
    legend($("latency-legend"), series);
    const total = STATUS_ORDER.reduce((a, c) => a + num(t.status[c]), 0);
    const parts = STATUS_ORDER.filter((c) => num(t.status[c]) > 0).map((c) => ({ cls: `st-${c}`, value: num(t.status[c]), label: c }));
    rows(status, [{ label: "responses by status", value: fmt(total), parts }],
      h("ul", { class: "legend" }, parts.map((p) => h("li", {}, h("span", { class: `sw ${p.cls}` }),
        h("span", { text: `${p.label}: ${fmt(p.value)} (${Math.round((p.value / total) * 100)}%)` })))));
  }

  function renderAlerts(data) {
    const list = $("alert-list");
    const alerts = data.alerts;
    $("alert-count").textContent = alerts.length ? String(alerts.length) : "";
    if (!alerts.length) {
      list.replaceChildren(h("li", { class: "empty" },
        "No alerts in this window. An alert is raised when a key departs from its learned behaviour, on bursts of denied requests, and on any use of a canary key (create one with ",
        h("code", { text: "aiperimeter keys create --canary" }), ")."));
      return;
    }
    list.replaceChildren(...alerts.map((a) => {
      const severity = SEVERITIES.includes(a.severity) ? a.severity : "low";
      const meta = [str(a.kind).replace(/_/g, " "), `${stamp(a.time)} (${ago(a.time, data.now)})`];
      if (a.key) meta.push("key " + keyText(a.key, "key"));
      if (a.client) meta.push("from " + str(a.client));
      const evidence = Array.isArray(a.evidence) ? a.evidence.map(str) : [];
      const actions = Array.isArray(a.actions) ? a.actions.map(str) : [];
      const agent = a.details && typeof a.details.user_agent === "string" ? a.details.user_agent : null;
      return h("li", { class: `alert sev-${severity}` },
        h("div", { class: "head" }, h("span", { class: `badge sev-${severity}`, text: severity }), h("span", { class: "summary", text: str(a.summary) || str(a.kind) })),
        h("div", { class: "meta", text: meta.join(" · ") }),
        h("dl", { class: "compare" },
          h("dt", { text: "usual" }), h("dd", { text: str(a.baseline) || "–" }),
          h("dt", { text: "seen" }), h("dd", { text: str(a.observed) || "–" }),
          agent ? [h("dt", { text: "user agent" }), h("dd", { text: agent })] : null),
        actions.length ? h("div", { class: "meta", text: "done automatically: " + actions.join(", ").replace(/_/g, " ") }) : null,
        evidence.length ? h("div", { class: "evidence" }, h("span", { class: "muted", text: "evidence:" }),
          evidence.slice(0, MAX_EVIDENCE).map((id) => h("button", { type: "button", title: `audit record ${id}`, click: () => openRecord(id) }, id.length > 10 ? "…" + id.slice(-8) : id)),
          evidence.length > MAX_EVIDENCE ? h("span", { class: "muted", text: `and ${evidence.length - MAX_EVIDENCE} more` }) : null) : null);
    }));
  }

  function table(container, head, body, emptyText, emptyCode, more) {
    if (!body.length) {
      empty(container, emptyText, emptyCode);
      return;
    }
    container.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, head.map((text) => h("th", { text })))),
      h("tbody", {}, body.map((row) => h("tr", { class: row.cls || null }, row.cells.map((text) => h("td", { text })))))));
    if (more > body.length) container.append(h("p", { class: "muted", text: `${more - body.length} more not shown.` }));
  }

  function renderLists(data) {
    const now = data.now;
    table($("suspended-list"), ["key", "id", "suspended"],
      data.suspended.map((k) => ({ cells: [str(k.name), str(k.id), k.suspended_at ? ago(k.suspended_at, now) : "–"] })),
      "No suspended keys. A key is suspended by hand (aiperimeter keys suspend ID) or by an alert's automatic action (watch.actions); resume it with ",
      "aiperimeter keys resume ID", data.suspended_total);
    table($("block-list"), ["address", "blocked for", "reason"],
      data.blocks.map((b) => ({ cells: [str(b.address), span(num(b.until) - now) + " more", str(b.reason)] })),
      "No blocked addresses. Addresses are blocked for a while after repeated failed authentication (watch.brute_force) or by an alert's block_address action; list and lift blocks with ",
      "aiperimeter watch blocks", data.blocks_total);
    const tripped = new Set(data.alerts.filter((a) => a.kind === "canary" && a.key).map((a) => str(a.key)));
    table($("canary-list"), ["key", "id", "created", "state"],
      data.canaries.map((k) => ({
        cls: tripped.has(str(k.id)) ? "tripped" : null,
        cells: [str(k.name), str(k.id), ago(k.created_at, now), tripped.has(str(k.id)) ? "USED in this window" : "untouched"],
      })),
      "No canary keys. A canary key looks like any other, is never served, and raises a critical alert on first use: plant one where a leak would show (a config file, a repository). Create one with ",
      "aiperimeter keys create --canary --name NAME", data.canaries_total);
  }

  function render(data) {
    names = new Map(Object.entries(data.names || {}).map(([id, name]) => [id, str(name)]));
    const banner = $("banner");
    banner.hidden = data.watch.running;
    banner.textContent = data.watch.running ? "" : str(data.watch.message);
    renderTiles(data);
    renderTraffic(data);
    renderDenies(data);
    renderAlerts(data);
    renderTokens(data);
    renderLatency(data);
    renderLists(data);
  }

  // --- audit records (alert evidence) ---

  async function openRecord(id) {
    const dialog = $("record");
    const body = $("record-body");
    $("record-title").textContent = `Audit record ${id}`;
    body.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    if (!dialog.open) dialog.showModal();
    try {
      const response = await fetch(`/admin/api/audit/${encodeURIComponent(id)}`, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error(await problem(response));
      const record = await response.json();
      body.replaceChildren(h("table", {}, h("tbody", {}, Object.entries(record).map(([field, value]) =>
        h("tr", {}, h("td", { text: field }), h("td", { class: "mono", text: value !== null && typeof value === "object" ? JSON.stringify(value) : str(value) }))))));
    } catch (err) {
      body.replaceChildren(h("p", { class: "empty", text: str(err.message) }));
    }
  }

  async function problem(response) {
    try {
      const doc = await response.json();
      if (doc && doc.error && doc.error.message) return str(doc.error.message);
    } catch (_) { /* not JSON */ }
    return `the admin API answered ${response.status}`;
  }

  // --- refresh loop ---

  function say(text, error) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", !!error);
  }

  async function refresh() {
    if (loading) return;
    loading = true;
    const asked = range;
    try {
      const response = await fetch(`/admin/api/overview?window=${RANGES[asked]}`, {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(await problem(response));
      const data = await response.json();
      if (asked !== range) return;
      last = data;
      render(data);
      say(`Updated ${clock(data.now)} · refreshes every ${REFRESH_MS / 1000} s`);
      document.documentElement.setAttribute("data-state", "ready");
    } catch (err) {
      say(`Could not load the dashboard data: ${str(err.message)}. Retrying every ${REFRESH_MS / 1000} s.`, true);
      document.documentElement.setAttribute("data-state", "error");
    } finally {
      loading = false;
      if (asked !== range) refresh();
    }
  }

  function choose(name) {
    range = Object.prototype.hasOwnProperty.call(RANGES, name) ? name : "1h";
    for (const button of document.querySelectorAll("#range button")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
  }

  function start() {
    choose(location.hash.slice(1));
    for (const button of document.querySelectorAll("#range button")) {
      button.addEventListener("click", () => {
        choose(button.dataset.range);
        history.replaceState(null, "", `#${range}`);
        refresh();
      });
    }
    window.addEventListener("hashchange", () => { choose(location.hash.slice(1)); refresh(); });
    $("record-close").addEventListener("click", () => $("record").close());
    let resizing = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { if (last) render(last); }, 150);
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
    refresh();
  }

  start();
})();
