// The terminal tab: xterm.js over a websocket to a shell on a PTY inside the agent's container.
// xterm.js is vendored from npm (static/vendor/xterm, with its licence) and loaded on first use.
"use strict";

(() => {
  const hh = window.hyperhive;
  const $ = (id) => document.getElementById(id);
  const encoder = new TextEncoder();
  let term = null;
  let fit = null;
  let socket = null;

  function load(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.append(script);
    });
  }

  async function ensureTerminal() {
    if (term) return;
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = "/static/vendor/xterm/xterm.css";
    document.head.append(css);
    await load("/static/vendor/xterm/xterm.js");
    await load("/static/vendor/xterm/addon-fit.js");
    term = new window.Terminal({
      cursorBlink: true,
      fontFamily: getComputedStyle(document.body).fontFamily,
      fontSize: 13,
      theme: {
        background: "#050607",
        foreground: "#cfd6de",
        cursor: "#ffb000",
        selectionBackground: "rgba(255, 176, 0, 0.3)",
        green: "#37f27a",
        yellow: "#ffb000",
        magenta: "#c3a1f5",
        red: "#ff5468",
      },
    });
    fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open($("terminal"));
    term.onData((data) => socket?.readyState === WebSocket.OPEN && socket.send(encoder.encode(data)));
    term.onResize(({ rows, cols }) => sendSize(rows, cols));
    new ResizeObserver(() => !$("term-view").hidden && fit.fit()).observe($("terminal"));
  }

  function sendSize(rows, cols) {
    if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ resize: [rows, cols] }));
  }

  function status(text, ok = false) {
    const el = $("term-status");
    el.textContent = text;
    el.className = ok ? "ok" : "";
  }

  async function connect() {
    await ensureTerminal();
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close();
    fit.fit();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/-/web/agents/${hh.agent}/terminal?csrf=${encodeURIComponent(hh.csrf)}`;
    status("connecting…");
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      status(`● shell in ${hh.agent}'s container`, true);
      sendSize(term.rows, term.cols);
      term.focus();
    };
    socket.onmessage = (message) => term.write(new Uint8Array(message.data));
    socket.onclose = (event) => {
      const why = event.reason || (event.code === 1006 ? "connection refused or lost" : `closed (${event.code})`);
      status(why);
      term.write(`\r\n\x1b[33m[${why}]\x1b[0m\r\n`);
    };
  }

  document.addEventListener("hyperhive:tab", (e) => {
    if (e.detail !== "tab-term") return;
    if (!socket || socket.readyState > WebSocket.OPEN) connect().catch((error) => hh.toast(error.message, { kind: "error" }));
    else {
      fit.fit();
      term.focus();
    }
  });
  $("term-connect").addEventListener("click", () => connect().catch((error) => hh.toast(error.message, { kind: "error" })));
})();
