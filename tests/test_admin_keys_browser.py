"""The admin page's client keys panel in headless Chromium (issue 15): lists
config and minted keys with limits, rate and spend against the budget,
creates a key (its secret shown once), revokes it with the button; the
minted key is used and refused by the OpenAI SDK in between.  Leaves a
screenshot in tests/artifacts/admin-keys.png.  Skipped without Chromium."""
from __future__ import annotations

import openai
import pytest

from busbar.mock import MockVendor
from clients import openai_chat
from harness import gateway_with, sdk
from test_admin_browser import ARGS, ARTIFACTS, CHROMIUM, _requirements

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_KEY = "admin-secret-panel"


def config(db):
    return {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o",
                                         "price": {"input": 2.5, "output": 10.0}}]},
                  "cheap": {"members": [{"provider": "oai", "model": "gpt-4o-mini"}]}},
        "auth": {"keys": [{"id": "team-a", "key": "config-secret-a", "limits": {"rpm": 600},
                           "budget": {"usd": 1, "period": "month"}}], "keys_db": str(db)},
        "admin": {"enabled": True, "key": ADMIN_KEY, "usage_db": "off"},
    }


async def test_keys_panel_lists_creates_and_revokes(tmp_path):
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    seen: dict = {}
    async with gateway_with(config(tmp_path / "keys.sqlite"), a=MockVendor(reply="hi")) as gw:
        await sdk(lambda: openai_chat(gw.url, "smart", "spend something", api_key="config-secret-a"))
        url = f"{gw.url}/admin?key={ADMIN_KEY}"

        def browse() -> None:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 1100})
                    errors: list[str] = []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.on("dialog", lambda d: d.accept())
                    page.goto(url)
                    page.wait_for_selector('#client-keys tr[data-key="team-a"]', timeout=10_000)
                    seen["config_row"] = page.inner_text('#client-keys tr[data-key="team-a"]')
                    # a bad pool: the API's error shows, nothing is created
                    page.fill("#ck-form input[name=pools]", "nope")
                    page.click("#ck-create")
                    page.wait_for_selector("#ck-error:has-text(\"no pool 'nope'\")", timeout=10_000)
                    page.fill("#ck-form input[name=id]", "ui-1")
                    page.fill("#ck-form input[name=pools]", "smart")
                    page.fill("#ck-form input[name=rpm]", "100")
                    page.fill("#ck-form input[name=usd]", "5")
                    page.click("#ck-create")
                    page.wait_for_selector("#ck-new-secret", timeout=10_000)
                    secret = seen["secret"] = page.inner_text("#ck-new-secret")
                    page.wait_for_selector('#client-keys tr[data-key="ui-1"]', timeout=10_000)
                    assert openai_chat(gw.url, "smart", "x", api_key=secret) == "hi"     # works at once
                    # the next polls show its rate and its spend against the budget
                    page.wait_for_function("() => { const c = document.querySelector("
                                           "'#client-keys tr[data-key=\"ui-1\"] .rate'); "
                                           "return c && parseFloat(c.textContent) > 0; }", timeout=10_000)
                    seen["minted_row"] = page.inner_text('#client-keys tr[data-key="ui-1"]')
                    page.click("#ck-secret button")          # dismissed: the screenshot holds no secret
                    page.screenshot(path=str(ARTIFACTS / "admin-keys.png"), full_page=True)
                    page.click('#client-keys tr[data-key="ui-1"] button.revoke')
                    page.wait_for_selector('#client-keys tr[data-key="ui-1"] :text("revoked")', timeout=10_000)
                    try:
                        openai_chat(gw.url, "smart", "x", api_key=secret)
                        seen["after_revoke"] = "accepted"
                    except openai.AuthenticationError:
                        seen["after_revoke"] = "refused"
                    page.reload()
                    page.wait_for_selector('#client-keys tr[data-key="ui-1"]', timeout=10_000)
                    seen["reloaded"] = page.content()
                    seen["errors"] = errors
                finally:
                    browser.close()

        import trio
        await trio.to_thread.run_sync(browse)
        served = (await __import__("httpx").AsyncClient().get(url)).text
    assert "rpm 600" in seen["config_row"] and "$" in seen["config_row"] and "per month" in seen["config_row"]
    assert "minted" in seen["minted_row"] and "rpm 100" in seen["minted_row"] and "/ $5" in seen["minted_row"]
    assert seen["after_revoke"] == "refused"
    assert seen["secret"].startswith("bb-")
    for text in (seen["reloaded"], served):            # the secret was shown once, never again
        assert seen["secret"] not in text and "config-secret-a" not in text
    # the one console error is Chromium logging the deliberately refused POST (400)
    assert [e for e in seen["errors"] if "status of 400" not in e] == []
