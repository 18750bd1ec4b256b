"""The operator's controls on the admin page (issue 13), in Debian's chromium
driven by Playwright, against the session's Kylon on SQLite and MariaDB: an
agent's and a key's limits set from the page and seen in the admin API and
the audit log under the operator's name; who is near a limit after calls
through the openai SDK; the top spenders."""

import datetime
import json
import re
from decimal import Decimal

from playwright.sync_api import expect

from .test_admin_pages import browser, log_in, page, sdk, unique  # noqa: F401 (browser, page: the fixtures)

MESSAGES = [{"role": "user", "content": "Say hi"}]


def spend(kylon, key, prompt_tokens):
    """One gpt-4o-mini call whose upstream reports `prompt_tokens` (0.15 credits a million), waited for
    until its usage record (and so the rollups the pages read) is written."""
    raw = sdk(kylon, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps({"prompt_tokens": prompt_tokens})},
    )
    raw.parse()
    return kylon.usage(raw.headers["x-kylon-request-id"])


def audit_rows(page, kylon, **filters):
    page.goto(kylon.url + "/admin/audit?" + "&".join(f"{k}={v}" for k, v in filters.items()))
    return page.locator("#audit tbody tr")


def test_agent_controls_from_the_page(page, kylon):
    agent = kylon.create_agent("5", name=unique("controlled"))
    log_in(page, kylon, who="Hedy")
    page.goto(f"{kylon.url}/admin/agents/{agent['id']}")
    form = page.locator("#agent-controls")
    form.locator("input[name=rpm_limit]").fill("120")
    form.locator("input[name=tpm_limit]").fill("50000")
    form.locator("input[name=concurrency_limit]").fill("3")
    form.locator("textarea[name=allowed_models]").fill("gpt-4o*\nclaude-*-haiku-*\n")
    form.locator("input[name=alert_thresholds]").fill("20%, 5")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text("Controls saved.")
    shown = kylon.admin("GET", f"/agents/{agent['id']}").json()
    assert (shown["rpm_limit"], shown["tpm_limit"], shown["concurrency_limit"]) == (120, 50000, 3)
    assert shown["allowed_models"] == ["claude-*-haiku-*", "gpt-4o*"]
    assert shown["alert_thresholds"] == ["20%", "5"]
    # The form shows what is in force.
    expect(form.locator("input[name=rpm_limit]")).to_have_value("120")
    expect(form.locator("textarea[name=allowed_models]")).to_have_value("claude-*-haiku-*\ngpt-4o*")
    expect(form.locator("input[name=alert_thresholds]")).to_have_value("20%, 5")

    # The agent's audit trail and the audit log: who, and each field before → after.
    newest = page.locator("#agent-audit tbody tr").first
    expect(newest.locator(".actor")).to_have_text("Hedy")
    expect(newest.locator("li[data-field=rpm_limit]")).to_have_text("rpm_limit: — → 120")
    expect(newest.locator("li[data-field=allowed_models]")).to_have_text("allowed_models: — → claude-*-haiku-*, gpt-4o*")
    rows = audit_rows(page, kylon, subject="agent", subject_id=agent["id"], actor="Hedy")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-action", "agent.update")
    expect(rows.first.locator("li[data-field=tpm_limit]")).to_have_text("tpm_limit: — → 50000")
    api = kylon.admin("GET", "/audit", params={"subject": "agent", "subject_id": agent["id"]}).json()["data"]
    assert api[0]["actor"] == "Hedy" and api[0]["changes"]["concurrency_limit"] == [None, 3]

    # A value Kylon does not take: the admin function's 400, shown as the pages show errors.
    page.goto(f"{kylon.url}/admin/agents/{agent['id']}")
    form.locator("input[name=rpm_limit]").fill("lots")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash-error")).to_contain_text("'rpm_limit' must be a whole number")
    assert kylon.admin("GET", f"/agents/{agent['id']}").json()["rpm_limit"] == 120
    # Emptied fields: no limit.
    for name in ("rpm_limit", "tpm_limit", "concurrency_limit"):
        form.locator(f"input[name={name}]").fill("")
    form.locator("textarea[name=allowed_models]").fill("")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text("Controls saved.")
    shown = kylon.admin("GET", f"/agents/{agent['id']}").json()
    assert shown["rpm_limit"] is None and shown["allowed_models"] == [] and shown["alert_thresholds"] == ["20%", "5"]


