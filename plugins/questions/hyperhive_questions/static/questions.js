// ◆ M1ND H4S QU3STI0NS ◆: re-rendered from the server whenever a question is asked or
// resolved, keeping what the operator was typing into the other questions.
"use strict";

(() => {
  const KEY = "questions";

  async function refresh() {
    const drafts = new Map();
    for (const field of document.querySelectorAll(`#panel-${KEY} [name=answer]`)) {
      drafts.set(field.closest("[data-question]").dataset.question, field.value);
    }
    const focused = document.activeElement?.closest?.(`#panel-${KEY} [data-question]`)?.dataset.question;
    const section = await hyperhive.refreshPanel(KEY);
    if (!section) return;
    for (const [id, value] of drafts) {
      const field = section.querySelector(`[data-question="${id}"] [name=answer]`);
      if (field && value) field.value = value;
    }
    if (focused) section.querySelector(`[data-question="${focused}"] [name=answer]`)?.focus();
  }

  function changed(event) {
    if (event.replay) return;
    refresh().catch((error) => hyperhive.toast(error.message, { kind: "error" }));
  }

  hyperhive.on("questions.asked", changed);
  hyperhive.on("questions.resolved", changed);
  // Back from a lost connection: whatever changed meanwhile came as replayed events.
  hyperhive.on("live", changed);
})();
