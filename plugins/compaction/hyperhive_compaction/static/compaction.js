/* hyperhive compaction: re-render the panel when a compaction starts or ends.
 * Refreshes run one after another, so the last one shown is the newest. */
(() => {
  "use strict";
  let queue = Promise.resolve();
  for (const type of ["compaction.started", "compaction.finished"]) {
    hyperhive.on(type, (event) => {
      if (event.replay || !document.getElementById("panel-compaction")) return;
      queue = queue
        .then(() => hyperhive.refreshPanel("compaction"))
        .catch((error) => hyperhive.toast(error.message, { kind: "error" }));
    });
  }
})();