def test_key_limits_at_creation_and_from_its_edit_page(page, kylon):
    agent = kylon.create_agent("5", name=unique("limited"))
    log_in(page, kylon, who="Alan")
    page.click("nav >> text=Keys")
    form = page.locator("#create-key")
    form.locator("select[name=agent_id]").select_option(str(agent["id"]))
    form.locator("input[name=name]").fill("capped")
    form.locator("input[name=credit_limit]").fill("2.5")
    form.locator("select[name=limit_reset]").select_option("daily")
    form.locator("input[name=rpm_limit]").fill("30")
    form.locator("textarea[name=allowed_models]").fill("gpt-4o-mini")
    form.locator("button[type=submit]").click()
    expect(page.locator("#new-key-limits dd[data-field=credit_limit]")).to_have_text("$2.50 a period (daily)".replace("$", ""))
    expect(page.locator("#new-key-limits dd[data-field=rate_limits]")).to_have_text("30 rpm")
    (key_id,) = [k["id"] for k in kylon.admin("GET", "/keys", params={"agent_id": agent["id"]}).json()["data"]]
    shown = kylon.admin("GET", f"/keys/{key_id}").json()
    assert (shown["credit_limit"], shown["limit_reset"], shown["rpm_limit"]) == ("2.500000000", "daily", 30)
    assert shown["allowed_models"] == ["gpt-4o-mini"]

    # The keys table: spent this period / the limit, when it resets, rate limits, models.
    plain = kylon.create_key(agent["id"], name="no limits")
    page.goto(kylon.url + "/admin/keys")
    plain_row = page.locator(f"tr[data-key-id='{plain['id']}']")
    expect(plain_row.locator(".credit-limit")).to_have_text("none")
    expect(plain_row.locator(".rate-limits")).to_have_text("—")
    expect(plain_row.locator(".models")).to_have_text("any")
    row = page.locator(f"tr[data-key-id='{key_id}']")
    tomorrow = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    expect(row.locator(".credit-limit")).to_contain_text("0.00 / 2.50")
    expect(row.locator(".credit-limit")).to_contain_text(f"daily, resets {tomorrow} 00:00:00")
    expect(row.locator(".rate-limits")).to_have_text("30 rpm")
    expect(row.locator(".models .tag")).to_have_text("gpt-4o-mini")

    # The edit page: name, expiry and limits.
    row.locator("a.edit").click()
    expect(page).to_have_url(f"{kylon.url}/admin/keys/{key_id}")
    edit = page.locator("#edit-key")
    expect(edit.locator("input[name=credit_limit]")).to_have_value("2.5")
    expect(edit.locator("select[name=limit_reset]")).to_have_value("daily")
    edit.locator("input[name=name]").fill("capped monthly")
    edit.locator("input[name=expires_at]").fill("2999-01-31 23:59")
    edit.locator("input[name=credit_limit]").fill("1")
    edit.locator("select[name=limit_reset]").select_option("monthly")
    edit.locator("input[name=rpm_limit]").fill("")
    edit.locator("input[name=concurrency_limit]").fill("2")
    edit.locator("button[type=submit]").click()
    expect(page.locator(".flash")).to_have_text(re.compile(r"^Key pak_\w+… saved\.$"))
    shown = kylon.admin("GET", f"/keys/{key_id}").json()
    assert (shown["name"], shown["expires_at"], shown["credit_limit"], shown["limit_reset"]) == (
        "capped monthly", "2999-01-31T23:59:00Z", "1.000000000", "monthly")
    assert shown["rpm_limit"] is None and shown["concurrency_limit"] == 2 and shown["allowed_models"] == ["gpt-4o-mini"]
    expect(edit.locator("input[name=expires_at]")).to_have_value("2999-01-31 23:59")
    trail = page.locator("#key-audit tbody tr")
    expect(trail).to_have_count(2)  # created, then edited
    expect(trail.first.locator(".actor")).to_have_text("Alan")
    expect(trail.first.locator("li[data-field=credit_limit]")).to_have_text("credit_limit: 2.500000000 → 1.000000000")
    expect(trail.nth(1)).to_have_attribute("data-action", "key.create")

    # The audit log page, filtered by the key, links back to it.
    rows = audit_rows(page, kylon, subject="key", subject_id=key_id)
    expect(rows).to_have_count(2)
    expect(rows.first.locator("li[data-field=limit_reset]")).to_have_text("limit_reset: daily → monthly")
    expect(rows.first.locator(".actor")).to_have_text("Alan")
    rows.first.locator(f"a[href='/admin/keys/{key_id}']").click()
    expect(page.locator("h1")).to_contain_text("capped monthly")

    page.locator("#edit-key input[name=credit_limit]").fill("-1")
    page.locator("#edit-key button[type=submit]").click()
    expect(page.locator(".flash-error")).to_have_text("'credit_limit' must not be negative.")
    assert kylon.admin("GET", f"/keys/{key_id}").json()["credit_limit"] == "1.000000000"


