// The host dashboard: SW4RM, approvals, drafts, kept state, the operator inbox.
// Rendered from the page's initial JSON, then kept current by live events: no reloads.
"use strict";

(() => {
  const hh = window.hyperhive;
  const { escape, formatDuration, ago } = hh;
  const initial = JSON.parse(document.getElementById("initial").textContent);
  let hiveState = initial.state;
  let kept = initial.kept;
  let inbox = initial.inbox;
  let approvals = initial.approvals;
  let drafts = initial.drafts;

  const $ = (id) => document.getElementById(id);
  const agentNames = () => new Set(hiveState.agents.map((a) => a.name));

  // -- SW4RM ---------------------------------------------------------------------------------

  function modelCell(a) {
    const queued = a.queued_model ? ` <span class="queued" title="switches when the turn ends">→ ${escape(a.queued_model)}</span>` : "";
    return `${escape(a.model)}${queued}`;
  }

  function actionsCell(a) {
    const name = escape(a.name);
    const resume = a.paused || a.failed
      ? `<button class="go" data-act="resume" data-key="resume" data-agent="${name}" aria-label="resume ${name}">R3SUM3</button>`
      : "";
    const destroy = a.role === "manager"
      ? ""
      : `<button class="danger" data-act="destroy" data-key="destroy" data-agent="${name}" aria-label="destroy ${name}, keeping its state">D3STR0Y</button>`;
    return `${resume}<button class="quiet" data-act="rebuild" data-key="rebuild" data-agent="${name}" aria-label="rebuild ${name}">REBU1LD</button>${destroy}`;
  }

  function cells(a) {
    const name = escape(a.name);
    const detail = hh.render.detail(a);
    return {
      // Every host's dashboard has a page for every host's agent.
      name: `<a href="/agent/${name}/">${name}</a>${a.role === "manager" ? '<span class="role">manager</span>' : ""}`,
      host: escape(a.host || ""),
      state: hh.render.badge(a) + (detail ? ` <span class="state-detail">${escape(detail)}</span>` : ""),
      turn: a.last_turn_ms == null ? '<span class="muted">—</span>' : `<span title="${a.last_turn_at ? `ended ${ago(a.last_turn_at)}` : ""}">${formatDuration(a.last_turn_ms)}</span>`,
      model: modelCell(a),
      inbox: `${a.inbox_depth}`,
      actions: actionsCell(a),
    };
  }

  function renderRow(a) {
    let row = $(`agent-${a.name}`);
    if (!row) {
      row = document.createElement("tr");
      row.id = `agent-${a.name}`;
      row.dataset.agent = a.name;
      row.innerHTML = '<td class="name"></td><td class="host" data-label="host"></td><td class="state"></td><td class="turn num" data-label="last turn"></td>'
        + '<td class="model" data-label="model"></td><td class="inbox num" data-label="inbox"></td><td class="actions"></td>';
    }
    const html = cells(a);
    for (const [key, value] of Object.entries(html)) {
      const cell = row.querySelector(`.${key}`);
      if (cell.dataset.html !== value) {
        hh.morph(cell, value); // an armed D3STR0Y stays armed
        cell.dataset.html = value;
      }
    }
    row.querySelector(".inbox").classList.toggle("busy", a.inbox_depth > 0);
    return row;
  }

  // A hive across hosts: which hosts are up, and the agents of one host only if the operator picks it.
  function renderHosts() {
    const cluster = hiveState.cluster || { host: null, hosts: [] };
    $("hosts").hidden = !cluster.host;
    document.querySelector("table.agents").classList.toggle("one-host", !cluster.host);
    const filter = $("host-filter");
    const names = cluster.hosts.map((h) => h.name);
    if ([...filter.options].slice(1).map((o) => o.value).join() !== names.join()) {
      const chosen = filter.value;
      filter.innerHTML = '<option value="">every host</option>' + names.map((n) => `<option value="${escape(n)}">${escape(n)}</option>`).join("");
      filter.value = names.includes(chosen) ? chosen : "";
    }
    $("host-list").innerHTML = cluster.hosts.map((h) =>
      `<span class="badge ${h.up ? "idle" : "down"}" title="last seen ${ago(h.last_seen)}">${escape(h.name)} ${h.up ? "up" : "down"}</span>`).join(" ");
  }

  function renderAgents() {
    renderHosts();
    const body = $("agent-rows");
    const host = $("host-filter").value;
    const rows = hiveState.agents.filter((a) => !host || a.host === host).map(renderRow);
    const wanted = new Set(rows);
    for (const row of [...body.children]) if (!wanted.has(row)) row.remove();
    rows.forEach((row, i) => {
      if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
    });
    const count = hiveState.agents.length;
    $("agents-title").querySelector("span").innerHTML = `◆ SW4RM ◆<span class="count">${count}</span>`;
  }

  function flash(name) {
    const row = $(`agent-${name}`);
    if (!row) return;
    row.classList.add("flash");
    setTimeout(() => row.classList.remove("flash"), 400);
  }

  // -- approvals -------------------------------------------------------------------------------

  function diffHtml(diff) {
    if (!diff) return '<span class="ctx">(no changes)</span>';
    return diff
      .replace(/\n$/, "")
      .split("\n")
      .map((line) => {
        const kind = /^(\+\+\+|---|diff |index )/.test(line) ? "file"
          : line.startsWith("@@") ? "hunk"
          : line.startsWith("+") ? "add"
          : line.startsWith("-") ? "del"
          : "ctx";
        return `<span class="${kind}">${escape(line) || " "}</span>`;
      })
      .join("");
  }

  const KIND_WORDS = {
    spawn: "spawn a new agent",
    spawn_commit: "spawn from a drafted config",
    apply_commit: "apply a config change",
    destroy: "destroy an agent",
  };

  function pendingCard(p) {
    const invalid = p.problems && p.problems.length;
    const problems = invalid
      ? `<ul class="problems">${p.problems.map((x) => `<li>${escape(x)}</li>`).join("")}</ul><p class="hint">this config is invalid: it can only be denied.</p>`
      : "";
    const sha = p.fetched_sha ? `<span class="sha" title="what approving applies">${escape(p.commit_ref || "")} @ ${escape(p.fetched_sha.slice(0, 12))}</span>` : "";
    const purge = p.kind === "destroy" && p.purge ? ' <strong class="error">and purge its state</strong>' : "";
    const diff = p.kind === "destroy" ? "" : `<pre class="diff" aria-label="the change, as a diff">${diffHtml(p.diff)}</pre>`;
    return `<article class="approval${invalid ? " invalid" : ""}" id="approval-${p.id}" aria-label="approval ${p.id}: ${escape(KIND_WORDS[p.kind] || p.kind)} ${escape(p.agent)}">
      <header><span class="id">#${p.id}</span><span class="kind">${escape(p.kind)}</span><a href="/agent/${escape(p.agent)}/">${escape(p.agent)}</a>${purge}
        <span class="who">asked by ${escape(p.requested_by)} · <span data-ago="${p.requested_at}">${ago(p.requested_at)}</span></span>${sha}</header>
      ${p.description ? `<p class="description">${escape(p.description)}</p>` : ""}
      ${problems}${diff}
      <form class="decide" data-approval="${p.id}">
        <input name="note" placeholder="note for the manager (why)" aria-label="note for approval ${p.id}">
        <button type="submit" class="go" value="approve" ${invalid ? "disabled" : ""} aria-label="approve ${p.id}">✓ APPR0V3</button>
        <button type="submit" class="danger" value="deny" aria-label="deny ${p.id}">✗ D3NY</button>
      </form>
    </article>`;
  }

  function renderApprovals() {
    const pending = approvals.filter((p) => p.status === "pending");
    const done = approvals.filter((p) => p.status !== "pending");
    const history = done.length
      ? `<details class="history"><summary>recently resolved (${done.length})</summary><ul class="resolved">${done
          .map((p) => `<li><span>#${p.id}</span><span>${escape(p.kind)} ${escape(p.agent)}</span><span class="st-${escape(p.status)}">${escape(p.status)}</span><span>${escape(p.note || p.error || "")}</span></li>`)
          .join("")}</ul></details>`
      : "";
    // In place: an armed D3NY, a note being typed and the opened history all stay as they are.
    hh.morph($("approval-list"), (pending.length ? pending.map(pendingCard).join("") : '<p class="empty">nothing waits for you.</p>') + history);
    hh.waiting("approvals", pending.length);
    $("approvals-title").querySelector("span").innerHTML = `◆ 4PPR0V4LS ◆${pending.length ? `<span class="count">${pending.length} pending</span>` : ""}`;
    const chip = $("pending");
    chip.hidden = !pending.length;
    chip.textContent = `◆ ${pending.length} 4PPR0V4L${pending.length === 1 ? "" : "S"} W41T`;
    chip.setAttribute("aria-label", `${pending.length} approval${pending.length === 1 ? "" : "s"} waiting for you`);
  }

  $("approval-list").addEventListener("submit", (e) => {
    const form = e.target.closest("form.decide");
    if (!form) return;
    e.preventDefault();
    const button = e.submitter;
    const id = form.dataset.approval;
    const note = form.elements.note.value;
    const verb = button.value;
    hh.run(button, () => hh.api(`/api/approvals/${id}/${verb}`, { method: "POST", body: { note } }), {
      confirm: verb === "deny" ? "sure? D3NY" : undefined,
      done: (a) => `#${a.id} ${a.status}${a.error ? `: ${a.error}` : ""}`,
    }).then((result) => result && upsertApproval(result));
  });

  function upsertApproval(approval) {
    const i = approvals.findIndex((p) => p.id === approval.id);
    if (i >= 0) approvals[i] = approval;
    else approvals.unshift(approval);
    renderApprovals();
  }

  // -- drafts and kept state -------------------------------------------------------------------

  function renderDrafts() {
    hh.morph($("draft-list"), drafts.length
      ? `<ul class="rows">${drafts
          .map((d) => `<li data-key="draft-${escape(d.name)}"><span class="name">${escape(d.name)}</span><span class="meta">drafted by ${escape(d.created_by)} · <span data-ago="${d.created_at}">${ago(d.created_at)}</span></span><span class="grow"></span>${
            d.pending ? `<a href="#approval-${d.pending}">#${d.pending} waits for approval</a>` : '<span class="meta">being prepared by the manager</span>'}</li>`)
          .join("")}</ul>`
      : '<p class="empty">no drafts. the manager drafts an agent with request_spawn_draft.</p>');
  }

  function renderKept() {
    hh.morph($("kept-list"), kept.length
      ? `<ul class="rows">${kept
          .map((k) => `<li data-key="kept-${escape(k.name)}"><span class="name">${escape(k.name)}</span><span class="meta">destroyed <span data-ago="${k.destroyed_at}">${ago(k.destroyed_at)}</span></span><span class="grow"></span>
            <button class="go" data-act="restore" data-key="restore" data-agent="${escape(k.name)}" aria-label="restore ${escape(k.name)}">R3ST0R3</button>
            <button class="danger" data-act="purge" data-key="purge" data-agent="${escape(k.name)}" aria-label="purge the state of ${escape(k.name)}, for good">PURG3</button></li>`)
          .join("")}</ul>`
      : '<p class="empty">no kept state. destroyed agents leave theirs here, to restore or purge.</p>');
  }

  // -- the operator inbox -------------------------------------------------------------------------

  function messageItem(m) {
    const from = agentNames().has(m.from) ? `<a href="/agent/${escape(m.from)}/">${escape(m.from)}</a>` : escape(m.from);
    const reply = agentNames().has(m.from)
      ? `<form class="reply inline-form" data-to="${escape(m.from)}" data-keep="hidden" hidden><input name="body" aria-label="reply to ${escape(m.from)}" placeholder="reply to ${escape(m.from)}" required><button type="submit" aria-label="send the reply">S3ND</button></form>`
      : "";
    return `<li class="${escape(m.kind)}${settled.has(m.id) ? " settled" : ""}" data-id="${m.id}" data-key="message-${m.id}"><div class="head"><span class="from">${from}</span>${m.kind === "event" ? '<span class="kind">hive event</span>' : ""}
      <span class="at" data-ago="${m.at}">${ago(m.at)}</span>${reply ? `<button class="quiet" data-act="reply" aria-label="reply to ${escape(m.from)}">↩</button>` : ""}</div>
      <div class="body">${escape(m.body)}</div>${reply}</li>`;
  }

  // What was there when the page loaded does not light up as new; a reply being typed stays open.
  const settled = new Set(inbox.map((m) => m.id));

  function renderInbox() {
    hh.morph($("inbox-list"), inbox.length
      ? inbox.map(messageItem).join("")
      : '<li class="empty">nothing yet. what agents send to the operator lands here.</li>');
  }

  $("inbox-list").addEventListener("click", (e) => {
    const button = e.target.closest('button[data-act="reply"]');
    if (!button) return;
    const form = button.closest("li").querySelector("form.reply");
    form.hidden = !form.hidden;
    if (!form.hidden) form.elements.body.focus();
  });

  $("inbox-list").addEventListener("submit", (e) => {
    const form = e.target.closest("form.reply");
    if (!form) return;
    e.preventDefault();
    const to = form.dataset.to;
    hh.run(form.querySelector("button"), () => hh.send(to, form.elements.body.value), {
      done: (r) => `sent #${r.id} to ${to}`,
    }).then((r) => {
      if (!r) return;
      form.reset();
      form.hidden = true;
    });
  });

  // -- row actions -----------------------------------------------------------------------------------

  const ACTIONS = {
    rebuild: { call: (n) => hh.api(`/api/agents/${n}/rebuild`, { method: "POST" }), done: (n) => `rebuilt ${n}` },
    resume: { call: (n) => hh.api(`/-/web/agents/${n}/resume`, { method: "POST" }), done: (n) => `resumed ${n}` },
    destroy: {
      call: (n) => hh.api(`/api/agents/${n}/destroy`, { method: "POST", body: { purge: false } }),
      confirm: "sure? D3STR0Y",
      done: (n) => `destroyed ${n}; its state is kept`,
    },
    restore: { call: (n) => hh.api(`/-/web/agents/${n}/restore`, { method: "POST" }), done: (n) => `restored ${n}` },
    purge: {
      call: (n) => hh.api(`/api/agents/${n}/destroy`, { method: "POST", body: { purge: true } }),
      confirm: "sure? PURG3 for good",
      done: (n) => `purged ${n}`,
    },
  };

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-act]");
    const action = button && ACTIONS[button.dataset.act];
    if (!action) return;
    const name = button.dataset.agent;
    hh.run(button, () => action.call(name), { confirm: action.confirm, done: () => action.done(name) }).then((r) => {
      if (r !== undefined) refresh.lists();
    });
  });

  // -- keeping current: live events trigger small, coalesced refetches ---------------------------------------------

  function debounced(fn, ms = 120) {
    const timers = new Map();
    return (key = "") => {
      clearTimeout(timers.get(key));
      timers.set(key, setTimeout(() => fn(key), ms));
    };
  }

  const failed = (what) => (error) => hh.toast(`could not refresh ${what}: ${error.message}`, { kind: "error" });

  const refresh = {
    agent: debounced((name) =>
      hh.api(`/api/agents/${name}/state`).then((a) => {
        const i = hiveState.agents.findIndex((x) => x.name === name);
        if (i >= 0) hiveState.agents[i] = a;
        renderAgents();
      }, (error) => (error.status === 404 ? refresh.state() : failed(name)(error)))),
    state: debounced(() => hh.api("/api/state").then((s) => { hiveState = s; renderAgents(); renderInbox(); }, failed("the swarm"))),
    lists: debounced(() => Promise.all([
      hh.api("/-/web/kept").then((k) => { kept = k; renderKept(); }),
      hh.api("/-/web/drafts").then((d) => { drafts = d; renderDrafts(); }),
      hh.api("/api/state").then((s) => { hiveState = s; renderAgents(); }),
    ]).catch(failed("the lists"))),
    approvals: debounced(() => hh.api("/api/approvals").then((list) => {
      const pending = list.filter((p) => p.status === "pending");
      approvals = pending.concat(list.filter((p) => p.status !== "pending").slice(0, 10));
      renderApprovals();
    }, failed("approvals"))),
    inbox: debounced(() => hh.api("/api/inbox").then((m) => { inbox = m; renderInbox(); }, failed("the inbox"))),
  };

  hh.on("state_change", (ev) => {
    const a = hiveState.agents.find((x) => x.name === ev.agent);
    if (!a) return;
    Object.assign(a, ev.data);
    renderAgents();
    flash(ev.agent);
    refresh.agent(ev.agent); // last turn, model and inbox depth are not in the event
  });
  hh.on("turn_end", (ev) => refresh.agent(ev.agent));
  hh.on("turn_start", (ev) => refresh.agent(ev.agent));
  hh.on("message_sent", (ev) => {
    if (ev.data.to === "operator") refresh.inbox();
    else if (agentNames().has(ev.data.to)) refresh.agent(ev.data.to);
  });
  hh.on("note", (ev) => {
    if (/^(spawned|destroyed|restored|rebuilt|drafted|model switched)/.test(ev.data.text || "")) refresh.lists();
  });
  hh.on("approval_requested", (ev) => {
    refresh.approvals();
    refresh.lists();
    if (!ev.replay) {
      hh.notify(`approval #${ev.data.id} waits: ${ev.data.kind} ${ev.agent}`, {
        body: ev.data.description || `asked by ${ev.data.requested_by}`,
        tag: `approval-${ev.data.id}`,
        href: `#approval-${ev.data.id}`,
      });
    }
  });
  hh.on("error", (ev) => {
    // An agent's crash or failed turn; the daemon's own errors (agent "hive") are for its log.
    if (ev.replay || !agentNames().has(ev.agent)) return;
    hh.notify(`${ev.agent}: error`, { body: ev.data.text || ev.data.error || "", tag: `error-${ev.agent}`, href: `#agent-${ev.agent}` });
  });
  hh.on("approval_resolved", () => { refresh.approvals(); refresh.lists(); });

  let connections = 0;
  hh.on("live", () => {
    // After a reconnect, anything might have changed: the replay covers events, this the rest.
    if (connections++ > 0) { refresh.state(); refresh.lists(); refresh.approvals(); refresh.inbox(); }
  });

  $("host-filter").addEventListener("change", renderAgents);
  // A host going down sends no event: while the hive spans hosts, look again now and then.
  setInterval(() => { if (hiveState.cluster && hiveState.cluster.host) refresh.state(); }, 5000);

  renderAgents();
  renderApprovals();
  renderDrafts();
  renderKept();
  renderInbox();
})();
