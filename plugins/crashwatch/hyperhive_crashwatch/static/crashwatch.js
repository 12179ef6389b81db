// crashwatch: re-render the crash panel whenever an agent crashes or a burst of crashes ends.
"use strict";

(() => {
  const key = hyperhive.agent ? "crashwatch-agent" : "crashwatch";
  let refreshing = false;
  let again = false;

  // One refresh at a time; events that arrive meanwhile cost one more, not one each.
  async function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    try {
      do {
        again = false;
        await hyperhive.refreshPanel(key);
      } while (again);
    } catch (error) {
      console.error("crashwatch: could not refresh the crash panel", error);
    } finally {
      refreshing = false;
    }
  }

  hyperhive.on("crashwatch.crash", refresh);
  hyperhive.on("crashwatch.burst_ended", refresh);
})();
