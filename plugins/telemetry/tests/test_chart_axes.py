"""The charts' axes in Chromium, on a phone's width and a desktop's: labels that fit.

Each uPlot the page makes is kept (a stand-in constructor, installed before the
page's scripts) so the test can read what its axes drew: the time labels' texts,
where their centres fall and, measured in the axis font, how wide they are; and
whether the widest value label fits its axis. The panels stay within the page.
"""

from __future__ import annotations

import re
import shutil
from itertools import pairwise
from pathlib import Path

import hyperhive_telemetry
import hyperhive_web
import pytest
import trio
from hyperhive_web import dashboard_of

from hyperhive_core.testing import dashboard_page, needs_claude, next_event, running_hive, wait_until

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "telemetry"
WIDTHS = {"phone": 390, "desktop": 1440}

SCENARIO = """
[[agents.manager.rules]]
when = "from operator"
steps = [{ text = "noted" }]
"""

KEEP_PLOTS = """
(() => {
  const plots = (window.keptPlots = []);
  let made;
  Object.defineProperty(window, "uPlot", {
    configurable: true,
    get: () => made,
    set(real) {
      made = function (options, data, target) {
        const plot = new real(options, data, target);
        plots.push(plot);
        return plot;
      };
      Object.assign(made, real);
    },
  });
})();
"""

X_AXES = """
() => window.keptPlots.filter((plot) => plot.root.isConnected).map((plot) => {
  const axis = plot.axes[0];
  plot.ctx.save();
  plot.ctx.font = axis.font[0];
  const labels = (axis._values || []).flatMap((text, index) => {
    if (text == null) return [];
    const width = Math.max(...String(text).split("\\n").map((line) => plot.ctx.measureText(line).width));
    const centre = plot.valToPos(axis._splits[index], "x", true);
    return [{ text: String(text), left: centre - width / 2, right: centre + width / 2 }];
  });
  const values = plot.axes[1];
  plot.ctx.font = values.font[0];
  const widest = Math.max(0, ...(values._values || []).map((text) => plot.ctx.measureText(String(text)).width));
  plot.ctx.restore();
  const span = plot.scales.x.max - plot.scales.x.min;
  const valueAxis = {
    texts: values._values,
    room: values._size - values.ticks.size - values.gap,
    widest: widest / devicePixelRatio,
  };
  const chart = plot.root.closest(".telemetry-chart").dataset.chart;
  return { chart, points: plot.data[0].length, span, labels, valueAxis };
})
"""

# The panel within the page's width; the hive's table scrolls sideways in its own box.
PANEL_FITS = """
() => {
  const panel = document.getElementById("panel-telemetry").getBoundingClientRect();
  const wrap = document.querySelector(".telemetry-table-wrap");
  const table = wrap && {
    scroll: wrap.scrollWidth,
    client: wrap.clientWidth,
    cells: wrap.querySelector("td, th").offsetHeight,
  };
  return { left: panel.left, right: panel.right, inner: innerWidth, table };
}
"""

EVERY_CHART_HAS_POINTS = (
    "() => window.keptPlots.filter((plot) => plot.root.isConnected).length >= {count}"
    " && window.keptPlots.filter((plot) => plot.root.isConnected).every((plot) => plot.data[0].length > 0)"
)

pytestmark = [needs_claude, pytest.mark.slow]


def axes_at(url: str, token: str, width: int) -> dict:
    """Each page's charts' x axes at ``width``, and a screenshot of each panel."""
    errors: list[str] = []
    shown = {}
    with dashboard_page(url, token, errors) as page:
        # Tall enough that every chart is on screen, so the screenshot shows them all.
        page.set_viewport_size({"width": width, "height": 2400})
        page.add_init_script(KEEP_PLOTS)
        for name, path, count in (("agent", "/agent/manager/", 4), ("hive", "/", 2)):
            page.goto(f"{url}{path}")
            wait_until(page, EVERY_CHART_HAS_POINTS.format(count=count))
            page.locator("#panel-telemetry").screenshot(path=str(ARTIFACTS / f"axes-{name}-{width}.png"))
            shown[name] = page.evaluate(X_AXES)
            shown[f"{name}-fit"] = page.evaluate(PANEL_FITS)
    return {"errors": errors, **shown}


def overlaps(labels: list[dict]) -> list[tuple[str, str]]:
    return [(a["text"], b["text"]) for a, b in pairwise(labels) if b["left"] - a["right"] < 2]


@pytest.mark.parametrize("device", WIDTHS)
async def test_time_labels_fit_and_one_point_spans_minutes(make_pm, tmp_path, device):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright", reason="pip install playwright (web's test extra)")
    pm = make_pm(web=hyperhive_web, telemetry=hyperhive_telemetry)
    async with running_hive(tmp_path, pm, SCENARIO, web={"port": 0}, telemetry={"sample_interval_seconds": 1}) as hive:
        await hive.broker.send("operator", "manager", "hello")
        with trio.fail_after(60):
            await next_event(hive, "manager", "turn_end")
        await trio.sleep(3)  # a few samples: the sampled charts span seconds, the turn chart one instant
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with trio.fail_after(90):
            dashboard = dashboard_of(hive)
            shown = await trio.to_thread.run_sync(axes_at, dashboard.url, dashboard.token, WIDTHS[device])
    assert shown["errors"] == []
    charts = {(page, axis["chart"]): axis for page in ("agent", "hive") for axis in shown[page]}
    assert {("agent", "turn_duration_ms"), ("agent", "inbox_depth"), ("hive", "turns_per_min")} <= set(charts)
    for where, axis in charts.items():
        assert axis["labels"], where
        assert overlaps(axis["labels"]) == [], where
        assert all("\n" not in label["text"] for label in axis["labels"]), where
    # One turn is one point: two minutes around it, labelled in hours and minutes, not years.
    turns = charts["agent", "turn_duration_ms"]
    assert (turns["points"], turns["span"]) == (1, 120)
    assert all(re.fullmatch(r"\d\d:\d\d", label["text"]) for label in turns["labels"]), turns["labels"]
    for name in ("agent", "hive"):
        assert (ARTIFACTS / f"axes-{name}-{WIDTHS[device]}.png").stat().st_size > 0
    # Every value label whole: "199.0 MB" is not cut to "99.0 MB" at the chart's left edge.
    for where, axis in charts.items():
        assert axis["valueAxis"]["texts"], where
        assert axis["valueAxis"]["widest"] <= axis["valueAxis"]["room"], (where, axis["valueAxis"])
    for name in ("agent", "hive"):
        fit = shown[f"{name}-fit"]
        assert fit["left"] >= 0, fit
        assert fit["right"] <= fit["inner"], fit
    table = shown["hive-fit"]["table"]
    assert table["cells"] < 30, table  # one line a cell, not a heading broken over three
    if device == "phone":
        assert table["scroll"] > table["client"], table
