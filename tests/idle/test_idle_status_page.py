"""The status page's idle warning and cost panel, in headless Chromium through the desktop role's nginx, with
the real agent behind it: a desktop nobody touches goes idle, the banner counts down, its button postpones."""

from __future__ import annotations

import pytest

from tests.support.desktop import DesktopStack, browser_context

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory):
    marker = tmp_path_factory.mktemp("poweroff") / "powered-off"
    desktop = DesktopStack(tmp_path_factory.mktemp("desktop-idle"))
    desktop.agent_sections = {
        "idle": {
            "gpu_util_pct": 50,  # the stand-in GPU (tests/support/nvml_boundary) runs at 37 %
            "xauthority": str(desktop.home / ".Xauthority"),  # the session's, as vncserver writes it
            "action": "poweroff",
            "window_min": 0.05,  # 3 s
            "grace_min": 30,
            "check_interval_s": 0.5,
            "cpu_pct": 1000,  # other tests load this machine: CPU is not the signal under test here
            "input_idle_min": 0.02,  # the desktop counts as untouched after ~1 s
            "utmp_file": str(marker.parent / "no-utmp"),
            "poweroff_command": f"touch {marker}",
        },
        "usage": {"price_per_hour": 1.212, "interval_s": 0.5},
    }
    try:
        desktop.start()
        yield desktop, marker
    finally:
        desktop.stop()


def test_banner_counts_down_and_keep_running_postpones(idle_stack):
    stack, marker = idle_stack
    url = f"https://127.0.0.1:{stack.https_port}/status/"
    with browser_context(stack.login) as context:
        page = context.new_page()
        page.goto(url)
        try:
            page.wait_for_selector("#idle-banner:not([hidden])", timeout=60000)
        except Exception:
            raise AssertionError(stack.agent.get("/v1/idle").text) from None
        text = page.locator("#idle-banner-text").inner_text()
        assert text.startswith("Nothing has used this instance for a while: poweroff in about ")
        minutes = int(text.rsplit("about ", 1)[1].split(" ")[0])
        assert 28 <= minutes <= 30
        assert page.locator("#idle-decision").inner_text() == "warn"

        page.click("#keep-running")
        page.wait_for_selector("#idle-banner", state="hidden", timeout=20000)
        state = stack.agent.get("/v1/idle").json()
        assert state["postponed_until"] is not None and state["decision"]["decision"] == "stay"
        assert any(
            h["decision"] == "warn" for h in state["decision"]["history"]
        )  # the warning was decided, and logged, before the click
        assert "idle decision: warn" in (stack.root / "agent" / "agent.log").read_text()

        # the cost panel: today's row, its cost from the agent's own figures
        page.wait_for_selector("#usage tr.usage-day", timeout=20000)
        usage = stack.agent.get("/v1/usage").json()
        assert page.locator("#usage .usage-day th").first.inner_text() == usage["days"][-1]["date"]
        assert "$1.21/h instance" in page.locator("#usage").inner_text()
        assert page.locator("#usage-saved").inner_text().startswith("Idle stops: 0, saved $0.00")
        assert not marker.exists()
