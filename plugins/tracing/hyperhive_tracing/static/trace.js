// A trace's page: a tap on a span opens its details (rendered by the server, hidden until
// then); #span-<id> in the address opens that span, so a link to a span lands on it. While
// the trace is open the page fetches itself again every few seconds and shows what changed.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const MAX_REFRESHES = 720; // an hour of a trace left open; reload the page to follow it longer
  let open = null;

  function close() {
    if (!open) return;
    open.row.classList.remove("selected");
    open.label.setAttribute("aria-expanded", "false");
    open.detail.hidden = true;
    open = null;
  }

  function show(spanId, { scroll = false } = {}) {
    const row = document.getElementById(`span-${spanId}`);
    const detail = document.getElementById(`detail-${spanId}`);
    if (!row || !detail) return false;
    close();
    const label = row.querySelector(".wf-label");
    row.classList.add("selected");
    label.setAttribute("aria-expanded", "true");
    detail.hidden = false;
    detail.style.setProperty("--kind", getComputedStyle(row).getPropertyValue("--kind"));
    open = { row, label, detail };
    if (scroll) row.scrollIntoView({ block: "center" });
    return true;
  }

  const forget = () => history.replaceState(null, "", location.pathname + location.search);

  function fromAddress() {
    const match = /^#span-([0-9a-f]{16})$/.exec(location.hash);
    if (match) show(match[1], { scroll: true });
  }

  // Delegated: the rows and details are replaced as an open trace is refreshed.
  document.addEventListener("click", (event) => {
    const label = event.target.closest(".wf-label");
    if (label) {
      const spanId = label.closest(".wf-row").dataset.span;
      if (open && open.row.dataset.span === spanId) {
        close();
        forget();
      } else if (show(spanId)) {
        history.replaceState(null, "", `#span-${spanId}`);
      }
    } else if (event.target.closest(".wf-close")) {
      const spanId = open && open.row.dataset.span;
      close();
      forget();
      if (spanId) document.querySelector(`#span-${spanId} .wf-label`).focus();
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && open) {
      close();
      forget();
    }
  });

  window.addEventListener("hashchange", fromAddress);
  fromAddress();

  // -- an open trace, kept current ----------------------------------------------------------

  const isOpen = (root) => root.querySelector(".trace-summary[data-open='true']") !== null;
  let refreshes = 0;

  async function refresh() {
    if (document.hidden) return;
    refreshes += 1;
    const response = await fetch(location.pathname, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`the trace could not be fetched again: HTTP ${response.status}`);
    const next = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("main");
    const selected = open && open.row.dataset.span;
    const box = document.querySelector(".waterfall");
    const scrolled = box ? box.scrollLeft : 0;
    open = null;
    document.getElementById("main").replaceWith(next);
    const newBox = document.querySelector(".waterfall");
    if (newBox) newBox.scrollLeft = scrolled;
    if (selected) show(selected);
    if (!isOpen(document) || refreshes >= MAX_REFRESHES) clearInterval(timer);
  }

  const timer = isOpen(document)
    ? setInterval(() => refresh().catch((error) => {
        clearInterval(timer);
        console.warn(error.message);
      }), REFRESH_MS)
    : null;
})();
