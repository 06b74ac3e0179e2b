"""`make demo`: two loopback registries, sample images, a real sync, the report.

Registry storage lives in .demo/ so that a second `make demo` finds the destination
complete and reports every image skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.images import RegistryAPI, push_index, push_random_image
from tests.support.registry import start_registry

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"

# repository -> tags; fixed seeds make the same images on every run.
SAMPLES = {
    "team/api": ["v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0"],
    "team/web": ["latest", "1.0"],
    "team/worker": ["1.0.0", "1.5.0", "2.0.0", "2.1.0-rc1", "3.0.0"],
}


def seed(api: RegistryAPI) -> int:
    """Push the sample images unless they are already there. Returns how many were pushed."""
    pushed = 0
    for n, tag in enumerate(["3.19", "3.20"]):
        if api.head_manifest("library/alpine", tag) is None:
            push_index(api, "library/alpine", tag, seed=100 + n, layer_sizes=(256 << 10, 4096))
            pushed += 1
    for r, (repo, tags) in enumerate(SAMPLES.items()):
        for t, tag in enumerate(tags):
            if api.head_manifest(repo, tag) is None:
                push_random_image(api, repo, tag, (512 << 10, 64 << 10, 2048),
                                  seed=1000 * r + t)
                pushed += 1
    return pushed


def main() -> int:
    WORK.mkdir(exist_ok=True)
    with start_registry(WORK, name="src", reuse=True) as src, \
         start_registry(WORK, name="dst", reuse=True) as dst:
        print(f"source registry      http://{src.host}   (storage {src.root})")
        print(f"destination registry http://{dst.host}   (storage {dst.root})")
        n = seed(RegistryAPI(src))
        print(f"seeded {n} sample images" if n else "sample images already seeded")
        report = WORK / "report.json"
        cmd = [str(Path(sys.executable).with_name("imagesync")), "--config",
               str(ROOT / "examples" / "demo.yaml"), "--report", str(report),
               "--log", str(WORK / "imagesync.log")]
        print("$ " + " ".join(cmd[0:1]).rsplit("/", 1)[-1] + " " + " ".join(cmd[1:]))
        env = {**os.environ, "DEMO_SRC": src.host, "DEMO_DST": dst.host}
        code = subprocess.call(cmd, env=env)
        doc = json.loads(report.read_text())
        print(f"\nreport ({report.relative_to(ROOT)}):")
        for entry in doc["images"]:
            detail = f"{entry['bytes']:>9} B" if entry["status"] == "synced" else (
                entry.get("error") or entry.get("note") or "")
            print(f"  {entry['status']:<8} {entry['destination']:<50} {detail}")
        print(f"\nexit code {code}; logs in .demo/imagesync.log. "
              "Run `make demo` again: everything is skipped.")
        return code


if __name__ == "__main__":
    sys.exit(main())
