"""The desktop's web face against hostile pages and password guessers: the role's nginx site for real, with
websockify, TigerVNC, the agent, and Debian's Chromium (driven by Playwright) as the user's browser."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import http.client
import http.server
import re
import ssl
import threading
import time

import pytest
import requests

from agent.desktop.session import server_pid
from tests.support import rfb_client
from tests.support.desktop import (
    SESSION_RGB,
    DesktopStack,
    browser_context,
    colour_fraction,
    log_out_from_the_status_page,
    screenshot,
)

pytestmark = pytest.mark.integration
PAGE = {"X-ScipionCloud-Page": "status"}  # what the status page's own calls carry
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
SUBRESOURCE_FROM_ELSEWHERE = {
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "no-cors",
    "Sec-Fetch-Dest": "script",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    desktop = DesktopStack(tmp_path_factory.mktemp("desktop-web"))
    # The role's burst (400) with a lower rate than its 50/s: a flood outruns 10/s on any machine, however
    # loaded (nginx may check fewer than 50 passwords a second on 2 busy cores), and the browser's page
    # loads in this module (about 350 requests in all) still fit.
    desktop.vars["desktop_nginx_rate"] = "10r/s"
    try:
        desktop.start()
        yield desktop
    finally:
        desktop.stop()


def base(stack: DesktopStack) -> str:
    return f"https://127.0.0.1:{stack.https_port}"


# Each location of the rendered site, with requests that land in it: (path, headers, password?, status).
LOCATION_CASES = {
    "= /": [("/", {}, True, 302)],
    "/": [
        ("/vnc.html", {}, True, 200),
        ("/app/ui.js", {}, True, 200),
        ("/no-such-file", {}, True, 404),
        ("/vnc.html", {}, False, 401),
        ("/app/ui.js", SUBRESOURCE_FROM_ELSEWHERE, True, 403),
    ],
    "= /websockify": [
        ("/websockify", {}, False, 401),
        ("/websockify", {"Origin": "https://elsewhere.example"}, True, 403),
    ],
    "= /status": [("/status", {}, False, 301)],
    "/status/": [
        ("/status/", {}, True, 200),
        ("/status/status.js", {}, True, 200),
        ("/status/", {}, False, 401),
    ],
    "~ ^/status/api/": [
        ("/status/api/v1/desktop", PAGE, True, 200),
        ("/status/api/v1/desktop", {}, True, 403),
        ("/status/api/v1/desktop", PAGE, False, 401),
    ],
}


def test_every_location_keeps_hsts_nosniff_and_refuses_framing(stack):
    # nginx drops the server's add_header lines in a location that has one of its own: ask every location.
    site = (stack.root / "nginx" / "site.conf").read_text()
    https_server = site[site.index(f"listen {stack.https_port} ssl") :]
    locations = re.findall(r"^\s*location\s+(.+?)\s*\{", https_server, re.M)
    untested = [loc for loc in locations if not any(loc.startswith(key) for key in LOCATION_CASES)]
    assert not untested, f"add requests for these locations to LOCATION_CASES: {untested}"
    assert len(locations) == len(LOCATION_CASES)
    cert = str(stack.root / "tls" / "desktop.crt")
    for location, cases in LOCATION_CASES.items():
        for path, headers, with_password, status in cases:
            response = requests.get(
                base(stack) + path,
                headers=headers,
                auth=stack.login if with_password else None,
                verify=cert,
                allow_redirects=False,
                timeout=10,
            )
            where = f"{location}: GET {path} {headers}"
            assert response.status_code == status, f"{where} answered {response.status_code}"
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, f"{where} ({status}) lacks {name}: {value}"


def test_the_desktop_page_and_its_websocket_need_the_password(stack):
    cert = str(stack.root / "tls" / "desktop.crt")
    for path in ("/vnc.html", "/websockify", "/status/"):
        assert requests.get(base(stack) + path, verify=cert, timeout=10).status_code == 401, path
    # A WebSocket handshake as noVNC makes it, without the password: nginx answers before websockify.
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": "binary",
    }
    assert (
        requests.get(base(stack) + "/websockify", headers=upgrade, verify=cert, timeout=10).status_code == 401
    )
    answer = requests.get(
        base(stack) + "/websockify", headers=upgrade, auth=stack.login, verify=cert, timeout=10, stream=True
    )
    assert answer.status_code == 101  # with it, websockify takes the connection
    answer.close()


class HostileSite:
    """Pages on another origin (127.0.0.2, plain HTTP) that try to act on the desktop with whatever the
    browser holds for it."""

    def __init__(self, target: str, wss: str) -> None:
        api = f"{target}/status/api/v1"
        self.pages = {
            "/": f"""<!doctype html><title>elsewhere</title>
