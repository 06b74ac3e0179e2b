"""The live display, as a person sees it: imagesync runs in a pseudo-terminal against
real loopback registries, one 48 MiB blob comes through a bandwidth-capped proxy, and a
small terminal emulator turns what imagesync writes into the screen a person reads.

Checked: the display is up within a second of the plan; it changes while that one long
blob moves (bytes, its own bar); a log line printed meanwhile sits whole above the
display; at the end the display gives way to the summary.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.images import RegistryAPI, push_random_image
from tests.support.proxy import Fault, Proxy

ROOT = Path(__file__).resolve().parent.parent
BIG = 48 << 20          # one long blob...
BANDWIDTH = 12 << 20    # ...through a 12 MiB/s link: about 4 s
COLS, ROWS = 120, 40


class Screen:
    """Enough of a VT100 for rich's Live: text, CR/LF, cursor moves, erase, scrolling;
    colours and modes are ignored."""

    _CSI = re.compile(r"\x1b\[([?0-9;]*)([@-~])")
    _OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")

    def __init__(self, cols: int = COLS, rows: int = ROWS):
        self.cols, self.rows = cols, rows
        self.lines = [[" "] * cols for _ in range(rows)]
        self.x = self.y = 0
        self.scrolled: list[str] = []  # lines that left the top of the screen
        self._pending = ""

    def feed(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        i = 0
        while i < len(text):
            c = text[i]
            if c == "\x1b":
                m = self._CSI.match(text, i) or self._OSC.match(text, i)
                if m is None:
                    if len(text) - i < 32:  # an escape cut in two: wait for the rest
                        self._pending = text[i:]
                        return
                    i += 1
                    continue
                if m.re is self._CSI:
                    self._csi(m.group(1), m.group(2))
                i = m.end()
                continue
            if c == "\r":
                self.x = 0
            elif c == "\n":
                self._down()
            elif c == "\b":
                self.x = max(0, self.x - 1)
            elif c >= " ":
                if self.x >= self.cols:
                    self.x = 0
                    self._down()
                self.lines[self.y][self.x] = c
                self.x += 1
            i += 1

    def _down(self) -> None:
        if self.y == self.rows - 1:
            self.scrolled.append("".join(self.lines.pop(0)).rstrip())
            self.lines.append([" "] * self.cols)
        else:
            self.y += 1

    def _csi(self, params: str, op: str) -> None:
        if params.startswith("?"):
            return  # modes (cursor shown/hidden)
        args = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = max(1, args[0]) if args else 1
        if op == "A":
            self.y = max(0, self.y - n)
        elif op == "B":
            self.y = min(self.rows - 1, self.y + n)
        elif op == "C":
            self.x = min(self.cols - 1, self.x + n)
        elif op == "D":
            self.x = max(0, self.x - n)
        elif op == "G":
            self.x = min(self.cols - 1, n - 1)
        elif op == "H":
            self.y = min(self.rows, args[0] if args else 1) - 1
            self.x = min(self.cols, args[1] if len(args) > 1 else 1) - 1
        elif op == "K":
            mode = args[0] if args else 0
            row = self.lines[self.y]
            lo, hi = {0: (self.x, self.cols), 1: (0, self.x + 1), 2: (0, self.cols)}[mode]
            row[lo:hi] = [" "] * (hi - lo)
        elif op == "J":
            mode = args[0] if args else 0
            if mode in (2, 3):
                self.lines = [[" "] * self.cols for _ in range(self.rows)]
            elif mode == 0:
                self.lines[self.y][self.x:] = [" "] * (self.cols - self.x)
                for y in range(self.y + 1, self.rows):
                    self.lines[y] = [" "] * self.cols

    def text(self) -> str:
        rows = ["".join(r).rstrip() for r in self.lines]
        while rows and not rows[-1]:
            rows.pop()
        return "\n".join(rows)

    def history(self) -> str:
        """Everything written so far that is still readable: scrolled lines + screen."""
        return "\n".join([*self.scrolled, self.text()])


class Terminal:
    """A command in a pseudo-terminal of COLS x ROWS; ``frames`` are (time, screen)."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.screen = Screen()
        self.frames: list[tuple[float, str]] = []
        self.raw = bytearray()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=ROOT, close_fds=True, start_new_session=True)
        os.close(slave)
        self._master = master
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError as e:  # EIO: the child side is closed
                if e.errno == errno.EIO:
                    break
                raise
            if not data:
                break
            with self._lock:
                self.raw += data
                self.screen.feed(data.decode("utf-8", errors="replace"))
                text = self.screen.text()
                if not self.frames or self.frames[-1][1] != text:
                    self.frames.append((time.monotonic(), text))
        os.close(self._master)

    def wait(self, timeout: float = 90) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _bytes_figure(frame: str) -> str | None:
    m = re.search(r"^bytes\s+([\d.]+ \w?i?B) moved", frame, re.M)
    return m.group(1) if m else None


