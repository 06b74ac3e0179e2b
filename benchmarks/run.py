"""``make bench``: imagesync against ``skopeo sync`` on the same workloads, same machine.

Every case runs each variant ``repeat`` times (3; 1 where a run takes minutes, said in
the notes) and reports the minimum and the median wall time, the median CPU (user+sys)
and the highest peak RSS, from ``wait4`` on the tool's process. Variants: imagesync's
default (no ``--proc``: adaptive concurrency per registry), imagesync with a fixed
concurrency (``--proc N --per-registry N``: the hand-tuned runs the default must come
within 10% of), ``--proc 1`` (a control), and ``skopeo sync`` (``--all`` on
multi-platform images). Each copying run gets a fresh destination registry; no-op runs
share one destination synced beforehand. After every run the destination is checked
against the source (tags and digests, all or a sample; big blobs' sizes).

Cases (``--cases``, comma-separated; default all):

* ``lan``: 20 repositories x 5 tags, 3 random layers (4 MiB, 2 MiB, 256 KiB), ~660 MB,
  registry -> registry on loopback;
* ``wan``: 10 x 6 small images (48+32+16 KiB), source and destination each behind a proxy
  adding 25 ms each way (50 ms round trip) and a round trip per new connection;
* ``noop``: re-syncs of ``lan`` and ``wan`` (nothing to copy);
* ``multi``: 8 x 4 multi-platform images (3 platforms, 1 MiB + 256 KiB each), loopback;
* ``big``: one 1 GiB layer, loopback (CPU per GB, RSS);
* ``capped``: the same layer with the source capped at 8 MiB/s per connection (as a CDN
  caps one download): imagesync reads ranges in parallel, skopeo is the single
  connection;
* ``tags``: one repository with 10,000 tags over 4 tiny images, synced by both tools;
* ``farm``: a whole registry of 10 and 100 repositories x 1,000 tags (100 distinct
  manifests, written straight into the registry's storage): a dry run and a no-op sync,
  tags per second and peak RSS at 10,000 and 100,000 tags (imagesync only).

    python -m benchmarks.run [--quick] [--cases lan,wan,...] [--repeat N] [--storage DIR]
                             [--keep] [--no-handshake-rtt] [--imagesync CMD]

Writes ``.bench/results.md`` (the README table), ``.bench/results.json`` and the tools'
logs in ``.bench/logs``. Exits 1 when a target is missed or a run failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.images import RegistryAPI
from tests.support.proxy import Proxy
from tests.support.registry import LocalRegistry, start_registry

from .measure import Measurement, cpu_counters, log_tail, run_measured
from .proxy import CappedProxy
from .workloads import (
    GiB,
    KiB,
    MiB,
    Workload,
    seed_big_layer,
    seed_images,
    seed_indexes,
    seed_many_tags,
    seed_tag_farm,
    verify,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".bench"
RSS_LIMIT_MB = 150.0
NOISY_STEAL = 10.0  # % CPU steal above which a run's numbers are flagged
DEFAULT = "imagesync default"


@dataclass(frozen=True)
class Params:
    lan_repos: int = 20
    lan_tags: int = 5
    lan_layers: tuple[int, ...] = (4 * MiB, 2 * MiB, 256 * KiB)
    wan_repos: int = 10
    wan_tags: int = 6
    wan_layers: tuple[int, ...] = (48 * KiB, 32 * KiB, 16 * KiB)
    latency: float = 0.025
    multi_repos: int = 8
    multi_tags: int = 4
    multi_layers: tuple[int, ...] = (1 * MiB, 256 * KiB)
    big_size: int = 1 * GiB
    cap: float = 8 * MiB          # bytes/s per connection, case capped
    many_tags: int = 10_000
    farm_sizes: tuple[int, ...] = (10, 100)  # repositories of 1,000 tags
    farm_tags: int = 1000
    farm_images: int = 100
    fixed: tuple[int, ...] = (8, 32, 64)   # fixed concurrencies to compare against
    repeat: int = 3
    timeout: float = 1800.0


QUICK = Params(lan_repos=5, lan_tags=4, wan_repos=4, wan_tags=5, multi_repos=3,
               multi_tags=2, big_size=256 * MiB, many_tags=1000, farm_sizes=(2, 10),
               fixed=(8, 64), repeat=1, timeout=300.0)


@dataclass
class Variant:
    name: str
    tool: str                     # imagesync | skopeo
    args: tuple[str, ...] = ()
    repeat: int | None = None     # None: the case's repeat


@dataclass
class Row:
    case: str
    variant: str
    runs: list[Measurement] = field(default_factory=list)
    work: str = ""                # what one run did (images, bytes)
    units: float = 0.0            # images / tags per run, for the rate
    unit: str = "images"
    bytes: int = 0                # bytes one run moved (CPU per GB)
    notes: list[str] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [m.wall for m in self.runs]

    @property
    def wall_min(self) -> float | None:
        return min(self.walls) if self.runs else None

    @property
    def wall_median(self) -> float | None:
        return statistics.median(self.walls) if self.runs else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(m.cpu for m in self.runs) if self.runs else None

    @property
    def rss(self) -> float | None:
        return max(m.rss_mb for m in self.runs) if self.runs else None

    @property
    def steal(self) -> float | None:
        return statistics.fmean(m.steal_pct for m in self.runs) if self.runs else None

    @property
    def rate(self) -> float | None:
        w = self.wall_median
        return self.units / w if w and self.units else None

    def to_json(self) -> dict:
        return {"case": self.case, "variant": self.variant, "work": self.work,
                "walls": [round(w, 3) for w in self.walls], "wall_min": self.wall_min,
                "wall_median": self.wall_median, "cpu_median": self.cpu,
                "rss_max_mb": self.rss, "steal_pct": self.steal, "rate": self.rate,
                "unit": self.unit, "bytes": self.bytes, "notes": self.notes,
                "exit_codes": [m.returncode for m in self.runs]}


@dataclass
class Check:
    what: str
    value: str
    target: str
    ok: bool | None  # None: not measured


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        params = QUICK if args.quick else Params()
        if args.repeat:
            params = dataclasses.replace(params, repeat=args.repeat)
        self.params = params
        self.cases: list[str] = args.cases
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.work = Path(args.storage or OUT) / f"imagesync-bench-{stamp}"
        self.logs = OUT / "logs"
        self.rows: list[Row] = []
        self.checks: list[Check] = []
        self.registries: list[LocalRegistry] = []
        self.proxies: list[Proxy] = []
        self.workloads: dict[str, dict] = {}
        self.startup_cpu: float | None = None
        self.imagesync = shlex.split(args.imagesync) if args.imagesync else [
            sys.executable, "-m", "imagesync"]
        self.default_args = tuple(shlex.split(args.default_args or ""))
        self._n = 0

    # -- infrastructure ----------------------------------------------------------------

    def registry(self, name: str) -> LocalRegistry:
        reg = start_registry(self.work / "registries", name=name)
        self.registries.append(reg)
        return reg

    def wan_proxy(self, reg: LocalRegistry) -> Proxy:
        latency = self.params.latency
        delay = 2 * latency if self.args.handshake_rtt else 0.0
        p = Proxy(reg.host, latency=latency, connect_delay=delay).start()
        self.proxies.append(p)
        return p

    def drop(self, *regs: LocalRegistry) -> None:
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

    # -- variants ----------------------------------------------------------------------

    def variants(self, *, fixed: tuple[int, ...] | None = None, control: bool = False,
                 skopeo: bool = True, skopeo_all: bool = False,
                 skopeo_repeat: int | None = None, fixed_repeat: int | None = None,
                 control_repeat: int | None = None) -> list[Variant]:
        """The default (``repeat`` runs), fixed concurrencies, the ``--proc 1`` control
        and skopeo; runs that take minutes and vary little may run fewer times (said in
        the table's runs column)."""
        out = [Variant(DEFAULT, "imagesync", self.default_args)]
        for n in self.params.fixed if fixed is None else fixed:
            out.append(Variant(f"imagesync fixed {n}", "imagesync",
                               ("--proc", str(n), "--per-registry", str(n)), fixed_repeat))
        if control:
            out.append(Variant("imagesync --proc 1", "imagesync", ("--proc", "1"),
                               control_repeat))
        if skopeo:
            out.append(Variant("skopeo sync" + (" --all" if skopeo_all else ""), "skopeo",
                               ("--all",) if skopeo_all else (), skopeo_repeat))
        return out

    # -- one run -----------------------------------------------------------------------

    def command(self, v: Variant, wl: Workload, src_host: str, dst_host: str,
                extra: tuple[str, ...] = ()) -> tuple[list[str], Path | None]:
        self._n += 1
        cfg_dir = self.work / "configs"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{self._n:03d}-{v.tool}"
        if v.tool == "imagesync":
            cfg = cfg_dir / f"{tag}.yaml"
            rules = ({f"{src_host}/{wl.prefix}/*": f"{dst_host}/{wl.prefix}"}
                     if wl.name == "farm" else
                     {f"{src_host}/{r}": f"{dst_host}/{r}" for r in wl.repos})
            cfg.write_text(yaml.safe_dump({"images": rules}, sort_keys=False))
            report = cfg_dir / f"{tag}.report.json"
            return [*self.imagesync, "--config", str(cfg), "--report", str(report),
                    *v.args, *extra], report
        cfg = cfg_dir / f"{tag}.skopeo.yaml"
        images = {r: wl.tags(r) if wl.explicit else [] for r in wl.repos}
        cfg.write_text(yaml.safe_dump({src_host: {"images": images, "tls-verify": False}}))
        return ["skopeo", "sync", "--src", "yaml", "--dest", "docker",
                "--dest-tls-verify=false", "--preserve-digests", *v.args, str(cfg),
                f"{dst_host}/{wl.prefix}"], None

    def run_once(self, row: Row, v: Variant, wl: Workload, src_host: str, dst_host: str,
                 dst: LocalRegistry | None, sample: int | None,
                 extra: tuple[str, ...] = ()) -> Measurement:
        cmd, report = self.command(v, wl, src_host, dst_host, extra)
        log = self.logs / f"{self._n:03d}-{row.case.split()[0]}-{v.tool}.log"
        m = run_measured(v.tool, cmd, log, timeout=self.params.timeout)
        say(f"    {v.name}: {m.wall:.2f}s wall, {m.cpu:.2f}s CPU, {m.rss_mb:.0f} MB, "
            f"exit {m.returncode}")
        if m.timed_out:
            _note(row, f"ERROR: killed after {self.params.timeout:.0f}s")
        if m.returncode != 0:
            _note(row, f"ERROR: exit {m.returncode}: {log_tail(log, 3)}")
        if report is not None and m.returncode in (0, 1):
            with contextlib.suppress(OSError, ValueError, KeyError):
                s = json.loads(report.read_text())["summary"]
                _note(row, f"{s['synced']} synced, {s['skipped']} skipped, "
                      f"{s['failed']} failed")
        if dst is not None and "--dry-run" not in extra:
            problems = verify(RegistryAPI(dst), wl, sample=sample)
            if problems:
                _note(row, "ERROR: destination wrong: " + "; ".join(problems[:3]))
                say(f"    VERIFY FAILED: {problems[:3]}")
        if m.steal_pct > NOISY_STEAL:
            _note(row, f"noisy: {m.steal_pct:.0f}% CPU steal during a run")
        row.runs.append(m)
        return m

    def copy_case(self, case: str, wl: Workload, src_host: str, variants: list[Variant],
                  fresh: Callable[[str], tuple[str, LocalRegistry]], *,
                  sample: int | None = None, nbytes: int = 0) -> None:
        """Each run copies into a fresh destination: ``fresh(name)`` -> (host, registry)."""
        say(f"{case}: {wl.images} images, {wl.bytes / 1e6:.0f} MB")
        for v in variants:
            row = Row(case, v.name, work=f"{wl.images} images, {wl.bytes / 1e6:.0f} MB",
                      units=wl.images, bytes=nbytes or wl.bytes)
            for _ in range(v.repeat or self.params.repeat):
                host, reg = fresh(v.tool)
                self.run_once(row, v, wl, src_host, host, reg, sample)
                self.drop(reg)
            self.rows.append(row)

    def same_dst_case(self, case: str, wl: Workload, src_host: str, dst_host: str,
                      dst: LocalRegistry | None, variants: list[Variant], *,
                      extra: tuple[str, ...] = (), sample: int | None = None,
                      unit: str = "images") -> None:
        """Runs that leave the destination as they found it (no-op syncs, dry runs)."""
        say(f"{case}: {wl.images} {unit}")
        for v in variants:
            row = Row(case, v.name, work=f"{wl.images} {unit}", units=wl.images, unit=unit)
            for _ in range(v.repeat or self.params.repeat):
                self.run_once(row, v, wl, src_host, dst_host, dst, sample, extra)
            self.rows.append(row)

    # -- the cases ---------------------------------------------------------------------

    def measure_startup(self) -> None:
        """CPU of an imagesync process that does nothing (imports): subtracted from the
        CPU per GB figures, which are about the bytes, not the interpreter starting."""
        cpus = []
        for _ in range(3):
            m = run_measured("imagesync", [*self.imagesync, "--version"],
                             self.logs / "startup.log", timeout=60)
            cpus.append(m.cpu)
        self.startup_cpu = round(statistics.median(cpus), 3)
        say(f"imagesync startup: {self.startup_cpu:.2f}s CPU (median of 3)")

    def lan(self) -> None:
        p = self.params
        src = self.registry("lan-src")
        wl = seed_images(RegistryAPI(src), "lan", "lan", p.lan_repos, p.lan_tags,
                         p.lan_layers)
        self.describe("lan", wl)

        def fresh(tool: str) -> tuple[str, LocalRegistry]:
            reg = self.registry(f"lan-dst-{tool}")
            return reg.host, reg

        if "lan" in self.cases:
            self.copy_case("LAN bulk", wl, src.host,
                           self.variants(control=True), fresh)
        if "noop" in self.cases:
            dst = self.registry("lan-noop")
            self.prepare(wl, src.host, dst.host)
            self.same_dst_case("no-op LAN", wl, src.host, dst.host, dst,
                               self.variants(fixed=(8, 64)))
            self.drop(dst)
        self.drop(src)

    def wan(self) -> None:
        p = self.params
        src = self.registry("wan-src")
        wl = seed_images(RegistryAPI(src), "wan", "wan", p.wan_repos, p.wan_tags,
                         p.wan_layers)
        self.describe("wan", wl)
        src_proxy = self.wan_proxy(src)

        def fresh(tool: str) -> tuple[str, LocalRegistry]:
            reg = self.registry(f"wan-dst-{tool}")
            return self.wan_proxy(reg).host, reg

        if "wan" in self.cases:
            # skopeo and --proc 1 take minutes here, and vary little: one run each.
            self.copy_case("WAN small", wl, src_proxy.host,
                           self.variants(control=True, control_repeat=1, skopeo_repeat=1),
                           fresh)
        if "noop" in self.cases:
            dst = self.registry("wan-noop")
            host = self.wan_proxy(dst).host
            self.prepare(wl, src_proxy.host, host)
            self.same_dst_case("no-op WAN", wl, src_proxy.host, host, dst,
                               self.variants(fixed=(8, 64), skopeo_repeat=1))
            self.drop(dst)
        self.drop(src)

    def multi(self) -> None:
        p = self.params
        src = self.registry("multi-src")
        wl = seed_indexes(RegistryAPI(src), "multi", "multi", p.multi_repos, p.multi_tags,
                          p.multi_layers)
        self.describe("multi", wl)

        def fresh(tool: str) -> tuple[str, LocalRegistry]:
            reg = self.registry(f"multi-dst-{tool}")
            return reg.host, reg

        self.copy_case("multi-platform", wl, src.host,
                       self.variants(fixed=(8, 64), skopeo_all=True), fresh)
        self.drop(src)

    def big(self, capped: bool) -> None:
        size = self.params.big_size
        self.work.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.work).free
        if free < 3.3 * size + GiB:
            row = Row("capped layer" if capped else "big layer", "-",
                      notes=[f"SKIPPED: {free / GiB:.1f} GiB free"])
            self.rows.append(row)
            return
        src = self.registry("big-src")
        wl = seed_big_layer(RegistryAPI(src), size)
        self.describe("big", wl)
        host = src.host
        if capped:
            proxy = CappedProxy(src.host, per_connection=self.params.cap).start()
            self.proxies.append(proxy)
            host = proxy.host

        def fresh(tool: str) -> tuple[str, LocalRegistry]:
            reg = self.registry(f"big-dst-{tool}")
            return reg.host, reg

        if capped:
            # skopeo is the single connection: size / cap seconds, the same every time.
            variants = [Variant(DEFAULT, "imagesync", self.default_args),
                        Variant("skopeo sync (one connection)", "skopeo", (), 1)]
            case = f"capped layer ({self.params.cap / MiB:.0f} MiB/s per connection)"
        else:
            variants = self.variants(fixed=())
            case = "big layer"
        self.copy_case(case, wl, host, variants, fresh, nbytes=size)
        self.drop(src)

    def tags(self) -> None:
        n = self.params.many_tags
        src = self.registry("tags-src")
        wl = seed_many_tags(RegistryAPI(src), n)
        self.describe("tags", wl)

        def fresh(tool: str) -> tuple[str, LocalRegistry]:
            reg = self.registry(f"tags-dst-{tool}")
            return reg.host, reg

        once = 1 if n > 2000 else None  # skopeo: ~5 min a run
        self.copy_case(f"{n:,} tags", wl, src.host,
                       self.variants(fixed=(64,), skopeo_repeat=once, fixed_repeat=once),
                       fresh, sample=50)
        self.drop(src)

    def farm(self) -> None:
        p = self.params
        for repos in p.farm_sizes:
            src = self.registry("farm-src")
            dst = self.registry("farm-dst")
            t = time.monotonic()
            wl = seed_tag_farm(src.storage, "farm", repos, p.farm_tags, p.farm_images,
                               mirror=dst.storage, mirror_prefix="")
            n = wl.images
            say(f"farm: wrote {n:,} tags into each registry in {time.monotonic() - t:.0f}s")
            self.describe(f"farm-{n}", wl)
            empty = self.registry("farm-empty")
            big = n > 20_000  # minutes a run: the default alone, once
            vs = self.variants(fixed=() if big else (64,), skopeo=False, fixed_repeat=1)
            if big:
                vs = [dataclasses.replace(v, repeat=1) for v in vs]
            self.same_dst_case(f"dry run {n:,} tags", wl, src.host, empty.host, None, vs,
                               extra=("--dry-run",), unit="tags")
            self.same_dst_case(f"no-op {n:,} tags", wl, src.host, dst.host, dst, vs,
                               sample=20, unit="tags")
            self.drop(src, dst, empty)

    def prepare(self, wl: Workload, src_host: str, dst_host: str) -> None:
        """Fill a destination for no-op runs (not measured)."""
        cmd, _ = self.command(Variant("prepare", "imagesync"), wl, src_host, dst_host)
        m = run_measured("imagesync", cmd, self.logs / "prepare.log",
                         timeout=self.params.timeout)
        if m.returncode != 0:
            raise RuntimeError(f"preparing a no-op destination failed: "
                               f"{log_tail(self.logs / 'prepare.log', 5)}")

    def describe(self, name: str, wl: Workload) -> None:
        self.workloads[name] = {"repositories": len(wl.repos), "images": wl.images,
                                "bytes": wl.bytes}

    # -- verdicts ----------------------------------------------------------------------

    def by_case(self) -> dict[str, dict[str, Row]]:
        out: dict[str, dict[str, Row]] = {}
        for r in self.rows:
            out.setdefault(r.case, {})[r.variant] = r
        return out

    def cpu_per_gb(self, row: Row) -> float | None:
        if row.cpu is None or not row.bytes:
            return None
        return (row.cpu - (self.startup_cpu or 0.0)) / (row.bytes / 1e9)

    def judge(self) -> None:
        cases = self.by_case()
        for case, rows in cases.items():
            default = rows.get(DEFAULT)
            fixed = [r for name, r in rows.items()
                     if name.startswith("imagesync fixed") and r.wall_median]
            if default and default.wall_median and fixed:
                best = min(fixed, key=lambda r: r.wall_median or 0)
                ratio = default.wall_median / (best.wall_median or 1)
                self.checks.append(Check(
                    f"{case}: default vs best fixed ({best.variant.split()[-1]})",
                    f"{ratio:.2f}x the time", "<= 1.10x", ratio <= 1.10))
        for case, want in (("WAN small", 10.0), ("LAN bulk", 1.3)):
            rows = cases.get(case, {})
            ours, theirs = rows.get(DEFAULT), next(
                (r for n, r in rows.items() if n.startswith("skopeo")), None)
            if ours and theirs and ours.wall_median and theirs.wall_median:
                speed = theirs.wall_median / ours.wall_median
                self.checks.append(Check(f"{case}: speed vs skopeo", f"{speed:.1f}x",
                                         f">= {want}x", speed >= want))
        for case in ("LAN bulk", "big layer"):
            row = cases.get(case, {}).get(DEFAULT)
            if row is not None and (v := self.cpu_per_gb(row)) is not None:
                raw = (row.cpu or 0) / (row.bytes / 1e9)
                self.checks.append(Check(
                    f"{case}: client CPU per GB", f"{v:.2f}s ({raw:.2f}s with startup)",
                    "<= 1.5s", v <= 1.5))
        for case, rows in cases.items():
            if case.startswith("capped"):
                ours = rows.get(DEFAULT)
                one = next((r for n, r in rows.items() if n.startswith("skopeo")), None)
                if ours and ours.wall_median and one and one.wall_median:
                    x = one.wall_median / ours.wall_median
                    rate = ours.bytes / ours.wall_median / MiB
                    self.checks.append(Check(
                        "capped layer: vs one connection",
                        f"{x:.1f}x ({rate:.0f} MiB/s; cap {self.params.cap / MiB:.0f} "
                        "MiB/s per connection)", ">= 3x", x >= 3))
        rss = [(r.rss, f"{r.case} / {r.variant}") for r in self.rows
               if r.variant.startswith("imagesync") and r.rss]
        if rss:
            worst = max(rss)
            self.checks.append(Check("peak RSS, every imagesync run",
                                     f"{worst[0]:.0f} MB ({worst[1]})",
                                     f"< {RSS_LIMIT_MB:.0f} MB", worst[0] < RSS_LIMIT_MB))
        farm = {c: rs.get(DEFAULT) for c, rs in cases.items()
                if c.startswith(("dry run", "no-op")) and "tags" in c}
        for kind in ("dry run", "no-op"):
            sized = sorted((r.units, r) for c, r in farm.items()
                           if r is not None and c.startswith(kind) and r.rss)
            if len(sized) >= 2:
                (n0, r0), (n1, r1) = sized[0], sized[-1]
                growth = (r1.rss or 0) - (r0.rss or 0)
                self.checks.append(Check(
                    f"{kind}: RSS growth {n0:,.0f} -> {n1:,.0f} tags",
                    f"{growth:+.0f} MB ({r0.rss:.0f} -> {r1.rss:.0f})", "< 30 MB",
                    growth < 30))
            for n, r in sized:
                self.checks.append(Check(f"{kind}: {n:,.0f} tags", f"{r.rate:,.0f} tags/s",
                                         ">= 1,000 tags/s (4x ~250 today)",
                                         (r.rate or 0) >= 1000))
        if any(n.startswith("ERROR") for r in self.rows for n in r.notes):
            self.checks.append(Check("every run succeeded and verified", "no", "yes", False))

    # -- output ------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        total0, steal0 = cpu_counters()
        try:
            self.measure_startup()
            if {"lan", "noop"} & set(self.cases):
                self.lan()
            if {"wan", "noop"} & set(self.cases):
                self.wan()
            if "multi" in self.cases:
                self.multi()
            if "big" in self.cases:
                self.big(capped=False)
            if "capped" in self.cases:
                self.big(capped=True)
            if "tags" in self.cases:
                self.tags()
            if "farm" in self.cases:
                self.farm()
        finally:
            self.cleanup()
        total1, steal1 = cpu_counters()
        steal = 100 * (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0
        self.judge()
        elapsed = time.monotonic() - started
        meta = self.meta(elapsed, steal)
        print(render_text(self.rows, self.checks, self))
        OUT.mkdir(exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(
            {"meta": meta, "rows": [r.to_json() for r in self.rows],
             "checks": [dataclasses.asdict(c) for c in self.checks]}, indent=2) + "\n")
        (OUT / "results.md").write_text(render_markdown(self.rows, self.checks, meta, self))
        say(f"done in {elapsed / 60:.1f} min; wrote {OUT / 'results.md'} and "
            f"{OUT / 'results.json'}")
        return 1 if any(c.ok is False for c in self.checks) else 0

    def meta(self, elapsed: float, steal: float) -> dict:
        return {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if self.args.quick else "full",
            "cases": self.cases,
            "params": dataclasses.asdict(self.params),
            "workloads": self.workloads,
            "wan_handshake_rtt": self.args.handshake_rtt,
            "storage": str(self.work.parent),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "skopeo": _version(["skopeo", "--version"]),
            "registry": _version(["docker-registry", "--version"]),
            "imagesync": " ".join(self.imagesync),
            "default_args": " ".join(self.default_args),
            "startup_cpu_s": self.startup_cpu,
            "steal_pct": round(steal, 1),
            "load_at_end": os.getloadavg()[0],
            "elapsed_s": round(elapsed, 1),
        }


def _note(row: Row, note: str) -> None:
    if note not in row.notes:
        row.notes.append(note)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


COLUMNS = ("case", "variant", "runs", "wall min s", "wall median s", "CPU s",
           "CPU s/GB", "peak RSS MB", "rate", "steal %")


def _cells(r: Row, bench: Bench) -> list[str]:
    rate = "-"
    if r.rate is not None:
        rate = f"{r.rate:,.0f} {r.unit}/s" if r.unit == "tags" else (
            f"{r.bytes / (r.wall_median or 1) / MiB:,.0f} MiB/s" if r.bytes > 100 * MiB
            else f"{r.rate:,.1f} {r.unit}/s")
    per_gb = bench.cpu_per_gb(r) if r.variant.startswith("imagesync") else (
        (r.cpu or 0) / (r.bytes / 1e9) if r.bytes and r.cpu else None)
    return [r.case, r.variant, str(len(r.runs)), _fmt(r.wall_min), _fmt(r.wall_median),
            _fmt(r.cpu), _fmt(per_gb if r.bytes > 100 * MiB else None),
            _fmt(r.rss, 0), rate, _fmt(r.steal, 0)]


def render_text(rows: list[Row], checks: list[Check], bench: Bench) -> str:
    cells = [list(COLUMNS), *(_cells(r, bench) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "checks:"]
    lines += [f"  {'PASS' if c.ok else 'FAIL' if c.ok is False else '-   '}  {c.what}: "
              f"{c.value} (target {c.target})" for c in checks]
    notes = [f"  {r.case} / {r.variant}: {n}" for r in rows for n in r.notes]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def render_markdown(rows: list[Row], checks: list[Check], meta: dict, bench: Bench) -> str:
    out = [
        "# imagesync vs skopeo sync",
        "",
        f"{meta['date']}, {meta['mode']} run on {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"Linux {meta['kernel']}, Python {meta['python']}, {meta['skopeo']}, "
        f"{meta['registry']}; registries' storage under {meta['storage']}; CPU steal "
        f"{meta['steal_pct']:.1f}% over the whole run; {meta['elapsed_s'] / 60:.0f} min "
        "in all.",
        "",
        "Wall: min and median of the runs; CPU: median user+sys of the tool's process; "
        "CPU s/GB: imagesync's net of its start-up "
        f"({meta['startup_cpu_s']} s CPU to import and exit); peak RSS: the highest "
        "ru_maxrss of the runs (MB = 10^6 bytes). `default`: no `--proc` (adaptive "
        "concurrency per registry"
        + (f", run as `{meta['default_args']}`" if meta["default_args"] else "")
        + "); `fixed N`: `--proc N --per-registry N`. "
        f"WAN: {meta['params']['latency'] * 1000:.0f} ms each way through a proxy in front "
        "of source and destination"
        + (", plus a round trip per new connection." if meta["wan_handshake_rtt"]
           else ", new connections free."),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    out += ["| " + " | ".join(_cells(r, bench)) + " |" for r in rows]
    out += ["", "| check | measured | target | |", "|---|---|---|---|"]
    out += [f"| {c.what} | {c.value} | {c.target} | "
            f"{'PASS' if c.ok else 'FAIL' if c.ok is False else '-'} |" for c in checks]
    notes = [f"- {r.case} / {r.variant}: {n}" for r in rows for n in r.notes]
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


CASES = ("lan", "wan", "noop", "multi", "big", "capped", "tags", "farm")


def parse_cases(value: str) -> list[str]:
    tokens = [c.strip().lower() for c in value.split(",") if c.strip()]
    bad = [c for c in tokens if c not in CASES]
    if bad or not tokens:
        raise argparse.ArgumentTypeError(
            f"cases are {', '.join(CASES)} (comma-separated); not {value!r}")
    return [c for c in CASES if c in tokens]


def _iter_cases() -> Iterator[str]:  # for --help
    yield from CASES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description="imagesync vs skopeo sync (see module docstring)")
    p.add_argument("--quick", action="store_true",
                   help="small workloads, one run each: a few minutes")
    p.add_argument("--cases", type=parse_cases, default=list(CASES),
                   help=f"comma-separated subset of {','.join(_iter_cases())}")
    p.add_argument("--repeat", type=int, default=None, help="runs per variant (default 3)")
    p.add_argument("--no-handshake-rtt", dest="handshake_rtt", action="store_false",
                   help="WAN: new connections cost no extra round trip")
    p.add_argument("--storage", metavar="DIR", default=None,
                   help="where the registries keep their data (default .bench/; /dev/shm "
                        "takes the disk out of the measurement, needs ~4 GiB)")
    p.add_argument("--keep", action="store_true", help="keep registries' storage")
    p.add_argument("--imagesync", metavar="CMD", default=None,
                   help="the imagesync command (default: this Python -m imagesync), e.g. "
                        "to measure another checkout")
    p.add_argument("--default-args", metavar="ARGS", default=None,
                   help="arguments of the 'default' imagesync runs (e.g. '--proc 64' while "
                        "the CLI's own default is not yet the adaptive one)")
    args = p.parse_args(argv)
    for exe in ("skopeo", "docker-registry"):
        if shutil.which(exe) is None:
            print(f"benchmarks: {exe} not found; run `make deps`", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
