// ◆ M1ND H4S QU3STI0NS ◆: re-rendered from the server whenever a question is asked or
// resolved. The dashboard patches the section in place, so what the operator is typing
// into another question (text, caret, focus) stays as it is.
"use strict";

(() => {
  const KEY = "questions";

  function count() {
    hyperhive.waiting(KEY, document.querySelectorAll(`#panel-${KEY} [data-question]`).length);
  }

  function changed(event) {
    if (event.replay) return;
    hyperhive.refreshPanel(KEY).then(count, (error) => hyperhive.toast(error.message, { kind: "error" }));
  }

  hyperhive.on("questions.asked", (event) => {
    changed(event);
    if (!event.replay) {
      hyperhive.notify(`${event.data.asker} asks the operator`, {
        body: event.data.question,
        tag: `question-${event.data.id}`,
        href: `#panel-${KEY}`,
      });
    }
  });
  hyperhive.on("questions.resolved", changed);
  // Back from a lost connection: whatever changed meanwhile came as replayed events.
  hyperhive.on("live", changed);
  count();
})();
