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

  // -- re-rendering in place --------------------------------------------------------------
  // A live update patches the nodes already on the page rather than replacing them: a
  // button waiting for its second click stays armed, an open <details> stays open, and a
  // half-typed answer keeps its text, its caret and the focus.

  /** An element's identity across renders: its id, or its data-key. */
  const keyOf = (node) => (node.nodeType === Node.ELEMENT_NODE ? node.id || node.dataset.key || null : null);
  const sameKind = (a, b) => a.nodeType === b.nodeType && a.nodeName === b.nodeName;
  // An armed or running button is the operator's until it is done: left exactly as it is.
  const held = (el) => el.dataset.armed === "1" || el.getAttribute("aria-busy") === "true";

  /** What data-keep names stays as the page has it: attributes, or "children" (a script fills them). */
  function kept(el) {
    const keep = new Set((el.dataset.keep || "").split(/\s+/).filter(Boolean));
    if (el.localName === "details") keep.add("open"); // the operator opens and closes it
    return keep;
  }

  function morphAttributes(from, to, keep) {
    for (const { name } of [...from.attributes]) {
      if (!keep.has(name) && !to.hasAttribute(name)) from.removeAttribute(name);
    }
    for (const { name, value } of [...to.attributes]) {
      if (!keep.has(name) && from.getAttribute(name) !== value) from.setAttribute(name, value);
    }
  }

  function morphNode(from, to) {
    if (from.nodeType !== Node.ELEMENT_NODE) {
      if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
      return;
    }
    if (held(from)) return;
    const keep = kept(from);
    morphAttributes(from, to, keep);
    if (!keep.has("children")) morphChildren(from, to);
  }

  function morphChildren(from, to) {
    const keyed = new Map();
    for (const child of from.childNodes) if (keyOf(child)) keyed.set(keyOf(child), child);
    let cursor = from.firstChild;
    for (const want of [...to.childNodes]) {
      const key = keyOf(want);
      let match = null;
      if (key) {
        match = keyed.get(key);
        keyed.delete(key);
        if (match && !sameKind(match, want)) match = null;
      } else {
        for (let node = cursor; node && !match; node = node.nextSibling) {
          if (!keyOf(node) && sameKind(node, want)) match = node;
        }
      }
      if (match) morphNode(match, want);
      else match = want;
      if (match === cursor) cursor = cursor.nextSibling;
      else from.insertBefore(match, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }

  /** Run change(), then give the focus (and the caret) back to the field that had it, if it is still there. */
  function keepingFocus(root, change) {
    const focused = root.contains(document.activeElement) ? document.activeElement : null;
    let caret = null;
    try {
      if (focused && typeof focused.selectionStart === "number") {
        caret = [focused.selectionStart, focused.selectionEnd, focused.selectionDirection];
      }
    } catch {
      // a field without a caret (a number input)
    }
    change();
    if (focused && focused.isConnected && document.activeElement !== focused) {
      focused.focus({ preventScroll: true });
      if (caret) focused.setSelectionRange(...caret);
    }
    tick();
  }

  /** Make el's children what html describes, reusing the nodes already there (matched by id or data-key). */
  function morph(el, html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    keepingFocus(el, () => morphChildren(el, template.content));
  }

  // -- what waits for the operator: the tab's title and icon, and notifications ---------------

  const baseTitle = document.title;
  const favicon = document.querySelector('link[rel="icon"]');
  const baseIcon = favicon?.getAttribute("href");
  const waitingBy = new Map();

  function badgeIcon(count) {
    const text = count > 99 ? "99+" : String(count);
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><path d="M32 3 57 17.5v29L32 61 7 46.5v-29z" fill="#07080a" stroke="#ffb000" stroke-width="4"/><circle cx="42" cy="22" r="20" fill="#ff5468"/><text x="42" y="30" font-family="monospace" font-weight="700" font-size="${text.length > 2 ? 16 : 22}" text-anchor="middle" fill="#0b0b0b">${text}</text></svg>`;
    return `data:image/svg+xml,${encodeURIComponent(svg)}`;
  }

  /** How many things of source wait for the operator; the title and the favicon show the sum. */
  function waiting(source, count) {
    waitingBy.set(source, count);
    const total = [...waitingBy.values()].reduce((a, b) => a + b, 0);
    document.title = total ? `(${total}) ${baseTitle}` : baseTitle;
    if (favicon) favicon.setAttribute("href", total ? badgeIcon(total) : baseIcon);
    askForNotificationsOnFirstClick();
    return total;
  }

  // Browsers ignore (or hold against the page) a permission prompt nobody asked for:
  // the operator's first click anywhere asks, never the page load.
  let askArmed = false;
  function askForNotificationsOnFirstClick() {
    if (askArmed || !("Notification" in window)) return;
    askArmed = true;
    document.addEventListener("click", () => {
      if (Notification.permission === "default") Notification.requestPermission().catch(() => {});
    }, { once: true, capture: true });
  }

  /** A browser notification, only while the tab is hidden (and notifications are allowed). */
  function notify(title, { body = "", tag, href } = {}) {
    if (document.visibilityState !== "hidden" || !("Notification" in window) || Notification.permission !== "granted") {
      return null;
    }
    const note = new Notification(title, { body, tag, icon: "/static/icon-192.png" });
    note.onclick = () => {
      window.focus();
      if (href) location.hash = href;
      note.close();
    };
    return note;
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
      keepingFocus(existing, () => morphNode(existing, section));
      return existing;
    }
    const box = document.querySelector(`.panels[data-placement="${data.placement}"]`);
    const after = [...box.children].find((el) => Number(el.dataset.order) > data.order);
    box.insertBefore(section, after || null);
    tick();
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
    morph,
    waiting,
    notify,
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