@pytest.fixture
def slow_source(src_registry, dst_registry):
    """Three small images and one with a 48 MiB layer, behind a 12 MiB/s link."""
    api = RegistryAPI(src_registry)
    for i in range(3):
        push_random_image(api, "small", f"v{i}", (20_000, 3_000))
    big = push_random_image(api, "big", "v1", (BIG, 1000))
    with Proxy(src_registry.host, bandwidth=BANDWIDTH) as proxy:
        yield proxy, big


def _config(tmp_path: Path, src: str, dst: str) -> Path:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text(yaml.safe_dump({"images": {f"{src}/big:v1": f"{dst}/big",
                                              f"{src}/small": f"{dst}/small",
                                              f"{src}/small:v9": f"{dst}/small"}}))
    return cfg


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def test_live_display_in_a_terminal(tmp_path, slow_source, dst_registry):
    proxy, big = slow_source
    # One transient failure: its "retrying" warning must print whole, above the display.
    proxy.add(Fault(method="HEAD", path=r"/v2/small/manifests/v1", status=503, times=1))
    cfg = _config(tmp_path, proxy.host, dst_registry.host)
    report = tmp_path / "report.json"
    term = Terminal([sys.executable, "-m", "imagesync", "--config", str(cfg), "--report",
                     str(report)], _env())
    try:
        code = term.wait()
    finally:
        term.kill()
    frames, final = term.frames, term.screen.history()
    assert code == 1, final  # small:v9 does not exist

    # -- the display appears at once ----------------------------------------------------
    # (the proxy and the frames share the monotonic clock of this machine)
    first_request = min(seen.at for seen in proxy.history())
    displayed = [t for t, f in frames if re.search(r"^plan\b", f, re.M)]
    assert displayed, final
    first_draw = displayed[0] - term.started
    # Up as imagesync starts: before (or, on a busy machine, right around) its first request.
    assert displayed[0] < first_request + 0.5, displayed[0] - first_request
    planned = [t for t, f in frames if re.search(r"^images .* \d+/[1-9]\d* done", f, re.M)]
    assert planned, [f for _, f in frames[:5]]
    plan_shown = planned[0] - first_request
    assert plan_shown < 1.0, plan_shown  # the plan is on screen within a second

    # -- it moves during the one long blob ----------------------------------------------
    digest = big.blobs[0].split(":")[1][:12]
    during = [(t, f) for t, f in frames if digest in f]
    assert len(during) >= 4, "the big blob's bar was not redrawn while it moved"
    figures = [_bytes_figure(f) for _, f in during]
    assert len(set(figures)) >= 3, figures  # the bytes figure changed, several times
    span = during[-1][0] - during[0][0]
    assert span > 2, span  # the blob took seconds, and the display kept showing it
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(during)]
    assert max(gaps) < 1.5, gaps  # never a frozen screen for more than a second or so
    mid = during[len(during) // 2][1]
    assert re.search(r"^images .* 1 failed", mid, re.M), mid  # failures so far
    assert re.search(r"MiB / 48\.0 MiB", mid), mid  # its own bar: done / size
    assert re.search(r"[\d.]+ [KM]iB/s", mid) and "ETA" in mid, mid

    # -- a warning prints whole, above the display, never inside it ---------------------
    warned = [f for _, f in frames if "retrying" in f]
    assert warned, final
    for f in warned:
        lines = f.splitlines()
        i = next(n for n, line in enumerate(lines) if "retrying" in line)
        assert lines[i].startswith("retrying "), lines[i]
        if any(line.startswith("plan") for line in lines):  # the display is below it
            assert i < next(n for n, line in enumerate(lines) if line.startswith("plan"))

    # -- the end: the display gives way to the summary ----------------------------------
    end = term.screen.text()
    assert re.search(r"^imagesync: 4 synced, 0 skipped, 1 failed; 48\.\d MiB moved in "
                     r"[\d.]+s \([\d.]+ MiB/s\)\nfailed \(1\):\n  \S+/small:v9 -> "
                     r"\S+/small:v9: .*not found", end, re.M), end
    assert not re.search(r"^(plan|images|bytes)\s", end, re.M), end  # no leftover display
    assert json.loads(report.read_text())["summary"]["synced"] == 4
    if os.environ.get("IMAGESYNC_SCREEN"):  # docs/screen.txt: a real screen for the README
        Path(os.environ["IMAGESYNC_SCREEN"]).write_text(
            f"During the run ({len(during) // 2 + 1}th redraw of the long blob):\n\n{mid}\n\n"
            f"At the end:\n\n{end}\n")
    print(f"\nfirst draw {first_draw:.2f}s after start, "
          f"{first_request - displayed[0]:.2f}s before the first request; plan on screen "
          f"{plan_shown:.2f}s after the first request; {len(frames)} frames; "
          f"big blob shown for {span:.1f}s in {len(during)} frames, max gap "
          f"{max(gaps):.2f}s")
