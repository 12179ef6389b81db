/* hyperhive telemetry: uPlot charts on an agent's page and on the hive dashboard, kept live.
 *
 * Each panel root carries data-telemetry="agent" or "hive", the window to show
 * (data-telemetry-window, seconds) and how often to refresh (data-telemetry-refresh);
 * a turn_end on the dashboard's live stream refreshes at once. A refresh asks
 * /api/stats for the points since the newest one it has (with a small overlap,
 * deduplicated per series) and for the summaries alone (series=0), so the page
 * stays light however many points the window holds. window.hyperhive (the
 * dashboard's runtime) does the fetching and the duration format.
 */
(function () {
  "use strict";

  const COLORS = ["#ffb000", "#c38fff", "#39ff14", "#4fc3f7", "#ff6e6e", "#e8e8e8"];
  const OVERLAP_SECONDS = 10;
  const AGENT_KEYS = ["turn_duration_ms", "inbox_depth", "notes_bytes", "memory_bytes"];
  const HIVE_KEYS = ["turn_duration_ms", "inbox_depth"];
  const COUNTED = new Set(["turns_per_min", "inbox_depth"]);
  const COUNT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

  function stats(params) {
    return hyperhive.api("/api/stats?" + new URLSearchParams(params).toString());
  }

  // -- words for numbers ----------------------------------------------------------

  const format = {
    ms(value) {
      return value == null ? "–" : hyperhive.formatDuration(value);
    },
    seconds(value) {
      return value == null ? "–" : format.ms(value * 1000);
    },
    bytes(value) {
      if (value == null) return "–";
      if (value < 1024) return Math.round(value) + " B";
      if (value < 1024 * 1024) return (value / 1024).toFixed(1) + " KB";
      return (value / 1024 / 1024).toFixed(1) + " MB";
    },
    usd(value) {
      return value == null ? "–" : "$" + value.toFixed(value < 1 ? 4 : 2);
    },
    count(value) {
      return value == null ? "–" : String(Math.round(value));
    },
    rate(value) {
      return value == null ? "–" : value.toFixed(2);
    },
    family(counts, digits) {
      const entries = Object.entries(counts || {}).filter(([, n]) => n > 0);
      entries.sort((a, b) => b[1] - a[1]);
      return entries.length
        ? entries.map(([name, n]) => name + " " + (digits ? n.toFixed(digits) : n)).join(" · ")
        : "none";
    },
  };

  /** A sampled gauge as "now / max" (the sampler may not have run yet: "–"). */
  function gauge(figure, valueFormat) {
    return valueFormat(figure && figure.current) + " / " + valueFormat(figure && figure.max);
  }

  // -- points kept in the browser -------------------------------------------------

  class SeriesStore {
    constructor(windowSeconds) {
      this.window = windowSeconds;
      this.series = new Map();
      this.newest = 0;
    }

    key(agent, key) {
      return agent + "\u0000" + key;
    }

    /** Append new points; a series only ever grows forward in time, so older ones are repeats. */
    add(series) {
      for (const { agent, key, points } of series) {
        let stored = this.series.get(this.key(agent, key));
        if (!stored) {
          stored = { agent, key, xs: [], ys: [] };
          this.series.set(this.key(agent, key), stored);
        }
        const last = stored.xs.length ? stored.xs[stored.xs.length - 1] : -Infinity;
        for (const [ts, value] of points) {
          if (ts > last) {
            stored.xs.push(ts);
            stored.ys.push(value);
            this.newest = Math.max(this.newest, ts);
          }
        }
      }
      this.trim();
    }

    trim() {
      const cutoff = Date.now() / 1000 - this.window;
      for (const stored of this.series.values()) {
        let drop = 0;
        while (drop < stored.xs.length && stored.xs[drop] < cutoff) drop++;
        if (drop) {
          stored.xs.splice(0, drop);
          stored.ys.splice(0, drop);
        }
      }
    }

    /** Where the next refresh starts: a little before the newest point, or the window's start. */
    since() {
      return this.newest ? String(this.newest - OVERLAP_SECONDS) : this.window + "s";
    }

    get(agent, key) {
      const stored = this.series.get(this.key(agent, key));
      return stored ? [stored.xs, stored.ys] : [[], []];
    }

    agents() {
      return [...new Set([...this.series.values()].map((stored) => stored.agent))].sort();
    }
  }

  /** Turns per minute, from the turns' end times: one bucket per minute of the window. */
  function perMinute(xs, windowSeconds) {
    const now = Date.now() / 1000;
    const first = Math.floor((now - windowSeconds) / 60) * 60;
    const starts = [];
    const counts = [];
    for (let start = first; start <= now; start += 60) {
      starts.push(start);
      counts.push(0);
    }
    for (const ts of xs) {
      const index = Math.floor((ts - first) / 60);
      if (index >= 0 && index < counts.length) counts[index] += 1;
    }
    return [starts, counts];
  }

  // -- charts -----------------------------------------------------------------------

  // Time labels on one line, at most "00:00:00" wide: uPlot's own add the date on a
  // second line, wider than the space between ticks on a narrow chart.
  const TIME_LABELS = [
    [60, uPlot.fmtDate("{HH}:{mm}:{ss}")],
    [86400, uPlot.fmtDate("{HH}:{mm}")],
    [Infinity, uPlot.fmtDate("{MM}-{DD}")],
  ];
  const TIME_LABEL_SPACE = 72; // px between ticks: the widest label and a gap

  function timeLabels(u, splits, axisIndex, space, increment) {
    const [, label] = TIME_LABELS.find(([below]) => increment < below);
    return splits.map((seconds) => label(new Date(seconds * 1000)));
  }

  /** The time shown: the data's span, or a minute either side of a lone instant, which has
   * none (uPlot stretches it to 1000 days, labelled in years). */
  function timeRange(u, min, max) {
    const xs = u.data[0];
    return xs.length && xs[0] === xs[xs.length - 1] ? [xs[0] - 60, xs[0] + 60] : [min, max];
  }

  /** The value axis as wide as its widest label ("199.0 MB"), so none is cut off at the left edge. */
  function valueAxisSize(u, values, axisIndex, cycle) {
    const axis = u.axes[axisIndex];
    if (cycle > 1) return axis._size; // uPlot asks again after a resize; settle rather than loop
    const widest = (values || []).reduce((longest, text) => (String(text).length > longest.length ? String(text) : longest), "");
    u.ctx.save();
    u.ctx.font = axis.font[0];
    const width = u.ctx.measureText(widest).width / devicePixelRatio;
    u.ctx.restore();
    return Math.ceil(width + axis.ticks.size + axis.gap + 4);
  }

  /** A time chart with one line per label; counts are drawn as steps with whole-number ticks. */
  function chart(element, labels, valueFormat, counts) {
    const axis = { stroke: "#9a9a9a", grid: { stroke: "#262626", width: 1 }, ticks: { stroke: "#333", width: 1 } };
    const xAxis = { ...axis, space: TIME_LABEL_SPACE, values: timeLabels };
    const yAxis = { ...axis, size: valueAxisSize, values: (u, values) => values.map(valueFormat) };
    if (counts) yAxis.incrs = COUNT_STEPS;
    const options = {
      width: Math.max(240, element.clientWidth || 320),
      height: 150,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: timeRange } },
      axes: [xAxis, yAxis],
      series: [
        {},
        ...labels.map((label, index) => ({
          label,
          stroke: COLORS[index % COLORS.length],
          width: 1.5,
          paths: counts ? uPlot.paths.stepped({ align: 1 }) : undefined,
          value: (u, value) => valueFormat(value),
        })),
      ],
    };
    const plot = new uPlot(options, [[], ...labels.map(() => [])], element);
    new ResizeObserver(() => {
      plot.setSize({ width: Math.max(240, element.clientWidth), height: 150 });
    }).observe(element);
    return plot;
  }

  function setStatus(root, error) {
    const status = root.querySelector(".telemetry-status");
    status.textContent = error ? "stats unavailable: " + error.message : "";
    status.hidden = !error;
  }

  /** Run refresh now, then every `seconds`, and soon after any turn ends. */
  function keepFresh(seconds, refresh) {
    let timer = null;
    const loop = async () => {
      clearTimeout(timer);
      try {
        await refresh();
      } finally {
        timer = setTimeout(loop, seconds * 1000);
      }
    };
    hyperhive.on("turn_end", (event) => {
      if (!event.replay) {
        clearTimeout(timer);
        timer = setTimeout(loop, 500); // the turn's figures are written just after its event
      }
    });
    loop();
  }

  // -- an agent's page --------------------------------------------------------------

  function figureList(list, rows) {
    list.replaceChildren(
      ...rows.flatMap(([term, value]) => {
        const dt = document.createElement("dt");
        dt.textContent = term;
        const dd = document.createElement("dd");
        dd.textContent = value;
        return [dt, dd];
      }),
    );
  }

  function agentPanel(root) {
    const agent = root.dataset.telemetryAgent;
    const windowSeconds = Number(root.dataset.telemetryWindow);
    const store = new SeriesStore(windowSeconds);
    const charts = {};
    for (const element of root.querySelectorAll(".telemetry-chart")) {
      const kind = element.dataset.chart;
      const valueFormat = {
        turn_duration_ms: format.ms,
        notes_bytes: format.bytes,
        memory_bytes: format.bytes,
        inbox_depth: format.count,
      }[kind];
      charts[kind] = chart(element, [element.dataset.label], valueFormat || format.count, COUNTED.has(kind));
    }
    const figures = root.querySelector(".telemetry-figures");

    async function refresh() {
      try {
        const [fresh, summary] = await Promise.all([
          stats({ agent, since: store.since(), key: AGENT_KEYS.join(",") }),
          stats({ agent, since: windowSeconds + "s", series: "0" }),
        ]);
        store.add(fresh.series);
        const durations = store.get(agent, "turn_duration_ms");
        const data = {
          turn_duration_ms: durations,
          turns_per_min: perMinute(durations[0], windowSeconds),
          inbox_depth: store.get(agent, "inbox_depth"),
          notes_bytes: store.get(agent, "notes_bytes"),
          memory_bytes: store.get(agent, "memory_bytes"),
        };
        for (const [kind, plot] of Object.entries(charts)) plot.setData(data[kind]);
        describeAgent(figures, summary.summary[agent]);
        setStatus(root, null);
      } catch (error) {
        setStatus(root, error);
      }
    }
    keepFresh(Number(root.dataset.telemetryRefresh), refresh);
  }

  function describeAgent(list, figures) {
    if (!figures || !figures.turns) {
      figureList(list, [["turns", "none in this window"]]);
      return;
    }
    const perTurn = figures.messages_per_turn;
    figureList(list, [
      ["turns", figures.turns + " (" + format.rate(figures.turns_per_min) + "/min)"],
      ["turn p50 / p95", format.ms(figures.turn_duration_ms.p50) + " / " + format.ms(figures.turn_duration_ms.p95)],
      ["tool calls per turn", format.rate(figures.tool_calls_per_turn)],
      ["exits", format.family(figures.exits)],
      ["tools", format.family(figures.tools)],
      ["sent per turn", format.family(perTurn.sent, 1)],
      ["received per turn", format.family(perTurn.received, 1)],
      ["permission denials", format.count(figures.permission_denials)],
      ["dead-lettered", format.count(figures.dead_lettered)],
      ["cost", format.usd(figures.cost_usd)],
      ["inbox now / max", gauge(figures.inbox_depth, format.count)],
      ["notes.md", format.bytes(figures.notes_bytes)],
      ["memory now / max", gauge(figures.memory_bytes, format.bytes)],
      ["since last turn", format.seconds(figures.seconds_since_last_turn)],
    ]);
  }

  // -- the hive dashboard -------------------------------------------------------------

  function hivePanel(root) {
    const windowSeconds = Number(root.dataset.telemetryWindow);
    const store = new SeriesStore(windowSeconds);
    const body = root.querySelector(".telemetry-table tbody");
    const approvals = root.querySelector(".telemetry-approvals");
    const elements = [...root.querySelectorAll(".telemetry-chart")];
    let plotted = "";
    let plots = [];

    function draw() {
      const agents = store.agents().filter((agent) => agent !== "hive");
      if (!agents.length) return;
      if (agents.join() !== plotted) {
        // One series per agent: a new agent means new charts.
        plots.forEach((plot) => plot.destroy());
        plots = elements.map((element) => chart(element, agents, format.count, true));
        plotted = agents.join();
      }
      elements.forEach((element, index) => {
        if (element.dataset.chart === "turns_per_min") {
          const rates = agents.map((agent) => perMinute(store.get(agent, "turn_duration_ms")[0], windowSeconds));
          plots[index].setData([rates.length ? rates[0][0] : [], ...rates.map((rate) => rate[1])]);
        } else {
          plots[index].setData(uPlot.join(agents.map((agent) => store.get(agent, "inbox_depth"))));
        }
      });
    }

    function row(agent, figures) {
      const cells = [
        agent,
        format.rate(figures.turns_per_min),
        format.ms(figures.turn_duration_ms.p50),
        format.ms(figures.turn_duration_ms.p95),
        format.family(figures.exits),
        format.usd(figures.cost_usd),
        gauge(figures.inbox_depth, format.count),
        format.bytes(figures.notes_bytes),
        gauge(figures.memory_bytes, format.bytes),
        format.seconds(figures.seconds_since_last_turn),
      ];
      const tr = document.createElement("tr");
      tr.replaceChildren(
        ...cells.map((text, index) => {
          const cell = document.createElement(index ? "td" : "th");
          if (!index) cell.scope = "row";
          cell.textContent = text;
          return cell;
        }),
      );
      return tr;
    }

    async function refresh() {
      try {
        const [fresh, summary] = await Promise.all([
          stats({ since: store.since(), key: HIVE_KEYS.join(",") }),
          stats({ since: windowSeconds + "s", series: "0" }),
        ]);
        store.add(fresh.series);
        draw();
        const agents = Object.entries(summary.summary).filter(([agent]) => agent !== "hive");
        body.replaceChildren(...agents.map(([agent, figures]) => row(agent, figures)));
        const queue = summary.summary.hive && summary.summary.hive.approval_queue;
        approvals.textContent = "approvals waiting: " + format.count(queue ? queue.current : 0);
        setStatus(root, null);
      } catch (error) {
        setStatus(root, error);
      }
    }
    keepFresh(Number(root.dataset.telemetryRefresh), refresh);
  }

  function start() {
    for (const root of document.querySelectorAll("[data-telemetry]")) {
      if (root.dataset.telemetryStarted) continue;
      root.dataset.telemetryStarted = "1";
      (root.dataset.telemetry === "hive" ? hivePanel : agentPanel)(root);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
