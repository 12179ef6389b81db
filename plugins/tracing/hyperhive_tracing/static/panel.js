// The recent traces panels: shown again once a turn has ended (its spans are written just
// after) or a new turn has joined a trace.
"use strict";

(() => {
  const SETTLE_MS = 1500;
  let timer = null;

  function later() {
    clearTimeout(timer);
    timer = setTimeout(() => {
      hyperhive.refreshPanel("tracing").catch((error) => hyperhive.toast(error.message, { kind: "error" }));
    }, SETTLE_MS);
  }

  for (const type of ["tracing.turn", "turn_end"]) {
    hyperhive.on(type, (event) => {
      if (!event.replay) later();
    });
  }
})();