<iframe name="sink"></iframe>
<form id="post" method="POST" action="{api}/desktop/logout" target="sink"></form>
<img src="{api}/gpus"><img src="{api}/desktop/logout">
<script src="{target}/status/status.js"></script>
<iframe id="framed" src="{target}/status/"></iframe>
<iframe id="novnc" src="{target}/vnc.html"></iframe>
<script>
const tries = [
  fetch("{api}/desktop/logout", {{method: "POST", mode: "no-cors", credentials: "include"}}),
  fetch("{api}/desktop/logout", {{method: "POST", credentials: "include",
                                  headers: {{"X-ScipionCloud-Page": "status"}}}}),
  fetch("{api}/host", {{mode: "no-cors", credentials: "include"}}),
  new Promise((done) => {{ const ws = new WebSocket("{wss}/websockify", ["binary"]);
                          ws.onopen = ws.onerror = ws.onclose = done; }}),
];
document.getElementById("post").submit();
Promise.allSettled(tries).then(() => {{ document.body.dataset.done = "1"; }});
</script>""",
            "/top": f"""<!doctype html><title>elsewhere</title>
<form id="post" method="POST" action="{api}/desktop/logout"></form>
<script>document.getElementById("post").submit();</script>""",
        }
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostileSite:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


# What the hostile pages make the browser send to the desktop (method, path).
HOSTILE_REQUESTS = {
    ("POST", "/status/api/v1/desktop/logout"),  # form into a frame, no-cors fetch, top-level form
    ("OPTIONS", "/status/api/v1/desktop/logout"),  # the preflight of a fetch with the page's header
    ("GET", "/status/api/v1/gpus"),
    ("GET", "/status/api/v1/desktop/logout"),
    ("GET", "/status/api/v1/host"),
    ("GET", "/status/status.js"),
    ("GET", "/status/"),
    ("GET", "/vnc.html"),
    ("GET", "/websockify"),
}


def from_elsewhere(entries: list[dict[str, str]], origin: str) -> list[dict[str, str]]:
    return [e for e in entries if e.get("site") in ("cross-site", "same-site") or e.get("origin") == origin]


def test_a_page_elsewhere_cannot_act_with_the_browsers_password(stack):
    old = server_pid(stack.display)
    site = HostileSite(base(stack), f"wss://127.0.0.1:{stack.https_port}")
    with site as hostile, browser_context(stack.login) as context:
        # The user has the status page open: the browser holds the desktop's password.
        status = context.new_page()
        status.goto(base(stack) + "/status/")
        status.wait_for_selector("body[data-loaded='1']", timeout=20000)

        page = context.new_page()
        page.goto(hostile.url + "/")
        page.wait_for_selector("body[data-done='1']", timeout=20000)
        top = context.new_page()
        top.goto(hostile.url + "/top")
        deadline = time.monotonic() + 20
        while True:
            seen = {(e["method"], e["uri"]) for e in from_elsewhere(stack.access_log(), hostile.url)}
            if seen >= HOSTILE_REQUESTS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen >= HOSTILE_REQUESTS, f"never sent: {HOSTILE_REQUESTS - seen}"
        top.wait_for_load_state()
        assert "403" in top.content()  # the top-level form POST landed on a refusal

        # Nothing reached the agent or websockify, nothing happened, and no frame shows our pages.
        for entry in from_elsewhere(stack.access_log(), hostile.url):
            assert entry["status"] == "403" and entry["upstream"] == "-", entry
        assert server_pid(stack.display) == old
        for frame in page.frames[1:]:
            assert frame.locator("#logout").count() == 0 and frame.locator("#noVNC_control_bar").count() == 0

        # The user's own page still works, logout included.
        assert (
            status.evaluate(
                "fetch('api/v1/desktop', {headers: {'X-ScipionCloud-Page': 'status'}}).then(r => r.status)"
            )
            == 200
        )
        log_out_from_the_status_page(status)
        assert server_pid(stack.display) not in (None, old)


def novnc_attempts(stack: DesktopStack, login: tuple[str, str], vnc_password: str, times: int) -> list[str]:
    """Open noVNC `times` times in Chromium with this password for nginx and this one for VNC; for each
    try: "refused by nginx", "connected" or noVNC's own error text."""
    outcomes = []
    with browser_context(login) as context:
        for _ in range(times):
            page = context.new_page()
            response = page.goto(stack.novnc_url(vnc_password))
            if response.status == 401:
                outcomes.append("refused by nginx")
            else:
                page.wait_for_function(
                    "document.documentElement.classList.contains('noVNC_connected') ||"
                    " document.getElementById('noVNC_status').classList.contains('noVNC_status_error')",
                    timeout=20000,
                )
                connected = page.evaluate("document.documentElement.classList.contains('noVNC_connected')")
                # textContent: noVNC hides its status after 1.5 s, and a hidden element has no innerText.
                outcomes.append("connected" if connected else page.text_content("#noVNC_status"))
            page.close()
    return outcomes


