/* hyperhive compaction: re-render the panel when a compaction starts or ends. */
(() => {
  "use strict";
  for (const type of ["compaction.started", "compaction.finished"]) {
    hyperhive.on(type, (event) => {
      if (event.replay || !document.getElementById("panel-compaction")) return;
      hyperhive.refreshPanel("compaction").catch((error) => hyperhive.toast(error.message, { kind: "error" }));
    });
  }
})();
