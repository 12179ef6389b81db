// Formatting shared by every page, and by plugin panels through window.hyperhive.
// Pure functions, loadable in node for the unit tests (web/tests/test_format.py).
"use strict";

const hyperhiveFormat = (() => {
  const pad = (n) => String(n).padStart(2, "0");

  /** A duration as the "last turn" chip shows it: 850ms, 12.3s, 2m 05s, 1h 02m. */
  function formatDuration(ms) {
    if (ms == null || !Number.isFinite(ms) || ms < 0) return "";
    if (Math.round(ms) < 1000) return `${Math.round(ms)}ms`;
    const tenths = Math.round(ms / 100);
    if (tenths < 600) return `${(tenths / 10).toFixed(1)}s`;
    const seconds = Math.round(ms / 1000);
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${pad(seconds % 60)}s`;
    return `${Math.floor(seconds / 3600)}h ${pad(Math.floor((seconds % 3600) / 60))}m`;
  }

  /** A countdown: MM:SS, or H:MM:SS past an hour; never negative. */
  function clock(seconds) {
    const total = Math.max(0, Math.ceil(seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    return h ? `${h}:${pad(m)}:${pad(s)}` : `${pad(m)}:${pad(s)}`;
  }

  /** How long ago a unix time (seconds) was, in a few characters: "just now", "42s ago", "3m ago". */
  function ago(unixSeconds, now = Date.now() / 1000) {
    const d = Math.max(0, now - unixSeconds);
    if (d < 5) return "just now";
    if (d < 60) return `${Math.floor(d)}s ago`;
    if (d < 3600) return `${Math.floor(d / 60)}m ago`;
    if (d < 86400) return `${Math.floor(d / 3600)}h ago`;
    return `${Math.floor(d / 86400)}d ago`;
  }

  /** Text made safe to put inside HTML. */
  function escape(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  return { formatDuration, clock, ago, escape };
})();

if (typeof module !== "undefined") module.exports = hyperhiveFormat;
