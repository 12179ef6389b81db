// The host dashboard's D34D L3TT3RS: messages whose every delivery attempt failed,
// each with its attempts, what they did (on demand), and requeue / drop (two clicks).
// Rendered from the page's initial JSON, then refetched when a dead-letter event arrives.
"use strict";

(() => {
  const hh = window.hyperhive;
  const { escape, ago, formatDuration } = hh;
  const $ = (id) => document.getElementById(id);
  let data = JSON.parse($("initial").textContent).dead_letters;
  const activity = new Map(); // id → the attempts' activity, once fetched

  const WARNING = "a requeue delivers it again: the agent may repeat work these attempts already did (tool calls, messages sent).";
  const clockOf = (at) => new Date(at * 1000).toLocaleTimeString([], { hour12: false });
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

  function attemptLine(a) {
    const parts = [`<span class="exit ${a.exit === "ok" ? "ok" : "failed"}">${escape(a.exit || "did not finish")}</span>`];
    if (a.duration_ms != null) parts.push(formatDuration(a.duration_ms));
    if (a.tool_calls) parts.push(plural(a.tool_calls, "tool call"));
    if (a.tools.length) parts.push(`<span class="tool">${a.tools.map((t) => escape(hh.render.toolName(t))).join(", ")}</span>`);
    if (a.batch.length > 1) parts.push(`in a batch of ${a.batch.length}`);
    return `<li><time datetime="${new Date(a.started_at * 1000).toISOString()}">${clockOf(a.started_at)}</time> ${parts.join(" · ")}</li>`;
  }

  function card(d) {
    const to = escape(d.recipient);
    const attempts = d.history.length
      ? `<ol class="attempts" aria-label="attempts at message ${d.id}">${d.history.map(attemptLine).join("")}</ol>`
      : '<p class="hint">no turn that handled it is on record.</p>';
    return `<article class="dead-letter" id="dead-${d.id}" data-id="${d.id}" aria-label="dead letter ${d.id} to ${to}">
      <header><span class="id">#${d.id}</span><a href="/agent/${to}/">${to}</a>
        <span class="who">from ${escape(d.sender)} · ${d.kind === "event" ? "hive event · " : ""}sent <span data-ago="${d.created_at}">${ago(d.created_at)}</span> · ${plural(d.attempts, "attempt")}</span></header>
      <div class="body">${escape(d.preview)}</div>
      <p class="last-error"><span class="label">last error</span> ${escape(d.last_error || "(none recorded)")}</p>
      ${attempts}
      <details class="activity"><summary>what the attempts did</summary><div class="activity-body" data-keep="children"></div></details>
      <p class="hint warn">${WARNING}</p>
      <div class="decide">
        <button class="go" data-dead="requeue" data-id="${d.id}" aria-label="requeue dead letter ${d.id}">R3QU3U3</button>
        <button class="danger" data-dead="drop" data-id="${d.id}" aria-label="drop dead letter ${d.id} for good">DR0P</button>
      </div>
    </article>`;
  }

  function activityItem(item) {
    switch (item.type) {
      case "assistant_text":
        return ["◆", escape(item.text)];
      case "tool_use":
        return ["⚙", `<span class="tool">${escape(hh.render.toolName(item.name))}</span> ${escape(typeof item.input === "string" ? item.input : JSON.stringify(item.input ?? {}))}`];
      case "tool_result":
        return ["↳", escape(typeof item.content === "string" ? item.content : JSON.stringify(item.content)), item.is_error ? "is-error" : ""];
      case "message_sent":
        return ["→", `sent #${escape(item.id)} to ${escape(item.to)}: ${escape(item.preview)}`];
      case "permission_denied":
        return ["⛔", `denied ${escape(hh.render.toolName(item.tool || ""))}: ${escape(item.reason || "")}`];
      default:
        return ["·", escape(item.text || item.error || item.type)];
    }
  }

  function renderActivity(box, letter) {
    box.innerHTML = letter.history.length
      ? letter.history.map((a, i) => {
          const items = a.activity === null
            ? '<li class="gone">no longer in the agent\'s event history</li>'
            : a.activity.length
              ? a.activity.map((item) => {
                  const [glyph, html, extra] = activityItem(item);
                  return `<li class="${escape(item.type)}${extra ? ` ${extra}` : ""}"><span class="glyph" aria-hidden="true">${glyph}</span><span class="text">${html}</span></li>`;
                }).join("")
              : '<li class="gone">nothing: the turn did no work</li>';
          return `<section class="attempt" aria-label="attempt ${i + 1}"><h3>attempt ${i + 1} · ${clockOf(a.started_at)} · ${escape(a.exit || "did not finish")}</h3><ul>${items}</ul></section>`;
        }).join("")
      : '<p class="hint">no turn that handled it is on record.</p>';
  }

  async function loadActivity(el) {
    const id = Number(el.dataset.id);
    const box = el.querySelector(".activity-body");
    if (activity.has(id)) {
      renderActivity(box, activity.get(id));
      return;
    }
    box.innerHTML = '<p class="hint">loading…</p>';
    try {
      const letter = await hh.api(`/api/dead-letters/${id}`);
      activity.set(id, letter);
      renderActivity(box, letter);
    } catch (error) {
      box.innerHTML = `<p class="error">${escape(error.message)}</p>`;
    }
  }

  const attemptsSeen = new Map(); // id → its attempts as last rendered

  function render() {
    const letters = data.dead_letters;
    const tail = !letters.length
      ? '<p class="empty">no dead letters. a message whose every delivery attempt fails lands here, to requeue or drop.</p>'
      : data.total > letters.length ? `<p class="hint more">… and ${data.total - letters.length} older (hyperhive dead list --limit N)</p>` : "";
    // In place: an armed DR0P stays armed, opened details stay open with what they show.
    hh.morph($("dead-list"), letters.map(card).join("") + tail);
    for (const d of letters) {
      const attempts = JSON.stringify(d.history);
      if (attemptsSeen.has(d.id) && attemptsSeen.get(d.id) !== attempts) {
        activity.delete(d.id); // new attempts: fetch what they did again
        const el = $(`dead-${d.id}`);
        if (el.querySelector("details.activity").open) loadActivity(el);
      }
      attemptsSeen.set(d.id, attempts);
    }
    const total = data.total;
    $("dead-title").querySelector("span").innerHTML = `◆ D34D L3TT3RS ◆<span class="count">${total}</span>`;
    const chip = $("dead-chip");
    chip.hidden = !total;
    chip.textContent = `◆ ${total} D34D`;
    chip.setAttribute("aria-label", `${plural(total, "dead letter")}: messages whose every delivery attempt failed`);
    hh.waiting("dead letters", total);
  }

  let timer = null;
  function refresh() {
    clearTimeout(timer);
    timer = setTimeout(() => hh.api("/api/dead-letters").then((d) => { data = d; render(); },
      (error) => hh.toast(`could not refresh the dead letters: ${error.message}`, { kind: "error" })), 120);
  }

  $("dead-list").addEventListener("toggle", (e) => {
    const details = e.target;
    if (details.matches?.("details.activity") && details.open) loadActivity(details.closest("article"));
  }, true);

  const ACTIONS = {
    requeue: { confirm: undefined, done: (id) => `requeued #${id}: it goes back to its agent's queue` },
    drop: { confirm: "sure? DR0P for good", done: (id) => `dropped #${id}` },
  };

  $("dead-list").addEventListener("click", (e) => {
    const button = e.target.closest("button[data-dead]");
    if (!button) return;
    const { dead: act, id } = button.dataset;
    const action = ACTIONS[act];
    hh.run(button, () => hh.api(`/api/dead-letters/${id}/${act}`, { method: "POST" }), {
      confirm: action.confirm,
      done: () => action.done(id),
    }).then((result) => result !== undefined && refresh());
  });

  for (const type of ["message_dead", "message_requeued", "message_dropped"]) hh.on(type, refresh);
  hh.on("message_dead", (ev) => {
    if (ev.replay) return;
    hh.notify(`dead letter #${ev.data.id} to ${ev.data.recipient}`, {
      body: ev.data.last_error || ev.data.preview || "",
      tag: `dead-${ev.data.id}`,
      href: `#dead-${ev.data.id}`,
    });
  });
  let connections = 0;
  hh.on("live", () => {
    if (connections++ > 0) refresh(); // after a reconnect, the replay may not cover everything
  });

  render();
})();
