// window.hyperhive: the dashboard's shared runtime, and the API plugin panels use.
// Documented in docs/dashboard.md; keep the two in step.
"use strict";

(() => {
  const { formatDuration, clock, ago, escape } = hyperhiveFormat;
  const body = document.body;
  const csrf = document.querySelector('meta[name="hyperhive-csrf"]').content;
  const agent = body.dataset.agent || null;
  const listeners = new Map();

  // -- the shared live stream ---------------------------------------------------------

  let source = null;
  let live = false;
  let lastId = null;

  function on(type, fn) {
    if (!listeners.has(type)) listeners.set(type, new Set());
    listeners.get(type).add(fn);
    return () => listeners.get(type).delete(fn);
  }

  function dispatch(type, event) {
    for (const key of [type, "*"]) {
      for (const fn of listeners.get(key) || []) {
        try {
          fn(event);
        } catch (error) {
          console.error(`hyperhive.on(${JSON.stringify(key)}) listener failed`, error);
        }
      }
    }
  }

  function setLink(status) {
    const el = document.getElementById("link");
    if (!el) return;
    const labels = {
      live: ["● L1V3", "live updates connected"],
      connecting: ["◌ C0NN3CT1NG", "connecting to live updates"],
      reconnecting: ["◌ R3C0NN3CT1NG", "live updates lost; reconnecting"],
      closed: ["✕ 0FFL1N3", "live updates stopped; reload the page or log in again"],
    };
    el.className = `link ${status}`;
    el.textContent = labels[status][0];
    el.setAttribute("aria-label", labels[status][1]);
  }

  function connect(url) {
    setLink(lastId === null ? "connecting" : "reconnecting");
    source = new EventSource(url);
    source.onmessage = (message) => {
      if (message.lastEventId) lastId = message.lastEventId;
      const event = JSON.parse(message.data);
      event.replay = !live;
      dispatch(event.type, event);
    };
    source.addEventListener("live", () => {
      live = true;
      setLink("live");
      dispatch("live", { type: "live" });
    });
    source.onerror = () => {
      live = false;
      if (source.readyState !== EventSource.CLOSED) {
        setLink("reconnecting"); // the browser retries by itself, with Last-Event-ID
        return;
      }
      // Refused (logged out?) or the daemon restarted: retry by hand, resuming after lastId.
      setLink("closed");
      setTimeout(() => {
        const base = body.dataset.stream.split("?")[0];
        connect(lastId === null ? body.dataset.stream : `${base}?after=${lastId}`);
      }, 3000);
    };
  }

  // -- talking to the daemon ----------------------------------------------------------------

  async function api(path, { method = "GET", body: payload, headers = {} } = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin" };
    if (!["GET", "HEAD"].includes(method)) init.headers["X-CSRF-Token"] = csrf;
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Error(`the dashboard did not answer (${error.message}); is the hive running?`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  // A message to an agent goes with an idempotency key, kept until the daemon answers: a
  // send retried after a lost connection (or a second click on "send") is stored once.
  const unsent = new Map(); // "to\nbody" -> key

  function newKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function send(to, text) {
    const pending = `${to}\n${text}`;
    if (!unsent.has(pending)) unsent.set(pending, newKey());
    const init = { method: "POST", body: { body: text }, headers: { "Idempotency-Key": unsent.get(pending) } };
    for (let attempt = 0; ; attempt += 1) {
      try {
        const result = await api(`/api/agents/${to}/messages`, init);
        unsent.delete(pending);
        return result;
      } catch (error) {
        if (error.status !== undefined) unsent.delete(pending); // the daemon answered: nothing to repeat
        if (error.status !== undefined || attempt >= 4) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
      }
    }
  }

  // -- feedback: toasts, spinners, second clicks ----------------------------------------

  function toast(text, { kind = "ok" } = {}) {
    const box = document.getElementById("toasts");
    const el = document.createElement("div");
    el.className = `toast ${kind}`;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    el.textContent = text;
    box.append(el);
    setTimeout(() => el.classList.add("leaving"), kind === "error" ? 7000 : 3500);
    setTimeout(() => el.remove(), kind === "error" ? 7600 : 4100);
    return el;
  }

  const ARM_MS = 4000;

  function disarm(button) {
    if (button.dataset.armed !== "1") return;
    button.dataset.armed = "";
    button.classList.remove("armed");
    button.innerHTML = button.dataset.label;
    clearTimeout(Number(button.dataset.armTimer));
  }

  /** Run action() behind button: a second click first if confirm, a spinner meanwhile, a toast after. */
  async function run(button, action, { confirm, done } = {}) {
    if (button.classList.contains("busy")) return undefined;
    if (confirm && button.dataset.armed !== "1") {
      button.dataset.label = button.innerHTML;
      button.dataset.armed = "1";
      button.classList.add("armed");
      button.textContent = confirm;
      button.dataset.armTimer = String(setTimeout(() => disarm(button), ARM_MS));
      return undefined;
    }
    disarm(button);
    button.classList.add("busy");
    button.setAttribute("aria-busy", "true");
    button.disabled = true;
    try {
      const result = await action();
      if (done) toast(typeof done === "function" ? done(result) : done);
      return result;
    } catch (error) {
      toast(error.message, { kind: "error" });
      return undefined;
    } finally {
      button.classList.remove("busy");
      button.removeAttribute("aria-busy");
      button.disabled = false;
    }
  }

  // -- plugin panels ---------------------------------------------------------------------

  async function refreshPanel(key) {
    const path = agent ? `/-/web/agents/${agent}/panels/${key}` : `/-/web/panels/${key}`;
    const data = await api(path);
    const existing = document.getElementById(`panel-${key}`);
    if (!data.html) {
      if (existing) existing.remove();
      return null;
    }
    const template = document.createElement("template");
    template.innerHTML = data.html.trim();
    const section = template.content.firstElementChild;
    if (existing) {
      existing.replaceWith(section);
    } else {
      const box = document.querySelector(`.panels[data-placement="${data.placement}"]`);
      const after = [...box.children].find((el) => Number(el.dataset.order) > data.order);
      box.insertBefore(section, after || null);
    }
    return section;
  }

  // -- declarative helpers: data-api buttons and forms ------------------------------------

  function formJson(form) {
    const data = form.dataset.body ? JSON.parse(form.dataset.body) : {};
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      if (el.type === "checkbox") data[el.name] = el.checked;
      else if (el.type === "radio") {
        if (el.checked) data[el.name] = el.value;
      } else if (el.type === "number") data[el.name] = el.value === "" ? null : Number(el.value);
      else if (el.multiple) data[el.name] = [...el.selectedOptions].map((o) => o.value);
      else data[el.name] = el.value;
    }
    return data;
  }

  function afterDeclared(el) {
    if (el.dataset.refresh) refreshPanel(el.dataset.refresh).catch((e) => toast(e.message, { kind: "error" }));
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-api]");
    if (!button || button.form?.dataset.api) return;
    e.preventDefault();
    const payload = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
    const method = button.dataset.method || "POST";
    run(button, () => api(button.dataset.api, { method, body: payload }), {
      confirm: button.dataset.confirm,
      done: button.dataset.done,
    }).then((result) => result !== undefined && afterDeclared(button));
  });

  document.addEventListener("submit", (e) => {
    const form = e.target.closest("form[data-api]");
    if (!form) return;
    e.preventDefault();
    const button = e.submitter || form.querySelector('[type="submit"]');
    const payload = formJson(form);
    if (e.submitter?.name) payload[e.submitter.name] = e.submitter.value;
    run(button, () => api(form.dataset.api, { method: form.dataset.method || "POST", body: payload }), {
      confirm: button.dataset.confirm,
      done: form.dataset.done,
    }).then((result) => {
      if (result === undefined) return;
      if (form.dataset.reset !== undefined) form.reset();
      afterDeclared(form);
    });
  });

  // -- clocks: countdowns and "3m ago", ticking once a second --------------------------------

  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll("[data-countdown]")) {
      const left = (Date.parse(el.dataset.countdown) - now) / 1000;
      el.textContent = clock(left);
      el.classList.toggle("expired", left <= 0);
    }
    for (const el of document.querySelectorAll("[data-ago]")) {
      el.textContent = ago(Number(el.dataset.ago), now / 1000);
    }
  }

  // -- rendering shared by the pages -------------------------------------------------------

  /** An agent's state badge, from the daemon's authoritative state (never derived here). */
  function badge(status) {
    const state = status.state;
    const detail = escape(status.detail || "");
    let html;
    if (state === "napping") {
      const wake = Date.parse(status.detail) ? `<time data-countdown="${detail}">${clock((Date.parse(status.detail) - Date.now()) / 1000)}</time>` : detail;
      html = `<span class="badge napping" title="napping until ${detail}">napping 😴 · ${wake}</span>`;
    } else if (state === "compacting") {
      html = `<span class="badge compacting" title="${detail}">compacting 📦</span>`;
    } else if (state === "thinking") {
      html = `<span class="badge thinking" title="${detail}"><i class="pulse" aria-hidden="true"></i>thinking</span>`;
    } else if (state === "asleep") {
      html = `<span class="badge asleep" title="its Claude Code process and container are stopped; the next message resumes its session">asleep</span>`;
    } else {
      html = `<span class="badge ${escape(state)}" title="${detail}">${escape(state)}</span>`;
    }
    if (status.failed) html += ` <span class="flag failed" title="the turn loop crashed too often; rebuild or resume">failed</span>`;
    if (status.paused) html += ` <span class="flag paused" title="${escape(status.pause_reason || "")}">paused</span>`;
    if (status.stopped) html += ` <span class="flag stopped">stopped</span>`;
    return html;
  }

  /** What the state does now, in words ("waiting on model API · 45s"), or "" when the badge says it all. */
  function stateDetail(status) {
    return status.state === "napping" ? "" : status.detail || "";
  }

  const SHORT_TOOL = /^mcp__hyperhive__/;

  window.hyperhive = {
    agent,
    csrf,
    on,
    api,
    send,
    toast,
    run,
    refreshPanel,
    formatDuration,
    clock,
    ago,
    escape,
    render: { badge, detail: stateDetail, toolName: (name) => String(name).replace(SHORT_TOOL, "") },
    get live() {
      return live;
    },
  };

  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", () => {
    tick();
    connect(body.dataset.stream);
  });
})();
