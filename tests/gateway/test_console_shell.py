"""The console's shell: served by the gateway with its security headers, signed in with a token
(whose tenant and role come from GET /v1/whoami), and a bad token told apart."""

from __future__ import annotations

from console_support import assert_accessible
from gateway_support import Api, Tenant
from playwright.async_api import Page, expect


async def test_whoami_tells_the_tokens_tenant_role_and_user(api: Api, tenant: Tenant) -> None:
    me = (await api.call("GET", "/v1/whoami", token=tenant.viewer)).ok(200)
    assert me["tenant"] == tenant.name
    assert me["role"] == "viewer"
    assert (await api.call("GET", "/v1/whoami", token=tenant.admin)).ok(200)["role"] == "admin"
    (await api.call("GET", "/v1/whoami")).problem(401)
    (await api.call("GET", "/v1/whoami", token="not-a-token-at-all-but-long-enough")).problem(401)


async def test_the_console_is_served_same_origin_with_its_security_headers(api: Api) -> None:
    async with api.session.get(api.url + "/", allow_redirects=False) as root:
        assert root.status == 302
        assert root.headers["Location"] == "/console/"
    page = await api.call("GET", "/console/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = await api.call("GET", "/console/app.js")
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    again = await api.call("GET", "/console/app.js", headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304
    (await api.call("GET", "/console/no-such-file.js")).problem(404)
    (await api.call("GET", "/console/../context.py")).problem(404)
    (await api.call("GET", "/console/%2e%2e/context.py")).problem(404)


async def test_sign_in_shows_tenant_and_role_and_a_bad_token_is_refused(console_page: Page, tenant: Tenant) -> None:
    page = console_page
    await page.goto("/console/")
    await expect(page.get_by_role("heading", name="Sign in to Trellis")).to_be_visible()
    await assert_accessible(page, "the sign-in page")
    await page.get_by_label("API token").fill("tr_not-a-real-token-0000000000000000")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not known")
    await page.get_by_label("API token").fill(tenant.operator)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_contain_text(tenant.name)
    await expect(page.locator("#who .role")).to_have_text("operator")
    assert tenant.operator not in page.url  # never in a URL
    assert await page.evaluate("sessionStorage.getItem('trellis.token')") == tenant.operator
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in to Trellis")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('trellis.token')") is None
