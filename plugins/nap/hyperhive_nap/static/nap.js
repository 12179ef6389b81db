// The N4P section: shown while this agent naps, re-rendered whenever its state changes.
"use strict";

(() => {
  function changed(event) {
    if (event.replay || (event.agent && event.agent !== hyperhive.agent)) return;
    hyperhive.refreshPanel("nap").catch((error) => hyperhive.toast(error.message, { kind: "error" }));
  }

  hyperhive.on("state_change", changed);
  hyperhive.on("live", changed); // back from a lost connection
})();
