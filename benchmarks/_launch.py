"""Fork+exec a command and report its rusage: ``python -I -S _launch.py OUT CMD...``.

A child's ru_maxrss on Linux includes the RSS of the process it was forked from (the
high-water mark survives execve), so measuring a tool forked straight from the benchmark
process would report the benchmark's own RSS. This launcher is a fresh, small process
(~8 MB, the floor of every measurement) that forks the tool and writes
``wall user sys maxrss_kib`` to OUT.
"""

import os
import sys
import time


def main() -> int:
    out, cmd = sys.argv[1], sys.argv[2:]
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            os.write(2, f"cannot run {cmd[0]}: {e}\n".encode())
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    with open(out, "w") as f:
        f.write(f"{wall} {usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss}\n")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
