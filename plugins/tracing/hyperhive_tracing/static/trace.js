// A trace's page: a tap on a span opens its details (rendered by the server, hidden until
// then); #span-<id> in the address opens that span, so a link to a span lands on it.
"use strict";

(() => {
  const rows = document.querySelector(".wf-rows");
  if (!rows) return; // the list page: nothing to open

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

  function fromAddress() {
    const match = /^#span-([0-9a-f]{16})$/.exec(location.hash);
    if (match) show(match[1], { scroll: true });
  }

  rows.addEventListener("click", (event) => {
    const label = event.target.closest(".wf-label");
    if (!label) return;
    const spanId = label.closest(".wf-row").dataset.span;
    if (open && open.row.dataset.span === spanId) {
      close();
      history.replaceState(null, "", location.pathname + location.search);
    } else if (show(spanId)) {
      history.replaceState(null, "", `#span-${spanId}`);
    }
  });

  document.querySelector(".wf-details").addEventListener("click", (event) => {
    if (!event.target.closest(".wf-close")) return;
    const label = open && open.label;
    close();
    history.replaceState(null, "", location.pathname + location.search);
    if (label) label.focus();
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });

  window.addEventListener("hashchange", fromAddress);
  fromAddress();
})();