def test_near_a_limit_after_spending(page, kylon, fake_openai):
    # 10 credits, an alert at 95% of them (9.50); a key allowed 1.00 a month.
    agent = kylon.create_agent("10", name=unique("nearly"))
    kylon.admin("PATCH", f"/agents/{agent['id']}", json={"alert_thresholds": "95%"})
    key = kylon.create_key(agent["id"], name="capped", credit_limit="1", limit_reset="monthly")
    log_in(page, kylon)
    page.goto(f"{kylon.url}/admin/agents?q={agent['name']}")
    row = page.locator(f"#agents tr[data-agent-id='{agent['id']}']")
    expect(row).to_be_visible()
    expect(row.locator("td.near")).to_have_text("")
    expect(row).not_to_have_attribute("data-near", "1")

    record = spend(kylon, key["key"], 6_000_000)  # 0.90 credits: 90% of the key's limit
    assert Decimal("0.89") < Decimal(record["credits"]) < Decimal("0.91")
    page.goto(f"{kylon.url}/admin/agents?near=1&q={agent['name']}")
    expect(row).to_have_attribute("data-near", "1")
    expect(row.locator("td.near .badge")).to_have_text("near")
    expect(row.locator("td.near")).to_contain_text("balance at or below its alert threshold of 9.5")
    expect(row.locator("td.near")).to_contain_text(f"key {key['prefix']}… has used 90% of its credit limit")
    expect(page.locator(".hint")).to_contain_text("80% or more of its credit limit this period")
    page.goto(f"{kylon.url}/admin/agents/{agent['id']}")
    keys_row = page.locator(f"table.keys tr[data-key-id='{key['id']}']")
    expect(keys_row).to_have_attribute("data-near", "1")
    expect(keys_row.locator(".credit-limit .badge")).to_have_text("90%")
    expect(keys_row.locator(".credit-limit")).to_contain_text("0.90 / 1.00")


def test_top_spenders(page, kylon, fake_openai):
    # Far above what the other tests spend, so both are among the 20 largest.
    big, small = (kylon.create_agent("1000", name=unique(n)) for n in ("big-spender", "small-spender"))
    big_key, small_key = (kylon.create_key(a["id"], name=unique("key")) for a in (big, small))
    spend(kylon, small_key["key"], 1_000_000_000)  # 150 credits
    spend(kylon, big_key["key"], 2_000_000_000)  # 300 credits
    log_in(page, kylon)
    page.click("nav >> text=Agents")
    page.click("#near-filter >> text=top spenders")
    for range_name in ("today", "7d", "30d"):
        page.click(f"#spend-range >> text={range_name}")
        expect(page.locator("#spend-range a[aria-current=page]")).to_have_text(range_name)
        agents = page.locator("#top-agents tbody tr").evaluate_all("rows => rows.map(r => +r.dataset.agentId)")
        assert agents.index(big["id"]) < agents.index(small["id"]), agents
        keys = page.locator("#top-keys tbody tr").evaluate_all("rows => rows.map(r => +r.dataset.keyId)")
        assert keys.index(big_key["id"]) < keys.index(small_key["id"]), keys
    big_row = page.locator(f"#top-keys tr[data-key-id='{big_key['id']}']")
    expect(big_row).to_contain_text(big["name"])
    expect(big_row).to_contain_text(big_key["prefix"])
    expect(page.locator(f"#top-agents tr[data-agent-id='{big['id']}'] .money").last).to_have_text("300.00")
    page.locator(f"#top-agents tr[data-agent-id='{big['id']}'] td.num a").click()
    expect(page).to_have_url(re.compile(rf"/admin/usage\?.*agent_id={big['id']}"))
    expect(page.locator("#total-requests")).to_have_text("1")


def test_audit_log_page_filters_and_pages(page, kylon):
    agent = kylon.create_agent("1", name=unique("paged"))
    for n in range(52):
        kylon.admin("PATCH", f"/agents/{agent['id']}", json={"rpm_limit": 100 + n})
    log_in(page, kylon)
    page.click("nav >> text=Audit")
    expect(page.locator(".top nav a[aria-current=page]")).to_have_text("Audit")
    filters = page.locator("#audit-filters")
    filters.locator("select[name=subject]").select_option("agent")
    filters.locator("input[name=subject_id]").fill(str(agent["id"]))
    filters.locator("input[name=actor]").fill("admin api")
    filters.locator("button[type=submit]").click()
    rows = page.locator("#audit tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first.locator("li[data-field=rpm_limit]")).to_have_text("rpm_limit: 150 → 151")
    page.click("#audit-older")
    expect(rows).to_have_count(3)  # two updates and the creation, oldest last
    expect(rows.last).to_have_attribute("data-action", "agent.create")
    expect(page.locator("#audit-older")).to_have_count(0)
    page.click("#audit-newest")
    expect(rows).to_have_count(50)
    filters.locator("input[name=actor]").fill("nobody")
    filters.locator("button[type=submit]").click()
    expect(page.locator("text=No changes match this filter.")).to_be_visible()
