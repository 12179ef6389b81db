"""What plugins add to the dashboard: panels (and their assets), routes, slash commands."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import hyperhive_web
import pytest
import trio
from hyperhive_web.routes import collect_routes
from hyperhive_web.slash import collect_slash_commands
from webkit import browser_session, dashboard_hive, operator

from hyperhive_core import HyperhiveError, Panel, PluginError, hookimpl
from hyperhive_core.testing import needs_claude

pytestmark = needs_claude


class Extras:
    """A third-party plugin using every web hook."""

    def __init__(self, static: Path) -> None:
        self.script = static / "extras.js"
        self.script.write_text("window.extrasLoaded = true;\n")
        self.style = static / "extras.css"
        self.style.write_text(".extras { color: red; }\n")
        self.calls: list[tuple[str, str]] = []

    @hookimpl
    def register_routes(self, register):
        async def hello(hive, name):
            return {"hello": name, "agents": [agent.name for agent in hive.agents]}

        def fail(hive):
            raise HyperhiveError("extras refuses, and says why")

        register("/-/extras/hello/<name>", hello)
        register("/-/extras/fail", fail, methods=("POST",))
        register("/api/stats", lambda hive: {"series": []}, public=True)  # a path of its own
        register("/extras.txt", lambda hive: "extras", public=True)

    @hookimpl
    def register_slash_commands(self, register):
        async def shout(hive, agent, args):
            self.calls.append((agent, args))
            return f"{agent}: {args.upper()}!"

        register("shout", shout, help="/shout TEXT: say it loudly")

    @hookimpl
    def dashboard_panels(self, hive):
        return [
            Panel(
                "extras",
                "3XTR4S",
                "extra things",
                '<p class="extras">hello from extras</p>',
                placement="top",
                scripts=(self.script,),
                styles=(self.style,),
            )
        ]

    @hookimpl
    async def agent_panels(self, hive, agent):
        await trio.lowlevel.checkpoint()
        return [Panel("extras-agent", "3XTR4S", "extra things", f"<p>about {agent}</p>")]


class Broken:
    @hookimpl
    def dashboard_panels(self, hive):
        raise RuntimeError("the panel's database is gone")


@pytest.fixture
def extras(tmp_path):
    return Extras(tmp_path)


@pytest.fixture
async def extras_hive(tmp_path, make_pm, extras):
    async with dashboard_hive(tmp_path, make_pm(web=hyperhive_web, extras=extras, broken=Broken())) as hive:
        yield hive


async def test_hook_dashboard_panels(extras_hive):
    http = operator(extras_hive)
    with trio.fail_after(20):
        page = (await http.get("/")).body.decode()
        script = re.search(r'<script src="(/-/web/assets/extras/[0-9a-f]+/extras\.js)"', page).group(1)
        style = re.search(r'<link rel="stylesheet" href="(/-/web/assets/extras/[0-9a-f]+/extras\.css)"', page).group(1)
        served = await http.get(script)
        refreshed = (await http.get("/-/web/panels/extras")).json()
        gone = (await http.get("/-/web/panels/nothing")).json()
        forged = await http.get(script.replace("extras.js", "hyperhive.toml"))
    assert '<section class="panel plugin" id="panel-extras" data-plugin="extras"' in page
    assert 'aria-label="extra things"' in page
    assert "◆ 3XTR4S ◆" in page
    assert '<p class="extras">hello from extras</p>' in page
    assert served.status == 200
    assert served.body == b"window.extrasLoaded = true;\n"
    assert (await http.get(style)).status == 200
    assert refreshed["placement"] == "top"
    assert 'id="panel-extras"' in refreshed["html"]
    assert gone == {"key": "nothing", "html": None}
    assert forged.status == 404  # only files a panel names are served


async def test_a_panel_that_fails_gets_an_error_panel_and_the_page_still_works(extras_hive):
    with trio.fail_after(20):
        page = await operator(extras_hive).get("/")
    assert page.status == 200
    html = page.body.decode()
    assert 'id="panel-broken-error"' in html
    assert "the panel&#39;s database is gone" in html or "the panel's database is gone" in html
    assert 'id="panel-extras"' in html


async def test_hook_agent_panels(extras_hive):
    with trio.fail_after(20):
        page = (await operator(extras_hive).get("/agent/worker/")).body.decode()
        refreshed = (await operator(extras_hive).get("/-/web/agents/worker/panels/extras-agent")).json()
    assert 'id="panel-extras-agent"' in page
    assert "<p>about worker</p>" in page
    assert "<p>about worker</p>" in refreshed["html"]


async def test_plugin_routes_are_mounted_behind_the_guard(extras_hive):
    http = operator(extras_hive)
    browser, _ = await browser_session(extras_hive)
    with trio.fail_after(20):
        hello = await http.get("/-/extras/hello/you")
        stats = await http.get("/api/stats")
        text = await http.get("/extras.txt")
        anonymous = await browser.get("/-/extras/hello/you", headers={"Cookie": None})
        anonymous_public = await browser.get("/extras.txt", headers={"Cookie": None})
        refused = await http.post("/-/extras/fail")
        no_csrf = await browser.post("/-/extras/fail")
    assert hello.json() == {"hello": "you", "agents": ["manager", "worker"]}
    assert stats.json() == {"series": []}
    assert (text.status, text.body) == (200, b"extras")
    assert anonymous.status == 401
    # A public path is behind the login too, and answers as an API: 401 in JSON, not the login page.
    assert (anonymous_public.status, anonymous_public.json()) == (401, anonymous.json())
    assert (refused.status, refused.json()) == (400, {"error": "extras refuses, and says why"})
    assert no_csrf.status == 403


async def test_plugin_slash_commands_run_from_the_input_line(extras_hive, extras):
    http = operator(extras_hive)
    with trio.fail_after(20):
        shout = await http.post("/-/web/agents/worker/slash", {"line": "/shout  hello there "})
        unknown = await http.post("/-/web/agents/worker/slash", {"line": "/whisper"})
        page = (await http.get("/agent/worker/")).body.decode()
    assert shout.json() == {"command": "shout", "text": "worker: HELLO THERE!"}
    assert extras.calls == [("worker", "hello there")]
    assert unknown.status == 400
    assert unknown.json()["error"] == (
        "unknown command '/whisper'; the commands are /cancel, /model, /shout (/help says what each does)"
    )
    assert "say it loudly" in page


TEMPLATED = """
from quart import render_template

