"""The shipped unit under a real systemd: start, a burst, reload, the watchdog, a stop mid-burst.

    sudo .venv/bin/python tests/systemd/trial.py [--watchdog] [--keep] [--installed]

Not part of the test suite (it needs root, ``unshare``, ``nsenter`` and systemd >= 250 installed,
and takes about a minute; ``--watchdog`` adds a minute more). It is the check to run after a
change to ``config/hangup-listener.service`` or to how the daemon starts and stops.

systemd runs as PID 1 of its own PID, mount and cgroup namespaces, with its own ``/run``, ``/tmp``
and ``/var/tmp`` (tmpfs) and the early-boot units masked: the host's files and services are not
touched (its mounts are made shared inside the namespace, as on a booted host: without that,
``LoadCredential=`` leaves an empty directory). It runs ``config/hangup-listener.service`` as
shipped (hardening and all) with a drop-in that only points it at this checkout (a virtual
environment made from ``/usr/bin/python3``, as ``docs/operations.md`` says; with ``--installed``, the
unit and the virtual environment the Debian package installed instead), at a trial
configuration that names its password and secret as credentials (``LoadCredential=`` from files
in the trial's folder), and at a state directory of its own. A fake FreeSWITCH
(``bench.fakefs``) and a receiver (``bench.receiver``) run on the host, on 127.0.0.1.

Checks: ``systemctl start`` returns once ready, with the status line; 2,000 hangups are classified
and delivered, every webhook signed with the secret the service read from its credentials
directory; ``systemctl reload`` applies the configuration; the watchdog is pinged (with
``--watchdog``: a daemon frozen by SIGSTOP is killed and restarted); the unit runs one process, with
no children, while it ingests and delivers; ``systemctl
stop`` mid-burst ends with ``Result=success``, exit 0, ``listener.stopped`` last and no error line;
with another process holding the outbox's lock, the unit fails with 75 and is not restarted.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.harness import SECRET, Child  # noqa: E402
from bench.verify import signed  # noqa: E402

UNIT = "hangup-listener.service"
INSTALLED_UNIT = Path("/lib/systemd/system") / UNIT
INSTALLED_VENV = Path("/opt/hangup-listener")
STATE = "hangup-listener-trial"
MASKED = (
    "sysinit.target", "basic.target", "local-fs.target", "swap.target", "timers.target",
    "sockets.target", "network-online.target", "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-clean.timer", "systemd-udevd.service", "systemd-remount-fs.service",
    "systemd-sysctl.service", "systemd-timesyncd.service", "systemd-journald.service",
    "systemd-journald.socket",
)
"""Early-boot units a booting systemd would start; masked, they cannot clean or change the host
(``systemd-tmpfiles-setup`` would empty the host's /tmp, for one)."""

BOOT = """#!/bin/sh
set -eu
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mount --make-rshared /
mkdir -p /run/systemd/system
cp -r {units}/. /run/systemd/system/
for unit in {masked}; do ln -sf /dev/null "/run/systemd/system/$unit"; done
exec env container=hangup-listener-trial /usr/lib/systemd/systemd --system --unit=trial.target \\
    --log-target=kmsg --log-level=info
"""

DROP_IN = """[Unit]
DefaultDependencies=no
[Service]
LoadCredential=
LoadCredential=esl-password:{credentials}/esl-password
LoadCredential=webhook-crm:{credentials}/webhook-crm
ExecStart=
ExecStart={venv}/bin/hangup-listener run --config {config}
StateDirectory=
StateDirectory={state}
WorkingDirectory=/var/lib/{state}
StandardOutput=append:{log}
StandardError=append:{log}
"""


class TrialError(Exception):
    pass


def wait_for(what: str, ok: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise TrialError(f"not within {timeout:g}s: {what}")
        time.sleep(0.2)


class Trial:
    def __init__(self, folder: Path, installed: bool = False) -> None:
        self.folder = folder
        self.log = folder / "daemon.log"
        self.installed = installed
        self.venv = INSTALLED_VENV if installed else folder / "venv"
        self.unit = INSTALLED_UNIT if installed else ROOT / "config" / UNIT
        self.systemd: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self.results: list[tuple[str, str]] = []

    # -- set-up ---------------------------------------------------------------------------------

    def install(self) -> None:
        if self.installed:
            return
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(self.venv)], check=True)
        subprocess.run([str(self.venv / "bin/pip"), "install", "-q", str(ROOT)], check=True)

    def write(self, esl_port: int, receiver_port: int) -> None:
        config = self.folder / "listener.toml"
        config.write_text(
            f'[[freeswitch]]\nname = "pbx1"\nport = {esl_port}\npassword_file = "esl-password"\n'
            f'[[webhooks]]\nname = "crm"\nurl = "http://127.0.0.1:{receiver_port}/hook"\n'
            f'secret_file = "webhook-crm"\n[health]\nport = 0\n')
        credentials = self.folder / "credentials"
        credentials.mkdir(mode=0o700)
        (credentials / "esl-password").write_text("ClueCon\n")
        (credentials / "webhook-crm").write_text(SECRET + "\n")
        for secret in credentials.iterdir():
            secret.chmod(0o600)
        units = self.folder / "units"
        (units / f"{UNIT}.d").mkdir(parents=True)
        shutil.copy(self.unit, units / UNIT)
        (units / f"{UNIT}.d" / "trial.conf").write_text(
            DROP_IN.format(venv=self.venv, config=config, state=STATE, log=self.log, credentials=credentials))
        (units / "trial.target").write_text("[Unit]\nDefaultDependencies=no\n")
        boot = self.folder / "boot.sh"
        boot.write_text(BOOT.format(units=units, masked=" ".join(MASKED)))
        boot.chmod(0o755)
        self.log.touch()

    def boot(self) -> None:
        self.systemd = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--cgroup", "--propagation", "private",
             "--mount-proc", str(self.folder / "boot.sh")], stdin=subprocess.DEVNULL)
        wait_for("systemd up", self._found_pid1, 30)
        wait_for("systemd answers", lambda: self.ctl("show", "-pVersion", check=False).returncode == 0, 30)

    def _found_pid1(self) -> bool:
        assert self.systemd is not None
        try:
            children = Path(f"/proc/{self.systemd.pid}/task/{self.systemd.pid}/children").read_text().split()
        except OSError:
            return False
        if children:
            self.pid1 = int(children[0])
        return bool(children)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-p", "systemctl", *args],
                              capture_output=True, text=True, check=check, timeout=120)

    def show(self, *names: str) -> dict[str, str]:
        out = self.ctl("show", UNIT, *(f"-p{name}" for name in names)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def lines(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"event": "<not json>", "level": "error", "text": raw})
        return out

    def events(self, name: str) -> int:
        return sum(line.get("event") == name for line in self.lines())

    def check(self, what: str, ok: bool, detail: str) -> None:
        self.results.append((what, "ok" if ok else f"FAILED: {detail}"))
        print(f"{'ok    ' if ok else 'FAILED'} {what}: {detail}", flush=True)
        if not ok:
            raise TrialError(what)

    # -- the checks ---------------------------------------------------------------------------

    def run(self, fake: Child, receiver: Child, watchdog: bool) -> None:
        start = time.monotonic()
        self.ctl("start", UNIT)
        shown = self.show("ActiveState", "StatusText", "NRestarts")
        self.check("start returns once ready", shown["ActiveState"] == "active",
                   f"{shown} after {time.monotonic() - start:.1f}s")
        wait_for("connected", lambda: "connected" in self.show("StatusText")["StatusText"], 30)
        self.check("status line", True, self.show("StatusText")["StatusText"])
        fake.ask("burst 2000", 120)
        processes = self.processes()
        done = receiver.ask("target 2000", 120)
        wait_for("2,000 classified", lambda: self.events("leg.classified") >= 2000, 60)
        self.check("2,000 hangups classified and delivered", done["unique"] == 2000,
                   f"{self.events('leg.classified')} classified, {done['unique']} webhooks")
        main = host_pid(self.pid1, int(self.show("MainPID")["MainPID"]))
        self.check("one process, no children", processes == [main],
                   f"the unit's processes mid-burst: {processes} (main {main})")
        webhooks = (self.folder / "webhooks.txt").read_bytes().splitlines()
        valid = sum(signed(*line.split(b" ", 4)[1:]) for line in webhooks)
        self.check("signed with the secret from LoadCredential=", valid == len(webhooks) >= 2000,
                   f"{valid} of {len(webhooks)} signatures valid")

        self.ctl("reload", UNIT)
        wait_for("config.reloaded", lambda: self.events("config.reloaded") >= 1, 30)
        self.check("reload", True, "config.reloaded logged")

        first = self.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        wait_for("a watchdog ping", lambda: self.show("WatchdogTimestampMonotonic")[
            "WatchdogTimestampMonotonic"] != first, 40)
        pinged = self.show("WatchdogTimestamp")["WatchdogTimestamp"]
        self.check("watchdog pinged", True, f"last ping {pinged}")
        if watchdog:
            self.frozen()

        classified = self.events("leg.classified")
        fake.tell("burst 20000")
        wait_for("the burst under way", lambda: self.events("leg.classified") >= classified + 500, 60)
        self.ctl("stop", UNIT)
        shown = self.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        lines = self.lines()
        bad = [line for line in lines if line.get("level") in ("error", "critical")]
        self.check("stop mid-burst", shown["Result"] == "success" and shown["ExecMainStatus"] == "0"
                   and lines[-1].get("event") == "listener.stopped" and not bad,
                   f"{shown}, last line {lines[-1].get('event')}, error lines {bad[:3]}")
        self.refused()

    def refused(self) -> None:
        """Another process holds the outbox's lock: the unit fails with 75 and systemd does not restart it."""
        before = self.show("NRestarts")["NRestarts"]
        lock = Path("/var/lib/private") / STATE / "outbox.sqlite3.lock"
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.ctl("start", UNIT, check=False)
            wait_for("the unit failed", lambda: self.show("ActiveState")["ActiveState"] == "failed", 30)
            shown = self.show("Result", "ExecMainStatus", "NRestarts")
        locked = self.events("listener.outbox_locked")
        self.check("a second holder of the outbox is refused with 75, not restarted",
                   shown["ExecMainStatus"] == "75" and shown["NRestarts"] == before and locked == 1,
                   f"{shown}, {locked} listener.outbox_locked line")
        self.ctl("reset-failed", UNIT)

    def processes(self) -> list[int]:
        """The host PIDs of every process in the trial's namespace but systemd and our systemctl calls."""
        namespace = os.readlink(f"/proc/{self.pid1}/ns/pid")
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or os.readlink(proc / "ns/pid") != namespace:
                    continue
                command = (proc / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if int(proc.name) != self.pid1 and Path(command.decode()).name not in ("systemctl", "nsenter"):
                found.append(int(proc.name))
        return sorted(found)

    def frozen(self) -> None:
        """SIGSTOP the daemon: no ping for 30 s, systemd kills the unit and starts it again."""
        main = int(self.show("MainPID")["MainPID"])
        host = host_pid(self.pid1, main)
        before = int(self.show("NRestarts")["NRestarts"])
        os.kill(host, signal.SIGSTOP)
        wait_for("the watchdog's restart", lambda: int(self.show("NRestarts")["NRestarts"]) > before, 90)
        wait_for("active again", lambda: self.show("ActiveState")["ActiveState"] == "active", 30)
        self.check("a frozen daemon is killed by the watchdog and restarted", True,
                   f"NRestarts {before} -> {self.show('NRestarts')['NRestarts']}")

    def close(self) -> None:
        if self.systemd is not None:
            if self.pid1:
                os.kill(self.pid1, signal.SIGKILL)  # PID 1 of the namespace: everything in it goes with it
            else:
                self.systemd.kill()  # systemd never came up: unshare (and its child) go
            self.systemd.wait(timeout=30)
        for path in (Path("/var/lib") / STATE, Path("/var/lib/private") / STATE):
            if path.is_symlink():
                path.unlink()
            elif path.exists():
                shutil.rmtree(path)


def host_pid(pid1: int, inside: int) -> int:
    """The host's PID of the process that is ``inside`` in the namespace of ``pid1``."""
    namespace = os.readlink(f"/proc/{pid1}/ns/pid")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            if os.readlink(proc / "ns/pid") != namespace:
                continue
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == str(inside):
                return int(proc.name)
    raise TrialError(f"no host PID for {inside}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchdog", action="store_true", help="also freeze the daemon (a minute more)")
    parser.add_argument("--keep", action="store_true", help="keep the trial's folder (log, units)")
    parser.add_argument("--installed", action="store_true",
                        help=f"run the unit and the venv the Debian package installed ({INSTALLED_UNIT})")
    args = parser.parse_args()
    if args.installed and not (INSTALLED_UNIT.exists() and (INSTALLED_VENV / "bin").exists()):
        print(f"--installed: no {INSTALLED_UNIT} or {INSTALLED_VENV} (dpkg -i the package)", file=sys.stderr)
        return 2
    if os.geteuid() != 0 or not shutil.which("unshare") or not Path("/usr/lib/systemd/systemd").exists():
        print("needs root, unshare and /usr/lib/systemd/systemd", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="hangup-listener-systemd-", dir="/var/lib"))
    folder.chmod(0o755)  # the service's dynamic user reads the virtual environment and the config
    trial = Trial(folder, installed=args.installed)
    fake = Child("bench.fakefs", 11, stderr=subprocess.DEVNULL)  # its traceback when the daemon stops
    receiver = Child("bench.receiver", folder / "webhooks.txt")
    try:
        trial.install()
        trial.write(fake.read()["port"], receiver.read()["port"])
        receiver.ask("listen")
        trial.boot()
        trial.run(fake, receiver, args.watchdog)
    except (TrialError, subprocess.CalledProcessError, TimeoutError) as exc:
        print(f"trial failed: {exc}; the daemon's log: {trial.log}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        trial.close()
        fake.proc.kill()
        receiver.close()
        if not args.keep:
            shutil.rmtree(folder)
    print(f"all {len(trial.results)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
