"""Takes a tritonserver down with its supervisor, however the supervisor dies.

tritonserver runs in a process group of its own (started with setsid), so that the supervisor
(`serving.tritonserver`) can stop it, its python-backend stubs and their DiT workers
together. Nothing ties that group to the supervisor's life, though: a supervisor killed
by SIGKILL (the OOM killer, `kill -9`, a bare-host service manager) would leave the
server serving on its ports, with its shared-memory regions, as an orphan.

So the supervisor starts this small process beside the server, also under setsid
(out of both groups), with a pipe on its stdin whose only writer is the supervisor. When the
supervisor dies, the kernel closes that pipe and the read below returns end-of-file:
the reaper then stops the server's process group (SIGTERM, SIGKILL after a short
grace) and removes the run's shm regions and its work directory. A supervisor that
stops the server itself writes one byte first, and the reaper exits untouched.

Only the standard library is imported: it starts in milliseconds and never loads torch.

    python -m mochi_runtime.serving.reaper PGID SHM_PREFIX [WORK_DIR]
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import sys
import time
from pathlib import Path

GRACE_S = 4.0  # SIGTERM first (Triton unloads its models), SIGKILL for what is left after this


def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is `pgid`, from /proc."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.split("/")[2]))
    return pids


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def remove_shm(prefix: str) -> None:
    """Remove the shared-memory regions of one server run (its python backend's `shm-region-prefix-name`)."""
    for p in glob.glob(f"/dev/shm/{prefix}*"):
        try:
            os.unlink(p)
        except OSError:
            pass


def take_down(pgid: int, shm_prefix: str, work_dir: str | None, grace_s: float = GRACE_S) -> None:
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while processes_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while processes_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    remove_shm(shm_prefix)
    if work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the supervisor is the supervisor's
    pgid, prefix, work_dir = int(args[0]), args[1], (args[2] if len(args) == 3 else None)
    if sys.stdin.buffer.read(1):  # the supervisor's own clean stop
        return 0
    take_down(pgid, prefix, work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
