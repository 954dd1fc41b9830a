// The ops dashboard: plain JavaScript, no build step. Reads the JSON views with the token in a
// header and follows /v1/events (server-sent events, read with fetch so no token is in a URL).
"use strict";
(() => {
  const T = window.BRIDGE_I18N;
  const $ = (sel) => document.querySelector(sel);
  let lang = localStorage.getItem("bridge-ops-lang") || (navigator.language || "de").slice(0, 2);
  if (!T[lang]) lang = "de";
  let token = sessionStorage.getItem("bridge-ops-token") || "";
  let refreshing = null;
  let again = false;

  const t = (key, vars) => {
    let text = (T[lang] && T[lang][key]) || T.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) text = text.replace(`{${k}}`, String(v));
    return text;
  };

  function applyLanguage() {
    document.documentElement.lang = lang;
    $("#lang").value = lang;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    setLive($("#live").dataset.state);
  }

  function setLive(state) {
    const el = $("#live");
    el.dataset.state = state;
    el.textContent = t(state);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 120) return seconds < 10 ? `${seconds.toFixed(1)} s` : `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    if (response.status === 401 || response.status === 403) {
      throw Object.assign(new Error("auth"), { auth: true });
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
  }

  function renderOverview(o) {
    for (const li of document.querySelectorAll("#tiles li")) {
      const value = o[li.dataset.tile];
      li.querySelector(".n").textContent = value;
      li.dataset.alert = String(["stuck", "rejected_today", "expired_today", "withdrawn_today"].includes(li.dataset.tile) && value > 0);
    }
  }

  function filterQuery() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData($("#filters"))) if (v) params.set(k, v);
    params.set("limit", "100");
    return params.toString();
  }

  function renderMessages(list) {
    const body = $("#messages tbody");
    body.replaceChildren(...list.items.map((m) => el("tr",
      { "data-message-id": m.message_id, "data-recipient": m.recipient || "", "data-stuck": String(!!m.stuck) },
      el("td", { class: "id", title: m.message_id }, m.message_id.slice(0, 8)),
      el("td", {}, m.sender),
      el("td", {}, m.recipient || "–"),
      el("td", {}, m.type ? t(`ty_${m.type}`) : "–"),
      el("td", {}, el("span", { class: "state", "data-state": m.state, "data-field": "state",
        title: m.reason || "" }, t(`st_${m.state}`)), m.reason ? ` ${m.reason}` : ""),
      el("td", {}, duration(m.age_seconds)),
      el("td", {}, m.steps.delivered && m.steps.submitted
        ? duration((Date.parse(m.steps.delivered) - Date.parse(m.steps.submitted)) / 1000) : "–"),
    )));
    $("#messages-total").textContent = t("total", { shown: list.items.length, total: list.total });
  }

  function renderHealth(h) {
    const body = $("#health tbody");
    body.replaceChildren(...h.agencies.map((a) => el("tr", { "data-agency": a.agency },
      el("td", {}, a.agency),
      el("td", { class: a.adapter_up ? "up" : "down" },
        a.adapter_up ? t("up") : (a.adapter_last_seen ? t("down") : t("never"))),
      el("td", {}, a.inbox ? a.inbox.pending + a.inbox.ack_pending : "–"),
      el("td", {}, a.inbox ? a.inbox.redelivered : "–"),
      el("td", {}, duration(a.oldest_waiting_seconds)),
      el("td", {}, a.in_flight),
    )));
    const brokers = h.brokers.map((b) => `${b.name}: ${b.up ? t("up") : t("down")}`).join(", ");
    const subs = h.submissions ? ` · ${t("submissions")}: ${h.submissions.pending + h.submissions.ack_pending}` : "";
    $("#brokers").textContent = `${t("brokers")}: ${brokers || t("no_brokers")}${subs}`;
    for (const select of ["sender", "recipient"].map((n) => $(`#filters [name=${n}]`))) {
      const have = new Set([...select.options].map((o) => o.value));
      for (const a of h.agencies) if (!have.has(a.agency)) select.append(el("option", { value: a.agency }, a.agency));
    }
  }

  function renderAlerts(list) {
    const items = list.items.slice(0, 20).map((a) => el("li", { "data-status": a.status, "data-rule": a.rule },
      `${t(a.status)} · ${t(`k_${a.kind}`, { value: Math.round(a.value), subject: a.subject })} · `,
      `${t("since")} ${new Date(a.started_at).toLocaleString(lang)}`,
      a.resolved_at ? ` ${t("until")} ${new Date(a.resolved_at).toLocaleString(lang)}` : ""));
    $("#alerts").replaceChildren(...(items.length ? items : [el("li", { "data-status": "resolved" }, t("no_alerts"))]));
  }

  function renderAudit(a) {
    $("#audit tbody").replaceChildren(...a.agencies.map((g) => el("tr", { "data-agency": g.agency },
      el("td", {}, g.agency), el("td", {}, g.consents_registered), el("td", {}, g.consents_withdrawn),
      el("td", {}, g.consent_refusals), el("td", {}, g.deletions_confirmed), el("td", {}, g.keys_destroyed),
    )));
    const meta = [t("audit_records", { events: a.events, seq: a.last_sequence })];
    if (a.policy) meta.push(`${t("policy")}: ${a.policy.slice(0, 12)}`);
    if (a.directory_serial) meta.push(`${t("directory")}: ${a.directory_serial}`);
    $("#audit-meta").textContent = meta.join(" · ");
    const items = a.recent.slice(0, 20).map((e) => el("li", { "data-kind": e.kind },
      `${new Date(e.at).toLocaleString(lang)} · ${t(`a_${e.kind}`)}`,
      e.agency || e.sender ? ` · ${e.agency || e.sender}${e.recipient ? ` → ${e.recipient}` : ""}` : "",
      e.message_id ? ` · ${e.message_id.slice(0, 8)}` : "", e.reason ? ` · ${e.reason}` : ""));
    $("#audit-recent").replaceChildren(...(items.length ? items : [el("li", {}, t("no_audit"))]));
  }

  const COLOURS = { routed: "#0b5cad", delivered: "#1a7f37", receipted: "#8250df", end_to_end: "#cf222e" };
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function renderLatency(view) {
    const W = 900, H = 200, L = 50, B = 20;
    const end = Date.now(), start = end - view.window_seconds * 1000;
    const all = view.series.flatMap((s) => s.points.map((p) => p.mean_seconds));
    const top = Math.max(1, ...all) * 1.1;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H + B}`, role: "img", "aria-label": t("latency_chart") });
    root.append(svg("line", { x1: L, y1: H, x2: W, y2: H, class: "axis" }));
    root.append(svg("line", { x1: L, y1: 0, x2: L, y2: H, class: "axis" }));
    for (const frac of [0, 0.5, 1]) {
      const label = svg("text", { x: 4, y: H - frac * H + (frac === 1 ? 10 : 0) });
      label.textContent = duration(top * frac);
      root.append(label);
    }
    const x = (at) => L + ((Date.parse(at) - start) / (end - start)) * (W - L);
    const y = (v) => H - (v / top) * H;
    for (const series of view.series) {
      if (!series.points.length) continue;
      const colour = COLOURS[series.step] || "#555";
      root.append(svg("polyline", { points: series.points.map((p) => `${x(p.at)},${y(p.mean_seconds)}`).join(" "),
        fill: "none", stroke: colour, "stroke-width": 2, "data-step": series.step }));
      for (const p of series.points) root.append(svg("circle", { cx: x(p.at), cy: y(p.mean_seconds), r: 3, fill: colour }));
    }
    const legend = el("div", { class: "legend" }, ...view.series.map((s) => {
      const item = el("span", {}, t(`s_${s.step}`));
      item.style.color = COLOURS[s.step];
      return item;
    }));
    const parts = [root, legend];
    if (!all.length) parts.push(el("p", { class: "muted" }, t("no_data")));
    $("#chart").replaceChildren(...parts);
  }

  async function refresh() {
    if (refreshing) { again = true; return refreshing; }
    refreshing = (async () => {
      try {
        const [overview, messages, health, alerts, latency, audit] = await Promise.all([
          getJSON("/v1/overview"), getJSON(`/v1/messages?${filterQuery()}`), getJSON("/v1/health"),
          getJSON("/v1/alerts?limit=20"), getJSON("/v1/latency?window_seconds=3600&bucket_seconds=60"),
          getJSON("/v1/audit?limit=20"),
        ]);
        renderOverview(overview); renderMessages(messages); renderHealth(health);
        renderAlerts(alerts); renderLatency(latency); renderAudit(audit);
      } catch (error) {
        if (error.auth) signOut(true);
      } finally {
        refreshing = null;
        if (again) { again = false; refresh(); }
      }
    })();
    return refreshing;
  }

  async function follow() {
    while (token) {
      setLive("connecting");
      try {
        const response = await fetch("/v1/events", { headers: { Authorization: `Bearer ${token}` } });
        if (response.status === 401 || response.status === 403) { signOut(true); return; }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        setLive("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
            if (block.startsWith("event: update") && data) {
              renderOverview(JSON.parse(data));
              refresh();
            }
          }
        }
      } catch (error) { /* reconnect below */ }
      setLive("offline");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  function signOut(bad) {
    token = "";
    sessionStorage.removeItem("bridge-ops-token");
    $("#main").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = bad ? t("bad_token") : "";
  }

  function start() {
    $("#login").hidden = true;
    $("#main").hidden = false;
    refresh();
    follow();
  }

  document.addEventListener("DOMContentLoaded", () => {
    // A token handed over in the fragment (never sent to the server) moves to session storage.
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("token")) {
      token = fragment.get("token");
      sessionStorage.setItem("bridge-ops-token", token);
      history.replaceState(null, "", location.pathname + location.search);
    }
    applyLanguage();
    $("#lang").addEventListener("change", (e) => {
      lang = e.target.value;
      localStorage.setItem("bridge-ops-lang", lang);
      applyLanguage();
      refresh();
    });
    $("#filters").addEventListener("change", () => refresh());
    $("#login").addEventListener("submit", (e) => {
      e.preventDefault();
      token = $("#token").value.trim();
      sessionStorage.setItem("bridge-ops-token", token);
      $("#token").value = "";
      start();
    });
    if (token) start(); else signOut(false);
    setInterval(refresh, 15000); // ages and liveness move on even without events
  });
})();
