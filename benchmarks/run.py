"""``make bench``: imagesync against ``skopeo sync`` on the same workloads, same machine.

Cases (from the issue; ratios are imagesync / skopeo measured in the same run):

1. LAN bulk: 20 repositories x 5 tags, 3 random layers (4 MiB, 2 MiB, 256 KiB), ~660 MB,
   registry -> registry on loopback. Target: wall <= 1.0, client CPU <= 0.8.
2. WAN small: 10 repositories x 20 tags, 3 layers (48+32+16 KiB), source and destination
   each behind a proxy adding 25 ms to every byte each way, and one round trip (50 ms)
   before a new connection's first request, as the TCP handshake costs on a real link
   (``--no-handshake-rtt``: connections are free, like a latency-only toxiproxy; skopeo
   opens a new connection or two per request, imagesync keeps its connections alive,
   so this choice moves skopeo's time much more than imagesync's). Target: wall <= 0.1.
3. No-op re-sync of 1 (LAN, target wall <= 1.0) and of 2 (WAN, target wall <= 0.1).
4. Memory: one image with a 2 GiB layer; one repository with 10,000 tags over 4 tiny
   images (a real sync into an empty registry). Target: imagesync peak RSS < 150 MB.

Each tool syncs into its own fresh destination registry. Wall time, CPU (user+sys) and
peak RSS come from ``wait4`` on the tool's process; after every run the destination is
checked against the source (tag lists, digests by HEAD, big blobs' sizes).

    python -m benchmarks.run [--quick] [--cases 1,2,3,4] [--proc N] [--no-handshake-rtt]
                             [--skopeo-all-tags] [--storage DIR] [--keep] [--profile]

Writes ``.bench/results.md`` and ``.bench/results.json``; tool logs in ``.bench/logs``.
Exits 1 when a target is missed or a run failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tests.support.images import RegistryAPI
from tests.support.proxy import Proxy
from tests.support.registry import LocalRegistry, start_registry

from .measure import Measurement, log_tail, run_measured
from .workloads import (
    GiB,
    KiB,
    MiB,
    Workload,
    seed_big_layer,
    seed_images,
    seed_many_tags,
    verify,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".bench"
TOOLS = ("imagesync", "skopeo")
RSS_LIMIT_MB = 150.0
NOISY_STEAL = 10.0  # % CPU steal above which a run's numbers are flagged


@dataclass(frozen=True)
class Params:
    lan_repos: int = 20
    lan_tags: int = 5
    lan_layers: tuple[int, ...] = (4 * MiB, 2 * MiB, 256 * KiB)
    wan_repos: int = 10
    wan_tags: int = 20
    wan_layers: tuple[int, ...] = (48 * KiB, 32 * KiB, 16 * KiB)
    latency: float = 0.025
    big_size: int = 2 * GiB
    many_tags: int = 10_000
    # skopeo copies one image at a time (~30 ms each here even when there is nothing to
    # copy), so the whole 10,000-tag plan costs it ~5 min; by default it gets the first
    # 2,000 tags (RSS for reference; no wall/CPU ratio). --skopeo-all-tags: all of them.
    many_skopeo_tags: int | None = 2000
    timeout: float = 1800.0  # per tool run; skopeo's WAN sync alone takes ~8 min


QUICK = Params(lan_repos=4, lan_tags=3, wan_repos=3, wan_tags=5, big_size=256 * MiB,
               many_tags=1000, many_skopeo_tags=None, timeout=300.0)

# case key -> (label, targets); a target is (metric, limit): "wall"/"cpu"/"rss" are
# ratios imagesync/skopeo (<= limit), "rss_mb" is imagesync's own peak RSS (< limit).
CASES: dict[str, tuple[str, list[tuple[str, float]]]] = {
    "1": ("1 LAN bulk", [("wall", 1.0), ("cpu", 0.8)]),
    "2": ("2 WAN small", [("wall", 0.1)]),
    "3lan": ("3 no-op LAN", [("wall", 1.0)]),
    "3wan": ("3 no-op WAN", [("wall", 0.1)]),
    "4big": ("4 2 GiB layer", [("rss_mb", RSS_LIMIT_MB)]),
    "4many": ("4 10k tags", [("rss_mb", RSS_LIMIT_MB)]),
}


@dataclass
class Row:
    case: str
    tool: str
    key: str = ""  # "1", "2", "3lan", "3wan", "4big", "4many"
    wall: float | None = None
    cpu: float | None = None
    rss_mb: float | None = None
    wall_ratio: float | None = None
    cpu_ratio: float | None = None
    rss_ratio: float | None = None
    target: str = ""
    result: str = ""
    notes: list[str] = field(default_factory=list)
    load: float | None = None  # 1-min load average as the run started (other work?)
    steal: float | None = None  # % of the machine's CPU time stolen by the hypervisor


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def target_text(targets: list[tuple[str, float]]) -> str:
    out = []
    for metric, limit in targets:
        out.append(f"RSS < {limit:.0f} MB" if metric == "rss_mb" else f"{metric} <= {limit}")
    return ", ".join(out)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.params = QUICK if args.quick else Params()
        if args.skopeo_all_tags:
            self.params = dataclasses.replace(self.params, many_skopeo_tags=None)
        self.cases: set[str] = set(args.cases)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.work = Path(args.storage or OUT) / f"imagesync-bench-{stamp}"
        self.logs = OUT / "logs"
        self.rows: list[Row] = []
        self.registries: list[LocalRegistry] = []
        self.proxies: list[Proxy] = []
        self.workloads: dict[str, dict] = {}
        self.load: dict[str, float] = {}

    # -- infrastructure ----------------------------------------------------------------

    def registry(self, name: str) -> LocalRegistry:
        reg = start_registry(self.work / "registries", name=name)
        self.registries.append(reg)
        return reg

    def proxy(self, reg: LocalRegistry) -> Proxy:
        latency = self.params.latency
        delay = 2 * latency if self.args.handshake_rtt else 0.0
        p = Proxy(reg.host, latency=latency, connect_delay=delay).start()
        self.proxies.append(p)
        return p

    def drop(self, *regs: LocalRegistry) -> None:
        """Stop registries and delete their storage now (disk matters for case 4)."""
        for reg in regs:
            reg.stop()
            if not self.args.keep:
                shutil.rmtree(reg.root, ignore_errors=True)

    def cleanup(self) -> None:
        for p in self.proxies:
            p.stop()
        for reg in self.registries:
            reg.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- running the tools -------------------------------------------------------------

    def run_tool(self, tool: str, key: str, wl: Workload, src_host: str, dst_host: str,
                 dst: LocalRegistry, sample: int | None = None) -> tuple[Measurement, list[str]]:
        tag = f"{key}-{tool}"
        cfg_dir = self.work / "configs"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{tag}.log"
        notes: list[str] = []
        if tool == "imagesync":
            cfg = cfg_dir / f"{tag}.yaml"
            cfg.write_text(yaml.safe_dump(
                {"images": {f"{src_host}/{r}": f"{dst_host}/{r}" for r in wl.repos}},
                sort_keys=False))
            report = cfg_dir / f"{tag}.report.json"
            cmd = [sys.executable]
            if self.args.profile:
                cmd += ["-m", "cProfile", "-o", str(OUT / f"profile-{key}.prof")]
            cmd += ["-m", "imagesync", "--config", str(cfg), "--report", str(report)]
            if self.args.proc:
                cmd += ["--proc", str(self.args.proc)]
        else:
            cfg = cfg_dir / f"{tag}.skopeo.yaml"
            images = {r: wl.tags(r) if wl.explicit else [] for r in wl.repos}
            cfg.write_text(yaml.safe_dump({src_host: {"images": images, "tls-verify": False}}))
            cmd = ["skopeo", "sync", "--src", "yaml", "--dest", "docker",
                   "--dest-tls-verify=false", "--preserve-digests", str(cfg),
                   f"{dst_host}/{wl.prefix}"]
        say(f"  {tool}: {key} ({wl.images} images)")
        self.load[tag] = round(os.getloadavg()[0], 2)
        m = run_measured(tool, cmd, log, timeout=self.params.timeout)
        say(f"  {tool}: {m.wall:.1f}s wall, {m.cpu:.1f}s CPU, {m.rss_mb:.0f} MB, "
            f"exit {m.returncode}")
        if m.timed_out:
            notes.append(f"ERROR: {tool} killed after {self.params.timeout:.0f}s")
        if m.returncode != 0:
            notes.append(f"ERROR: {tool} exit {m.returncode}: {log_tail(log, 3)}")
        if tool == "imagesync" and m.returncode in (0, 1):
            with contextlib.suppress(OSError, ValueError, KeyError):
                s = json.loads(report.read_text())["summary"]
                notes.append(f"imagesync: {s['synced']} synced, {s['skipped']} skipped, "
                             f"{s['failed']} failed")
        if tool == "imagesync" and self.args.profile:
            self.print_profile(key)
        problems = verify(RegistryAPI(dst), wl, sample=sample)
        if problems:
            notes.append(f"ERROR: {tool} destination wrong: " + "; ".join(problems[:3]))
            say(f"  {tool}: VERIFY FAILED: {problems[:3]}")
        return m, notes

    def print_profile(self, key: str) -> None:
        prof = OUT / f"profile-{key}.prof"
        with contextlib.suppress(OSError):
            stats = pstats.Stats(str(prof), stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(25)
            stats.sort_stats("tottime").print_stats(25)

    def record(self, key: str, runs: dict[str, Measurement],
               notes: dict[str, list[str]], *, partial: bool = False) -> None:
        label, targets = CASES[key]
        rows = {t: Row(label, t, key) for t in TOOLS}
        for tool, m in runs.items():
            r = rows[tool]
            r.wall, r.cpu, r.rss_mb = round(m.wall, 2), round(m.cpu, 2), round(m.rss_mb, 1)
            r.notes = notes.get(tool, [])
            r.load = self.load.get(f"{key}-{tool}")
            r.steal = round(m.steal_pct, 1)
            if m.steal_pct > NOISY_STEAL:
                r.notes.append(f"noisy: the hypervisor stole {m.steal_pct:.0f}% of the CPU "
                               "during this run")
        ours, theirs = rows["imagesync"], rows["skopeo"]
        if "skopeo" in runs and "imagesync" in runs:
            if not partial:
                ours.wall_ratio = _ratio(ours.wall, theirs.wall)
                ours.cpu_ratio = _ratio(ours.cpu, theirs.cpu)
            ours.rss_ratio = _ratio(ours.rss_mb, theirs.rss_mb)
        ours.target = target_text(targets)
        broken = any(n.startswith("ERROR") for r in rows.values() for n in r.notes)
        ok = True
        for metric, limit in targets:
            if metric == "rss_mb":
                ok &= ours.rss_mb is not None and ours.rss_mb < limit
            else:
                value = getattr(ours, f"{metric}_ratio")
                ok &= value is not None and value <= limit
        ours.result = "ERROR" if broken else ("PASS" if ok else "FAIL")
        self.rows += [ours, theirs]
        say(f"{label}: {ours.result} (wall x{ours.wall_ratio}, CPU x{ours.cpu_ratio}, "
            f"RSS {ours.rss_mb} MB)")

    def pair(self, key: str, wl: Workload, src_host: str, dsts: dict[str, LocalRegistry],
             hosts: dict[str, str], sample: int | None = None,
             skopeo_wl: Workload | None = None, repeat: int = 1) -> None:
        """Run both tools (``repeat`` times, interleaved: only for runs that leave the
        destination as they found it) and record the medians."""
        runs: dict[str, list[Measurement]] = {t: [] for t in TOOLS}
        notes: dict[str, list[str]] = {t: [] for t in TOOLS}
        for _ in range(repeat):
            for tool in TOOLS:
                w = skopeo_wl if tool == "skopeo" and skopeo_wl is not None else wl
                m, n = self.run_tool(tool, key, w, src_host, hosts[tool], dsts[tool], sample)
                runs[tool].append(m)
                notes[tool] += [x for x in n if x not in notes[tool]]
        if repeat > 1:
            for tool in TOOLS:
                walls = ", ".join(f"{m.wall:.2f}" for m in runs[tool])
                notes[tool].append(f"median of {repeat} runs (wall s: {walls})")
        if skopeo_wl is not None:
            notes["skopeo"].insert(0, f"skopeo ran {skopeo_wl.images} of the {wl.images} "
                                   "tags (time budget; --skopeo-all-tags for all): "
                                   "no wall/CPU ratio")
        self.record(key, {t: median_run(ms) for t, ms in runs.items()}, notes,
                    partial=skopeo_wl is not None)

    # -- the cases ---------------------------------------------------------------------

    def lan(self) -> None:
        p = self.params
        say(f"LAN: seeding {p.lan_repos} x {p.lan_tags} images of "
            f"{sum(p.lan_layers) / MiB:.2f} MiB")
        src = self.registry("lan-src")
        t = time.monotonic()
        wl = seed_images(RegistryAPI(src), "lan", "lan", p.lan_repos, p.lan_tags,
                         p.lan_layers)
        say(f"  seeded {wl.bytes / 1e6:.0f} MB in {time.monotonic() - t:.1f}s")
        self.describe("lan", wl)
        dsts = {tool: self.registry(f"lan-dst-{tool}") for tool in TOOLS}
        hosts = {tool: d.host for tool, d in dsts.items()}
        self.pair("1", wl, src.host, dsts, hosts)
        if "3lan" in self.cases:
            self.pair("3lan", wl, src.host, dsts, hosts, repeat=3)  # ~1 s each: noisy
        self.drop(src, *dsts.values())

    def wan(self) -> None:
        p = self.params
        say(f"WAN: seeding {p.wan_repos} x {p.wan_tags} small images, "
            f"{p.latency * 1000:.0f} ms each way")
        src = self.registry("wan-src")
        wl = seed_images(RegistryAPI(src), "wan", "wan", p.wan_repos, p.wan_tags,
                         p.wan_layers)
        self.describe("wan", wl)
        dsts = {tool: self.registry(f"wan-dst-{tool}") for tool in TOOLS}
        src_proxy = self.proxy(src)
        hosts = {tool: self.proxy(d).host for tool, d in dsts.items()}
        self.pair("2", wl, src_proxy.host, dsts, hosts)
        if "3wan" in self.cases:
            self.pair("3wan", wl, src_proxy.host, dsts, hosts)
        self.drop(src, *dsts.values())

    def big(self) -> None:
        size = self.params.big_size
        self.work.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.work).free
        need = int(3.3 * size) + GiB
        if free < need:
            say(f"case 4 (big layer) skipped: {free / GiB:.1f} GiB free, need {need / GiB:.1f}")
            self.rows.append(Row(CASES["4big"][0], "imagesync", "4big", result="SKIPPED",
                                 notes=[f"not enough disk: {free / GiB:.1f} GiB free"]))
            return
        say(f"big layer: streaming {size / GiB:.2f} GiB of random bytes into the source")
        src = self.registry("big-src")
        t = time.monotonic()
        wl = seed_big_layer(RegistryAPI(src), size)
        say(f"  seeded in {time.monotonic() - t:.1f}s")
        self.describe("big", wl)
        runs: dict[str, Measurement] = {}
        notes: dict[str, list[str]] = {}
        for tool in TOOLS:  # one destination at a time: 2 GiB each
            dst = self.registry(f"big-dst-{tool}")
            runs[tool], notes[tool] = self.run_tool(tool, "4big", wl, src.host, dst.host, dst)
            self.drop(dst)
        self.record("4big", runs, notes)
        self.drop(src)

    def many(self) -> None:
        n = self.params.many_tags
        say(f"many tags: seeding one repository with {n} tags")
        src = self.registry("many-src")
        t = time.monotonic()
        wl = seed_many_tags(RegistryAPI(src), n)
        say(f"  seeded in {time.monotonic() - t:.1f}s")
        self.describe("many", wl)
        dsts = {tool: self.registry(f"many-dst-{tool}") for tool in TOOLS}
        hosts = {tool: d.host for tool, d in dsts.items()}
        part = self.params.many_skopeo_tags
        sub = wl.subset(part) if part is not None and part < wl.images else None
        self.pair("4many", wl, src.host, dsts, hosts, sample=50, skopeo_wl=sub)
        self.drop(src, *dsts.values())

    def describe(self, name: str, wl: Workload) -> None:
        self.workloads[name] = {"repositories": len(wl.repos), "images": wl.images,
                                "bytes": wl.bytes}

    def run(self) -> int:
        started = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            if self.cases & {"1", "3lan"}:
                self.lan()
            if self.cases & {"2", "3wan"}:
                self.wan()
            if "4big" in self.cases:
                self.big()
            if "4many" in self.cases:
                self.many()
        finally:
            self.cleanup()
        # Case 3 needs the runs of 1 or 2 first; report those only when asked for.
        self.rows = [r for r in self.rows if r.key in self.cases]
        elapsed = time.monotonic() - started
        table = render_table(self.rows)
        print(table)
        self.write(elapsed)
        say(f"done in {elapsed / 60:.1f} min; wrote {OUT / 'results.md'} and "
            f"{OUT / 'results.json'}")
        return 1 if any(r.result in ("FAIL", "ERROR") for r in self.rows) else 0

    def meta(self, elapsed: float) -> dict:
        return {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if self.args.quick else "full",
            "cases": sorted(self.cases),
            "params": asdict(self.params),
            "workloads": self.workloads,
            "imagesync_proc": self.args.proc or "default (8)",
            "wan_handshake_rtt": self.args.handshake_rtt,
            "storage": str(self.work.parent),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "skopeo": _version(["skopeo", "--version"]),
            "registry": _version(["docker-registry", "--version"]),
            "elapsed_s": round(elapsed, 1),
        }

    def write(self, elapsed: float) -> None:
        meta = self.meta(elapsed)
        OUT.mkdir(exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(
            {"meta": meta, "rows": [asdict(r) for r in self.rows]}, indent=2) + "\n")
        (OUT / "results.md").write_text(render_markdown(self.rows, meta))


def median_run(ms: list[Measurement]) -> Measurement:
    """Per-metric medians; the worst exit code; mean steal."""
    if len(ms) == 1:
        return ms[0]
    return dataclasses.replace(
        ms[0],
        wall=statistics.median(m.wall for m in ms),
        user=statistics.median(m.user for m in ms),
        sys=statistics.median(m.sys for m in ms),
        rss_mb=statistics.median(m.rss_mb for m in ms),
        returncode=max((m.returncode for m in ms), key=abs),
        timed_out=any(m.timed_out for m in ms),
        steal_pct=statistics.fmean(m.steal_pct for m in ms),
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


COLUMNS = ("case", "tool", "wall s", "CPU s", "peak RSS MB", "wall ratio", "CPU ratio",
           "RSS ratio", "steal %", "target", "result")


def _cells(r: Row) -> list[str]:
    return [r.case, r.tool, _fmt(r.wall), _fmt(r.cpu), _fmt(r.rss_mb, 1),
            _fmt(r.wall_ratio, 3), _fmt(r.cpu_ratio, 3), _fmt(r.rss_ratio, 3),
            _fmt(r.steal, 0), r.target, r.result]


def render_table(rows: list[Row]) -> str:
    cells = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < 2 or i >= 9 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.case} / {r.tool}: {n}" for r in rows for n in r.notes]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def render_markdown(rows: list[Row], meta: dict) -> str:
    out = [
        "# imagesync vs skopeo sync",
        "",
        f"{meta['date']}, {meta['mode']} run, {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"Python {meta['python']}, {meta['skopeo']}, {meta['registry']}; imagesync --proc "
        f"{meta['imagesync_proc']}; registries' storage under {meta['storage']}; "
        f"{meta['elapsed_s']:.0f} s in all.",
        "",
        "Ratios are imagesync / skopeo from the same run; CPU is user+sys of the tool's "
        "process, peak RSS its ru_maxrss (MB = 10^6 bytes); steal % is the share of the "
        "machine's CPU time the hypervisor took during the run (high: noisy numbers). "
        f"WAN: {meta['params']['latency'] * 1000:.0f} ms each way through a proxy in front of "
        "source and destination, "
        + ("plus one round trip per new connection (TCP handshake)."
           if meta["wan_handshake_rtt"] else "new connections free (--no-handshake-rtt)."),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    notes = [f"- {r.case} / {r.tool}: {n}" for r in rows for n in r.notes]
    if notes:
        out += ["", "Notes:", "", *notes]
    out += ["", "Workloads:", "", "```json", json.dumps(
        {"params": meta["params"], "seeded": meta["workloads"]}, indent=2), "```", ""]
    return "\n".join(out)


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{cmd[0]} (unknown version)"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


CASE_GROUPS = {"1": ["1"], "2": ["2"], "3": ["3lan", "3wan"], "4": ["4big", "4many"],
               **{k: [k] for k in CASES}}


def parse_cases(value: str) -> list[str]:
    """"1,3" -> ["1", "3lan", "3wan"]; also 3lan, 3wan, 4big, 4many on their own."""
    tokens = [c.strip().lower() for c in value.split(",") if c.strip()]
    bad = [c for c in tokens if c not in CASE_GROUPS]
    if bad or not tokens:
        raise argparse.ArgumentTypeError(
            f"cases are 1, 2, 3, 4 (or 3lan, 3wan, 4big, 4many), comma-separated; "
            f"not {value!r}")
    return sorted({k for c in tokens for k in CASE_GROUPS[c]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description="imagesync vs skopeo sync (see module docstring)")
    p.add_argument("--quick", action="store_true", help="small workloads, a quick check")
    p.add_argument("--cases", type=parse_cases, default=parse_cases("1,2,3,4"),
                   help="comma-separated subset of 1,2,3,4 (3lan, 3wan, 4big, 4many for "
                        "one half of 3 or 4); default: all")
    p.add_argument("--proc", type=int, default=None,
                   help="imagesync --proc (default: imagesync's own default, 8)")
    p.add_argument("--no-handshake-rtt", dest="handshake_rtt", action="store_false",
                   help="case 2/3 WAN: new connections cost no extra round trip (a "
                        "latency-only proxy, like toxiproxy) instead of one RTT for the "
                        "TCP handshake, as on a real link")
    p.add_argument("--skopeo-all-tags", action="store_true",
                   help="case 4: let skopeo sync all 10,000 tags too (+5 min)")
    p.add_argument("--storage", metavar="DIR", default=None,
                   help="where the registries keep their data (default .bench/; /dev/shm "
                        "takes the disk out of the measurement, needs ~5 GiB)")
    p.add_argument("--keep", action="store_true", help="keep registries' storage")
    p.add_argument("--profile", action="store_true",
                   help="run imagesync under cProfile; .bench/profile-<case>.prof")
    args = p.parse_args(argv)
    for exe in ("skopeo", "docker-registry"):
        if shutil.which(exe) is None:
            print(f"benchmarks: {exe} not found; run `make deps`", file=sys.stderr)
            return 2
    # Stop cleanly (registries, proxies, storage) on SIGTERM too, not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
