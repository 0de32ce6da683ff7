"""Open a page in headless Chromium and say what a reader would have seen go wrong: console errors, uncaught
exceptions, failed loads, images that did not load (tests of the report step's HTML page).

Chromium is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`: commands on its fd 3,
answers and events on its fd 4, each message JSON ended by a NUL byte), so no port is opened and no client
library is needed. Debian's package: `apt-get install -y chromium`.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install headless Chromium with `apt-get install -y chromium` (Debian)"
# Every <img>, once decoded: its alt text, where it came from (cut short) and its natural size (0 x 0 = broken).
_IMAGES_JS = """Promise.all([...document.images].map(img => img.decode().then(() => true, () => false)
  .then(ok => ({alt: img.alt, src: img.currentSrc.slice(0, 80), ok: ok && img.complete && img.naturalWidth > 0,
                width: img.naturalWidth, height: img.naturalHeight}))))"""


def find_browser() -> str | None:
    """The path of a Chromium found on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class ImageState:
    alt: str
    src: str
    ok: bool
    width: int
    height: int


@dataclass
class PageCheck:
    """What opening one page showed."""

    url: str
    title: str
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    images: list[ImageState] = field(default_factory=list)
    screenshot_png: bytes = b""

    @property
    def broken_images(self) -> list[ImageState]:
        return [image for image in self.images if not image.ok]


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """One headless Chromium process with a throwaway profile; use as a context manager."""

    def __init__(self, binary: str | None = None, timeout_s: float = 120.0) -> None:
        found = binary or find_browser()
        if not found:
            raise BrowserError(f"no Chromium on PATH ({', '.join(BROWSERS)}): {INSTALL_HINT}")
        self.binary = found
        self.timeout_s = timeout_s
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> HeadlessChromium:
        self._profile = tempfile.TemporaryDirectory(prefix="vlv-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium wants the pipe ends as its fds 3 and 4: bash moves them there (from fds >= 10, so no
        # renumbering can clobber another; dash, Debian's sh, takes single-digit fds only) and becomes Chromium.
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        args = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                f"--user-data-dir={self._profile.name}", "about:blank"]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec 3<&{high_r} 4>&{high_w} {high_r}<&- {high_w}>&- "$0" "$@"', *args],
            pass_fds=(high_r, high_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        os.close(high_r)
        os.close(high_w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout_s=10)
                except BrowserError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                os.close(fd)
            self._stderr.close()
            self._profile.cleanup()

    # -- the protocol ----------------------------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Send one command and wait for its answer (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            for index, received in enumerate(self._events):
                if received.get("id") == self._next_id:
                    del self._events[index]
                    if "error" in received:
                        raise BrowserError(f"{method}: {received['error']}")
                    return received.get("result", {})
            self._read(deadline, f"the answer to {method}")

    def wait_event(self, method: str, session: str, timeout_s: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            for received in self._events:
                if received.get("method") == method and received.get("sessionId") == session:
                    return received["params"]
            self._read(deadline, method)

    def _read(self, deadline: float, waiting_for: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or self.proc.poll() is not None:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-2000:]
            state = "timed out" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
            raise BrowserError(f"Chromium {state} while waiting for {waiting_for}; its stderr ends:\n{tail}")
        ready, _, _ = select.select([self._from_browser], [], [], min(left, 1.0))
        if not ready:
            return
        chunk = os.read(self._from_browser, 1 << 20)
        self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        self._events += [json.loads(m) for m in messages if m]

    # -- checking a page -------------------------------------------------------------------------------------

    def check_page(self, url: str, width: int = 1280, height: int = 900) -> PageCheck:
        """Open `url` in a new tab, wait for its load event, and collect what went wrong plus a screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        navigated = self.send("Page.navigate", {"url": url}, session=session)
        if navigated.get("errorText"):
            raise BrowserError(f"cannot open {url}: {navigated['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        evaluated = self.send("Runtime.evaluate", {"expression": _IMAGES_JS, "awaitPromise": True,
                                                   "returnByValue": True}, session=session)
        images = [ImageState(**state) for state in evaluated["result"]["value"]]
        title = self.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                          session=session)["result"]["value"]
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         session=session)
        errors = [_error_text(event) for event in self._events if event.get("sessionId") == session]
        self.send("Target.closeTarget", {"targetId": target})
        return PageCheck(url, title, [e for e in errors if e], images, base64.b64decode(shot["data"]))


def _error_text(event: dict[str, Any]) -> str:
    """One line for an event that reports an error, "" for any other event."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        values = [arg.get("value", arg.get("description", "")) for arg in params.get("args", [])]
        return f"console.{params['type']}: {' '.join(str(v) for v in values)}"
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"uncaught exception: {details.get('exception', {}).get('description') or details.get('text')}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')} error: {entry.get('text')} {entry.get('url', '')}".rstrip()
    return ""


def check_html_file(path: Path, binary: str | None = None) -> PageCheck:
    """Open a local HTML file in a fresh headless Chromium and check it (see `HeadlessChromium.check_page`)."""
    with HeadlessChromium(binary) as browser:
        return browser.check_page(Path(path).resolve().as_uri())