from hyperhive_core import Panel, hookimpl

SHOUTED = "<script>alert(1)</script>"


@hookimpl
def register_routes(register):
    async def page(hive):
        return await render_template("tpl/page.jinja", agents=[SHOUTED, *(agent.name for agent in hive.agents)])

    register("/-/tpl/page", page)


@hookimpl
def dashboard_panels(hive):
    return [Panel("tpl", "TPL", "templated", template="tpl/panel.html", context={"who": SHOUTED})]


@hookimpl
def agent_panels(hive, agent):
    return [Panel("tpl-agent", "TPL", "templated", template="tpl/nowhere.html", context={"agent": agent})]
"""


@pytest.fixture
def templated(tmp_path, monkeypatch):
    """A plugin package with its templates beside it, loaded from its files as pip would."""
    package = tmp_path / "hyperhive_tpl"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text(TEMPLATED)
    (package / "templates" / "panel.html").write_text('<p class="tpl">hello, {{ who }}</p>\n')
    # Not .html: a plugin's template is autoescaped whatever its name.
    (package / "templates" / "page.jinja").write_text(
        "<ul>{% for name in agents %}<li>{{ name }}</li>{% endfor %}</ul>"
    )
    spec = importlib.util.spec_from_file_location("hyperhive_tpl", package / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "hyperhive_tpl", module)
    spec.loader.exec_module(module)
    return module


async def test_a_panel_and_a_page_from_a_plugins_templates_escape_what_they_show(tmp_path, make_pm, templated):
    async with dashboard_hive(tmp_path, make_pm(web=hyperhive_web, tpl=templated)) as hive:
        http = operator(hive)
        with trio.fail_after(20):
            host = (await http.get("/")).body.decode()
            refreshed = (await http.get("/-/web/panels/tpl")).json()
            page = await http.get("/-/tpl/page")
    assert '<p class="tpl">hello, &lt;script&gt;alert(1)&lt;/script&gt;</p>' in host
    assert "<script>alert(1)</script>" not in host
    assert "hello, &lt;script&gt;" in refreshed["html"]
    assert page.status == 200
    assert (
        page.body.decode() == "<ul><li>&lt;script&gt;alert(1)&lt;/script&gt;</li><li>manager</li><li>worker</li></ul>"
    )


async def test_a_missing_panel_template_is_an_error_panel_that_says_where_it_looked(tmp_path, make_pm, templated):
    async with dashboard_hive(tmp_path, make_pm(web=hyperhive_web, tpl=templated)) as hive:
        with trio.fail_after(20):
            page = await operator(hive).get("/agent/worker/")
    html = page.body.decode()
    where = tmp_path / "hyperhive_tpl" / "templates" / "nowhere.html"
    assert page.status == 200
    assert 'id="panel-tpl-error"' in html
    assert 'id="panel-tpl-agent"' not in html
    assert f"the tpl plugin&#39;s template &#39;tpl/nowhere.html&#39; is missing: there is no {where}" in html


def test_a_route_outside_the_plugins_prefix_is_refused(make_pm):
    class Squatter:
        @hookimpl
        def register_routes(self, register):
            register("/api/state", lambda hive: {})

    with pytest.raises(PluginError, match=r"plugin 'squatter' registers the route '/api/state'; .* /-/squatter/"):
        collect_routes(make_pm(squatter=Squatter()))


@pytest.mark.parametrize(
    ("rule", "public", "error"),
    [
        ("/-/squatter/page", True, "a public route is a path of its own starting with '/', outside /-/"),
        ("metrics", True, "a public route is a path of its own starting with '/'"),
        ("/-/other/page", False, "plugin routes live under /-/squatter/, or, for a path of its own, .* public=True"),
        ("/metrics", "yes", "public must be True or False, not 'yes'"),
    ],
)
def test_a_route_must_say_where_it_lives(make_pm, rule, public, error):
    class Squatter:
        @hookimpl
        def register_routes(self, register):
            register(rule, lambda hive: {}, public=public)

    with pytest.raises(PluginError, match=error):
        collect_routes(make_pm(squatter=Squatter()))


@pytest.mark.parametrize(
    ("rule", "shadowed"),
    [
        ("/api/state", "/api/state"),
        ("/agent/<name>/", "/agent/<name>/"),
        ("/api/agents/<name>/<any(cancel, stop):action>", "/api/agents/<name>/<any(cancel, rebuild):action>"),
        ("/static/<path:file>", "/static/<path:filename>"),
        ("/login", "/login"),
    ],
)
async def test_a_public_route_that_would_shadow_the_dashboards_own_stops_the_hive_at_startup(
    tmp_path, make_pm, rule, shadowed
):
    class Squatter:
        @hookimpl
        def register_routes(self, register):
            register(rule, lambda hive, **variables: {}, public=True)

    message = (
        f"plugin 'squatter' registers the public route {rule!r}, which would shadow the dashboard's own route "
        f"{shadowed!r}; give it another path, or drop public=True to put it under /-/squatter/"
    )
    refused = pytest.RaisesExc(PluginError, match=f"^{re.escape(message)}$")
    with trio.fail_after(30), pytest.RaisesGroup(refused, flatten_subgroups=True):
        async with dashboard_hive(tmp_path, make_pm(web=hyperhive_web, squatter=Squatter())):
            pass


def test_two_plugins_claiming_a_route_or_a_command_are_named(make_pm):
    class One:
        @hookimpl
        def register_routes(self, register):
            register("/metrics", lambda hive: "")

        @hookimpl
        def register_slash_commands(self, register):
            register("model", lambda hive, agent, args: "")

    class Two:
        @hookimpl
        def register_routes(self, register):
            register("/metrics", lambda hive: "")

    with pytest.raises(PluginError, match="route 'GET /metrics' is registered by both"):
        collect_routes(make_pm(one=One(), two=Two()))
    with pytest.raises(PluginError, match="slash command 'model' is registered by both 'web' and 'one'"):
        collect_slash_commands(make_pm(web=hyperhive_web, one=One()))


def test_a_slash_command_needs_a_plain_name(make_pm):
    class Odd:
        @hookimpl
        def register_slash_commands(self, register):
            register("Shout!", lambda hive, agent, args: "")

    with pytest.raises(PluginError, match="slash command 'Shout!' is not a valid name"):
        collect_slash_commands(make_pm(odd=Odd()))