def guesses(stack: DesktopStack, basic: str, count: int) -> list[int]:
    """`count` requests with this basic-auth value over one kept-alive connection from 127.0.0.3."""
    context = ssl.create_default_context(cafile=str(stack.root / "tls" / "desktop.crt"))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", stack.https_port, source_address=("127.0.0.3", 0), context=context, timeout=30
    )
    statuses = []
    try:
        for _ in range(count):
            conn.request("GET", "/websockify", headers={"Authorization": f"Basic {basic}"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


def wrong(password: str) -> str:
    return ("x" if password[0] != "x" else "y") + password[1:]


def test_wrong_passwords_never_lock_the_real_user_out(stack, tmp_path):
    # A stranger on the internet, at nginx's gate: wrong passwords, fast, from another address (more than
    # the burst of 400 and the rate allow).
    guess = base64.b64encode(f"{stack.user}:{wrong(stack.password)}".encode()).decode()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [s for batch in pool.map(lambda _: guesses(stack, guess, 250), range(4)) for s in batch]
    assert set(answers) <= {401, 429} and 429 in answers, collections.Counter(answers)  # slowed, never let in

    # Wrong passwords in the user's own browser: at nginx's prompt, then noVNC's (through websockify, so
    # they reach Xvnc from 127.0.0.1, as every browser's do), then raw VNC from 127.0.0.1 past any limit.
    assert (
        novnc_attempts(stack, (stack.user, wrong(stack.password)), stack.password, 3)
        == ["refused by nginx"] * 3
    )
    failures = novnc_attempts(stack, stack.login, wrong(stack.password), 2)
    assert "connected" not in failures and all("rejected" in f for f in failures), failures
    for _ in range(20):
        with pytest.raises(rfb_client.VncRefused):
            rfb_client.connect(stack.vnc_port, wrong(stack.password))

    # At once, the right password still works: for a VNC client, and in the browser.
    assert rfb_client.connect(stack.vnc_port, stack.password).width == 800
    assert novnc_attempts(stack, stack.login, stack.password, 1) == ["connected"]
    png = screenshot(
        stack.novnc_url(stack.password), tmp_path / "after-guesses.png", SESSION_RGB, login=stack.login
    )
    assert colour_fraction(png, SESSION_RGB) > 0.3
