// An agent's page: the state row, the live tail, the inbox and the input line.
"use strict";

(() => {
  const hh = window.hyperhive;
  const { escape, formatDuration, ago } = hh;
  const name = hh.agent;
  const initial = JSON.parse(document.getElementById("initial").textContent);
  let agent = initial.agent;
  let inbox = initial.inbox;
  const commands = initial.commands;
  const models = initial.models;
  const $ = (id) => document.getElementById(id);
  const MAX_TAIL = 2000;

  // -- the state row ---------------------------------------------------------------------------

  function renderState() {
    $("badge").innerHTML = hh.render.badge(agent);
    const detail = $("state-detail");
    // In a hive across hosts, which host runs it (and, while that host is down, why it shows down).
    detail.textContent = [agent.host ? `on host ${agent.host}` : "", hh.render.detail(agent)].filter(Boolean).join(" · ");
    detail.hidden = !detail.textContent;
    const chip = $("last-turn");
    // Hidden until a turn has completed; the daemon sets last_turn_ms as the state leaves thinking.
    chip.hidden = agent.last_turn_ms == null;
    chip.querySelector(".v").textContent = formatDuration(agent.last_turn_ms);
    chip.title = agent.last_turn_at ? `ended ${ago(agent.last_turn_at)}` : "";
    const queued = agent.queued_model ? ` <span class="queued">→ ${escape(agent.queued_model)} queued</span>` : "";
    const switched = agent.model_switched_at
      ? ` <span class="k">· switched <span data-ago="${agent.model_switched_at}">${ago(agent.model_switched_at)}</span></span>`
      : "";
    $("model").innerHTML = `<span class="k">model</span> <span class="v">${escape(agent.model)}</span>${queued}${switched}`;
    renderModelChoice();
    renderLimits(agent.limits);
    renderEgress(agent.egress_denied || []);
    $("cancel").hidden = !["thinking", "napping", "compacting"].includes(agent.state);
    const pause = $("pause");
    const paused = agent.paused || agent.failed;
    pause.textContent = paused ? "R3SUM3" : "P4US3";
    pause.className = paused ? "go" : "quiet";
    pause.setAttribute("aria-label", paused ? `resume ${name}` : `pause ${name} after its turn`);
  }

  // Caps against current usage: "mem 159/2048 MiB · pids 13/512 · cpu 100", or why there are none.
  function renderLimits(limits) {
    const chip = $("limits");
    if (!limits || !limits.enforced) {
      chip.className = "chip limits none";
      chip.innerHTML = `<span class="v">no limits</span>`;
      chip.title = limits ? limits.why : "";
      return;
    }
    const usage = limits.usage || {};
    const cap = (value) => (value ? value : "∞");
    const used = (value) => (value == null ? "" : `${value}/`);
    const parts = [
      `<span class="k">mem</span> <span class="v">${used(usage.memory_mb == null ? null : Math.round(usage.memory_mb))}${cap(limits.memory_max_mb)} MiB</span>`,
      `<span class="k">pids</span> <span class="v">${used(usage.pids)}${cap(limits.pids_max)}</span>`,
      `<span class="k">cpu</span> <span class="v">${escape(String(limits.cpu_weight))}</span>`,
    ];
    if (usage.oom_kills) parts.push(`<span class="oom">${usage.oom_kills} OOM kill${usage.oom_kills === 1 ? "" : "s"}</span>`);
    chip.className = "chip limits";
    chip.innerHTML = parts.join(" · ");
    const soft = limits.memory_high_mb ? `, soft memory cap ${limits.memory_high_mb} MiB` : "";
    chip.title = `enforced with ${limits.via}${soft}`;
  }

  // Connections the egress list refused lately: "egress 5 denied", the targets in the title.
  function renderEgress(denied) {
    const chip = $("egress");
    chip.hidden = !denied.length;
    const total = denied.reduce((sum, d) => sum + d.count, 0);
    chip.innerHTML = `<span class="k">egress</span> <span class="v">${total} denied</span>`;
    const allowed = (agent.config && agent.config.egress) || [];
    chip.title = [
      ...denied.map((d) => `${d.target}: ${d.count} refused, last ${ago(d.last_at)}`),
      `allowed: ${allowed.length ? allowed.join(", ") : "nothing but the model API"}`,
    ].join("\n");
  }

  let lastStateAt = 0;
  const refreshState = debounced(() =>
    hh.api(`/api/agents/${name}/state`).then((a) => {
      // An event newer than this answer already moved the badge: keep it.
      if (a.since + 0.001 < lastStateAt) Object.assign(a, pick(agent, ["state", "detail", "paused", "failed", "stopped", "since"]));
      agent = a;
      renderState();
    }, (e) => hh.toast(`could not refresh ${name}: ${e.message}`, { kind: "error" })));

  function pick(object, keys) {
    return Object.fromEntries(keys.map((k) => [k, object[k]]));
  }

  function debounced(fn, ms = 120) {
    let timer;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // -- the live tail ------------------------------------------------------------------------------

  const tail = $("tail");
  const seen = new Set();
  let pinned = true;

  const clockOf = (at) => new Date(at * 1000).toLocaleTimeString([], { hour12: false });
  const clip = (text, n) => (text.length > n ? `${text.slice(0, n)}…` : text);

  function folded(text, limit = 600) {
    if (text.length <= limit) return escape(text);
    return `<details><summary>${escape(text.slice(0, limit))}<span class="more"> … ${text.length - limit} more characters</span></summary>${escape(text.slice(limit))}</details>`;
  }

  function line(ev) {
    const d = ev.data || {};
    switch (ev.type) {
      case "turn_start": {
        const ids = d.message_ids || [];
        const known = ids.map((id) => inbox.find((m) => m.id === id)).filter(Boolean);
        const what = known.map((m) => `<span class="from">${escape(m.from)}</span>: ${escape(clip(m.body, 160))}`);
        return ["▶", `turn · ${ids.length} message${ids.length === 1 ? "" : "s"}${what.length ? ` · ${what.join(" · ")}` : ""}`];
      }
      case "turn_end": {
        const cost = d.cost_usd ? ` · $${Number(d.cost_usd).toFixed(4)}` : "";
        const calls = d.tool_calls ? ` · ${d.tool_calls} tool call${d.tool_calls === 1 ? "" : "s"}` : "";
        return ["■", `${escape(d.exit || "done")} · ${formatDuration(d.duration_ms)}${calls}${cost}`, d.exit && !["ok", "compact-retry"].includes(d.exit) ? "failed" : ""];
      }
      case "assistant_text":
        return ["◆", folded(d.text || "", 4000)];
      case "tool_use": {
        const args = JSON.stringify(d.input ?? {});
        return ["⚙", `<span class="tool">${escape(hh.render.toolName(d.name))}</span> <span class="args">${folded(args, 300)}</span>`];
      }
      case "tool_result": {
        const content = typeof d.content === "string" ? d.content : JSON.stringify(d.content);
        return ["↳", folded(content || "", 400), d.is_error ? "is-error" : ""];
      }
      case "egress_denied":
        return ["⛔", `egress to ${escape(d.target)} denied (${escape(d.count)} so far): not on its egress list`, "failed"];
      case "permission_denied":
        return ["⛔", `denied ${escape(hh.render.toolName(d.tool || d.tool_name || ""))}${d.reason ? `: ${escape(d.reason)}` : ""} ${escape(clip(JSON.stringify(d.input ?? d), 300))}`];
      case "note":
        return ["·", escape(d.text || JSON.stringify(d))];
      case "error": {
        const log = d.log && d.log.length ? `\n${d.log.join("\n")}` : "";
        return ["✕", folded(`${d.text || d.error || JSON.stringify(d)}${log}`)];
      }
      case "message_sent":
        return ["→", `${escape(d.to)}${d.kind === "event" ? " (event)" : ""}: ${folded(d.preview || "", 280)}`];
      case "state_change":
        return ["◇", `${escape(d.state)}${d.detail ? ` · ${escape(d.detail)}` : ""}${d.paused ? " · paused" : ""}${d.failed ? " · failed" : ""}`];
      case "message_dead":
        return ["✕", `message #${escape(d.id)} from ${escape(d.sender)} is dead after ${escape(d.attempts)} attempt${d.attempts === 1 ? "" : "s"}: ${escape(d.last_error || "")} · <a href="/#dead-${escape(d.id)}">D34D L3TT3RS</a>`, "failed"];
      case "message_requeued":
      case "message_dropped":
        return ["·", `dead letter ${(d.ids || []).map((id) => `#${escape(id)}`).join(", ")} ${ev.type === "message_requeued" ? "requeued" : "dropped"} by the operator`];
      case "approval_requested":
      case "approval_resolved":
        return ["◆", `approval #${escape(d.id)} ${escape(d.kind || "")} ${escape(d.status || "requested")}${d.note ? `: ${escape(d.note)}` : ""}`];
      default: {
        // A plugin's event with text and a link to a dashboard page (docs/plugins.md): the text, then the link.
        // No whitespace or control character anywhere: a browser drops tabs and newlines, and "/\t/x" is "//x".
        const href = d.link && typeof d.link.href === "string" && /^\/(?![/\\])[^\s\x00-\x1f\x7f]*$/.test(d.link.href) ? d.link.href : null;
        if (href && typeof d.text === "string") return ["↗", `${escape(d.text)} · <a href="${escape(href)}">${escape(d.link.label || "open")}</a>`];
        return ["·", `<span class="more">${escape(ev.type)}</span> ${escape(clip(JSON.stringify(d), 400))}`];
      }
    }
  }

  let shownState = "";
  const unnamed = new Map();

  function nameTurns() {
    for (const [el, ev] of unnamed) {
      if (!el.isConnected) unnamed.delete(el);
      else if ((ev.data.message_ids || []).every((id) => inbox.some((m) => m.id === id))) {
        el.querySelector(".text").innerHTML = line(ev)[1];
        unnamed.delete(el);
      }
    }
  }

  // What the tail will show, until the first event or note takes its place.
  function dropExplanation() {
    $("tail-empty")?.remove();
  }

  function append(ev) {
    if (seen.has(ev.id)) return; // never twice, whatever the stream replays
    seen.add(ev.id);
    dropExplanation();
    let repeat = false;
    if (ev.type === "state_change") {
      // A status republished unchanged (a model queued, say) is no news: kept, but not shown.
      const key = JSON.stringify(pick(ev.data, ["state", "detail", "paused", "failed", "stopped"]));
      repeat = key === shownState;
      shownState = key;
    }
    const [glyph, html, extra] = line(ev);
    const el = document.createElement("div");
    el.className = `ev ${ev.type}${extra ? ` ${extra}` : ""}${ev.replay ? "" : " fresh"}`;
    el.dataset.id = ev.id;
    el.hidden = repeat;
    el.innerHTML = `<time datetime="${new Date(ev.at * 1000).toISOString()}">${clockOf(ev.at)}</time><span class="glyph" aria-hidden="true">${glyph}</span><span class="text">${html}</span>`;
    if (ev.type === "turn_start") unnamed.set(el, ev); // named once the inbox has its messages
    tail.append(el);
    while (tail.childElementCount > MAX_TAIL) tail.firstElementChild.remove();
    if (pinned) tail.scrollTop = tail.scrollHeight;
    else $("jump").hidden = false;
  }

  tail.addEventListener("scroll", () => {
    pinned = tail.scrollHeight - tail.scrollTop - tail.clientHeight < 40;
    if (pinned) $("jump").hidden = true;
  });
  $("jump").addEventListener("click", () => {
    tail.scrollTop = tail.scrollHeight;
    pinned = true;
    $("jump").hidden = true;
  });

  function note(text) {
    dropExplanation();
    const el = document.createElement("div");
    el.className = "ev note local";
    el.innerHTML = `<time>${clockOf(Date.now() / 1000)}</time><span class="glyph" aria-hidden="true">?</span><span class="text">${escape(text)}</span>`;
    tail.append(el);
    tail.scrollTop = tail.scrollHeight;
  }

  // -- the inbox -------------------------------------------------------------------------------------

  function renderInbox() {
    const list = $("inbox-list");
    if (!inbox.length) {
      list.innerHTML = `<li class="empty">no messages to ${escape(name)} yet.</li>`;
      return;
    }
    const known = new Set([...list.children].map((li) => li.dataset.id));
    list.innerHTML = inbox
      .map((m) => `<li class="${escape(m.kind)}" data-id="${m.id}"><div class="head"><span class="from">${escape(m.from)}</span>${m.kind === "event" ? '<span class="kind">hive event</span>' : ""}<span class="at" data-ago="${m.at}">${ago(m.at)}</span></div><div class="body">${escape(m.body)}</div></li>`)
      .join("");
    for (const li of list.children) if (known.has(li.dataset.id) || !known.size) li.style.animation = "none";
  }

  const refreshInbox = debounced(() =>
    hh.api(`/api/agents/${name}/inbox`).then((m) => {
      inbox = m;
      renderInbox();
      nameTurns();
    }, (e) => hh.toast(`could not refresh the inbox: ${e.message}`, { kind: "error" })));

  // -- live events -------------------------------------------------------------------------------------

  hh.on("*", (ev) => {
    if (ev.type === "live") return;
    if (ev.agent !== name) {
      if (ev.type === "message_sent" && ev.data.to === name) refreshInbox(); // a message for this agent
      return;
    }
    append(ev);
    if (ev.type === "state_change") {
      Object.assign(agent, pick(ev.data, ["state", "detail", "paused", "failed", "stopped"]));
      lastStateAt = ev.at;
      renderState();
      if (!ev.replay) refreshState(); // last turn and the model status are not in the event
    } else if (!ev.replay && (ev.type === "turn_end" || ev.type === "egress_denied" || (ev.type === "note" && /^model switched/.test(ev.data.text || "")))) {
      refreshState();
    }
    if (ev.type === "message_sent" && ev.data.to === name) refreshInbox();
  });

  hh.on("live", () => {
    refreshState();
    refreshInbox();
  });

  // -- the input line: messages and slash commands -----------------------------------------------------------

  const history = [];
  let back = 0;
  const input = $("line");

  function help() {
    note(`commands: ${commands.map((c) => `/${c.name}${c.help ? ` (${c.help.replace(/^\/\S+\s*[^:]*:\s*/, "")})` : ""}`).join(" · ")}`);
  }

  $("say").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    history.push(text);
    back = 0;
    if (text === "/help" || text === "/") {
      input.value = "";
      help();
      return;
    }
    const button = $("say").querySelector("button");
    const call = text.startsWith("/")
      ? () => hh.api(`/-/web/agents/${name}/slash`, { method: "POST", body: { line: text } })
      : () => hh.send(name, text);
    hh.run(button, call, { done: (r) => (r.text !== undefined ? r.text : `sent #${r.id} to ${name}`) }).then((r) => {
      if (r === undefined) return;
      input.value = "";
      if (r.command) refreshState();
    });
  });

  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowUp" && history.length) {
      back = Math.min(back + 1, history.length);
      input.value = history[history.length - back];
      e.preventDefault();
    } else if (e.key === "ArrowDown" && back) {
      back -= 1;
      input.value = back ? history[history.length - back] : "";
      e.preventDefault();
    }
  });

  // -- the model picker: the known models, or another name; it switches through /model -----------------

  const OTHER = "";
  const choice = $("model-choice");
  const custom = $("model-custom");
  const modelError = $("model-error");

  // The running model selected (listed even when it is a full id no list holds), then "other…".
  // Rebuilt only when the running model changes: an open list stays open through state changes.
  function renderModelChoice() {
    if (choice.dataset.running === agent.model) return;
    choice.dataset.running = agent.model;
    const names = models.includes(agent.model) ? models : [agent.model, ...models];
    const picked = choice.value;
    choice.innerHTML = [...names.map((m) => `<option value="${escape(m)}">${escape(m)}${m === agent.model ? " (running)" : ""}</option>`), `<option value="${OTHER}">other…</option>`].join("");
    // Keep what the operator is choosing; the running model is where the picker starts.
    choice.value = choice.dataset.touched && [...choice.options].some((o) => o.value === picked) ? picked : agent.model;
    custom.hidden = choice.value !== OTHER;
  }

  function showModelError(text) {
    modelError.textContent = text;
    modelError.hidden = !text;
  }

  choice.addEventListener("change", () => {
    choice.dataset.touched = "1";
    custom.hidden = choice.value !== OTHER;
    showModelError("");
    if (!custom.hidden) custom.focus();
  });
  custom.addEventListener("input", () => showModelError(""));

  $("model-picker").addEventListener("submit", (e) => {
    e.preventDefault();
    const model = choice.value === OTHER ? custom.value.trim() : choice.value;
    if (!model) {
      showModelError("type the name of the model to switch to, or choose one from the list");
      custom.focus();
      return;
    }
    // A refusal (the rule a name breaks, or the known names) shows under the field, not as a
    // toast that would lie over the form on a phone.
    const line = `/model ${model}`;
    const call = () =>
      hh.api(`/-/web/agents/${name}/slash`, { method: "POST", body: { line } }).catch((error) => ({ error: error.message }));
    hh.run($("model-switch"), call).then((r) => {
      if (r === undefined) return;
      if (r.error) {
        showModelError(r.error);
        (custom.hidden ? choice : custom).focus();
        return;
      }
      hh.toast(r.text);
      showModelError("");
      custom.value = "";
      delete choice.dataset.touched;
      choice.dataset.running = ""; // back to the running model, whether the switch is made or queued
      refreshState();
    });
  });

  // -- buttons ---------------------------------------------------------------------------------------------------

  $("rebuild").addEventListener("click", (e) =>
    hh.run(e.currentTarget, () => hh.api(`/api/agents/${name}/rebuild`, { method: "POST" }), { done: `rebuilt ${name}` }));
  $("cancel").addEventListener("click", (e) =>
    hh.run(e.currentTarget, () => hh.api(`/-/web/agents/${name}/slash`, { method: "POST", body: { line: "/cancel" } }), { done: (r) => r.text }));
  $("pause").addEventListener("click", (e) => {
    const verb = agent.paused || agent.failed ? "resume" : "pause";
    hh.run(e.currentTarget, () => hh.api(`/-/web/agents/${name}/${verb}`, { method: "POST" }), { done: `${verb}d ${name}` }).then((a) => {
      if (a) {
        agent = { ...agent, ...a };
        renderState();
      }
    });
  });

  // ↑ DASHB04RD: the host dashboard, in a new tab, on the port the daemon reports.
  hh.api("/api/state").then((s) => {
    $("dashboard-link").href = `${location.protocol}//${location.hostname}:${s.dashboard_port}/`;
  });

  // -- tabs ---------------------------------------------------------------------------------------------------------

  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll('[role="tab"]')) {
        const selected = other === tab;
        other.setAttribute("aria-selected", String(selected));
        $(other.getAttribute("aria-controls")).hidden = !selected;
      }
      document.dispatchEvent(new CustomEvent("hyperhive:tab", { detail: tab.id }));
      if (tab.id === "tab-tail") input.focus();
    });
  }

  renderState();
  renderInbox();
  input.focus({ preventScroll: true }); // a phone opens the page at its top, not scrolled to the input
})();
