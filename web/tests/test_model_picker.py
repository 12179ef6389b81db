"""The agent page's model picker: the known models, another typed in, the switch made as /model makes it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from webkit import dashboard_hive, screenshot

from hyperhive_core import HyperhiveError, check_model, known_models
from hyperhive_core.testing import needs_claude

PHONE = {"width": 390, "height": 844}


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def test_known_models_are_the_aliases_then_the_allowed_extras_each_valid():
    names = known_models(["house-model", "sonnet"])
    assert names[:3] == ["haiku", "sonnet", "opus"]
    assert names[-1] == "house-model"
    assert len(names) == len(set(names))  # an extra that is an alias is listed once
    for name in names:
        assert check_model(name, ["house-model"]) == name
    assert "house-model" not in known_models()
    with pytest.raises(HyperhiveError):
        check_model("house-model")


@needs_claude
@pytest.mark.slow
async def test_the_picker_switches_the_model_and_the_next_turn_uses_it(tmp_path, web_pm, browser):
    async with dashboard_hive(tmp_path, web_pm, claude={"extra_models": ["house-model"]}) as hive:
        from hyperhive_web import dashboard_of

        dashboard = dashboard_of(hive)
        page = await browser.page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        def open_page() -> None:
            page.set_viewport_size(PHONE)
            page.goto(f"{dashboard.url}/login?token={dashboard.token}&next=/agent/worker/")
            page.wait_for_selector("#link.live")

        def listed() -> list[str]:
            return page.locator("#model-choice option").evaluate_all("options => options.map((o) => o.value)")

        def pick(model: str, custom: str | None = None) -> None:
            page.select_option("#model-choice", model)
            if custom is not None:
                expect(page.locator("#model-custom")).to_be_visible()
                page.fill("#model-custom", custom)
            page.click("#model-switch")

        def switch_to_sonnet() -> None:
            # The running model selected, every known one listed, and a way to type another.
            expect(page.locator("#model-choice")).to_have_value("haiku")
            expect(page.locator("#model-choice option:checked")).to_have_text("haiku (running)")
            assert listed() == [*known_models(["house-model"]), ""]
            expect(page.locator("#model-custom")).to_be_hidden()
            expect(page.locator("#model-rule")).to_contain_text("claude-sonnet-4-5")
            pick("sonnet")
            expect(page.locator(".toast", has_text="model is now sonnet").first).to_be_visible()
            expect(page.locator("#tail .ev.note", has_text="model switched to sonnet")).to_be_visible()
            expect(page.locator("#model")).to_contain_text("model sonnet")
            expect(page.locator("#model-choice")).to_have_value("sonnet")
            expect(page.locator("#model-choice option:checked")).to_have_text("sonnet (running)")
            screenshot(page, "model-picker")

        def say(text: str) -> None:
            page.fill("#line", text)
            page.press("#line", "Enter")
            expect(page.locator(".toast", has_text="sent #").first).to_be_visible()

        def switch_to_a_custom_name() -> None:
            expect(page.locator("#badge")).to_have_text("idle", timeout=30_000)  # else the switch is queued
            pick("", "house-model")
            expect(page.locator(".toast", has_text="model is now house-model").first).to_be_visible()
            expect(page.locator("#tail .ev.note", has_text="model switched to house-model")).to_be_visible()
            expect(page.locator("#model-custom")).to_be_hidden()  # the picker is back on the running model
            expect(page.locator("#model-choice")).to_have_value("house-model")

        def refused(custom: str, says: str) -> None:
            pick("", custom)
            expect(page.locator("#model-error")).to_be_visible()
            expect(page.locator("#model-error")).to_contain_text(says)
            expect(page.locator(".toast.error")).to_have_count(0)  # said under the field, where it is not in the way
            expect(page.locator("#model")).to_contain_text("model house-model")

        def bad_names() -> None:
            refused("--dangerously-skip-permissions", "it must start with a letter or digit and use only letters")
            screenshot(page, "model-picker-refused")
            page.fill("#model-custom", "house model")
            expect(page.locator("#model-error")).to_be_hidden()  # typing again clears the old complaint
            page.click("#model-switch")
            expect(page.locator("#model-error")).to_contain_text("is not valid")
            refused("gpt-4", "unknown model 'gpt-4'; use an alias (haiku, sonnet")
            expect(page.locator("#model-error")).to_contain_text('extra_models = ["gpt-4"]')
            page.fill("#model-custom", "")
            page.click("#model-switch")
            expect(page.locator("#model-error")).to_have_text(
                "type the name of the model to switch to, or choose one from the list"
            )

        def queued_during_a_turn() -> None:
            say("slow")
            expect(page.locator("#badge")).to_have_text("thinking")
            pick("opus")
            expect(page.locator(".toast", has_text="model opus queued").first).to_be_visible()
            expect(page.locator("#model .queued")).to_have_text("→ opus queued")
            expect(page.locator("#model-choice")).to_have_value("house-model")  # still the running one
            page.click("#cancel")
            expect(page.locator("#tail .ev.note", has_text="model switched to opus")).to_be_visible()
            expect(page.locator("#model-choice")).to_have_value("opus")
            expect(page.locator("#model-choice option:checked")).to_have_text("opus (running)")

        async def next_turn_runs(model: str) -> str:
            mark = hive.rehearsal.request_count
            await browser.run(say, f"which model, after {model}?")
            with trio.fail_after(60):
                request = await hive.rehearsal.wait_for_request(lambda r: r.agent == "worker", after=mark)
            return request.body["model"]

        with trio.fail_after(180):
            await browser.run(open_page)
            await browser.run(switch_to_sonnet)
            assert hive.agents.get("worker").status.model == "sonnet"
            sent = await next_turn_runs("sonnet")
            assert "sonnet" in sent, sent  # the CLI resolves the alias to a full sonnet id
            await browser.run(switch_to_a_custom_name)
            assert await next_turn_runs("house-model") == "house-model"
            await browser.run(bad_names)
            await browser.run(queued_during_a_turn)
        assert hive.agents.get("worker").status.model == "opus"
        assert errors == []
