"""Jamf publish benchmark: a fleet of Macs against the fake Jamf Pro server, first publish and republishes.

    .venv/bin/python benchmarks/publish_jamf.py --macs 2000

Compiles the fleet with the real ``mdmgen compile`` (plus a quarter as many Linux devices, which
Jamf never sees), starts the fake Jamf Pro server on loopback (tests/fakes/jamf_server.py, which
records every request it receives) with every Mac enrolled, and runs the real
``mdmgen publish jamf`` as a subprocess with the credentials in its environment. As on a
corporate network, the fake serves HTTPS (its certificate trusted through ``SSL_CERT_FILE``)
and is reached through a real tinyproxy given only by ``HTTPS_PROXY`` (``--no-proxy``: direct);
it rewrites the profiles' display metadata as Jamf is reported to (``--storing-jamf``: it keeps
what is sent). Times are
wall-clock seconds of the command (interpreter start-up included); request counts are what
the server saw. Every run logs with ``-vv``, and its output is checked for the client secret
and every token the server issued.

The first publish is made hard on purpose: the first profile create gets a 500, the first
inventory lookup a 503 with ``Retry-After: 1``, every access token is expired by force after a
third of the creates, tokens live only 20 seconds, and
Jamf Cloud's cluster lag hides each new profile from the first read on another node (the
client keeps the sticky-session cookie, so it should never meet it). Then: a republish with no change (it must write
nothing), one Mac changed (one write), and ``--prune`` after 30% of the inventory is gone
(refused, exit 6, nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fakes.jamf_server import (  # noqa: E402
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Computer,
    FakeJamfServer,
)
from tests.fakes.proxy import TinyProxy  # noqa: E402
from tests.fakes.tls import self_signed  # noqa: E402

PROFILES = "/JSSResource/osxconfigurationprofiles"


def write_inventory(path: Path, macs: int, *, changed: int | None = None, keep: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["serial_number,platform,user_email,team"]
    for i in range(keep if keep is not None else macs):
        rows.append(f"C02B{i:07d},macos,user{i}+mac@example.com,{'Moved Team' if i == changed else f'team{i % 8}'}")
    rows += [f"LNX{i:07d},linux,user{i}+linux@example.com,team{i % 8}" for i in range(macs // 4)]
    path.write_text("\n".join(rows) + "\n")


def run(args: list[str], workdir: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mdmgen", *args], cwd=workdir, env=env,
                            capture_output=True, text=True, check=False)
    return time.perf_counter() - started, result


def publish(jamf: FakeJamfServer, workdir: Path, env: dict[str, str], *extra: str,
            expect: int = 0) -> tuple[float, Counter, subprocess.CompletedProcess]:
    jamf.wait_idle()
    jamf.reset_stats()
    elapsed, result = run(["publish", "jamf", "--url", jamf.url, "--json", "-vv", *extra], workdir, env)
    if result.returncode != expect:
        raise SystemExit(f"publish {' '.join(extra)} exited {result.returncode}: {result.stderr}")
    jamf.wait_idle()
    tokens = {r.headers["Authorization"].split()[-1] for r in jamf.requests if "Authorization" in r.headers}
    leaked = [s for s in (DEFAULT_CLIENT_SECRET, *tokens) if s in result.stdout + result.stderr]
    assert not leaked, "a secret or token appeared in the output"
    return elapsed, kinds(jamf), result


def kinds(jamf: FakeJamfServer) -> Counter:
    counts: Counter = Counter()
    for r in jamf.requests:
        if r.path.endswith("/oauth/token"):
            kind = "token"
        elif "computers-inventory" in r.path:
            kind = "lookup"
        elif r.path == PROFILES:
            kind = "list"
        else:
            kind = {"GET": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}[r.method]
        counts[kind] += 1
        if r.status == 401:
            counts["401"] += 1
        if r.fault:
            counts[r.fault] += 1
    counts["writes"] = jamf.write_count
    counts["peak connections"] = jamf.peak_connections
    return counts


def describe(counts: Counter) -> str:
    order = ("token", "list", "lookup", "read", "create", "update", "delete")
    total = sum(counts[k] for k in order)
    text = ", ".join(f"{k} {counts[k]}" for k in order if counts[k]) + f" (total {total}); writes {counts['writes']}"
    extra = [f"{k} {v}" for k, v in counts.items() if k not in (*order, "writes")]
    return text + ("; " + ", ".join(extra) if extra else "")


def expire_tokens_after(jamf: FakeJamfServer, creates: int, stop: threading.Event) -> None:
    while not stop.is_set():
        if sum(1 for r in jamf.requests if r.method == "POST" and r.path == f"{PROFILES}/id/0") >= creates:
            jamf.expire_all_tokens()
            return
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=5, help="mdmgen publish jamf --jobs (at most 5)")
    parser.add_argument("--no-proxy", action="store_true", help="reach the fake directly, not through tinyproxy")
    parser.add_argument("--storing-jamf", action="store_true",
                        help="a fake that stores the display metadata as sent instead of rewriting it")
    args = parser.parse_args()
    jobs = ["--jobs", str(args.jobs)]
    computers = [Computer(1000 + i, f"mac-{i}", f"C02B{i:07d}") for i in range(args.macs)]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        certificate = self_signed(workdir / "tls")
        jamf = stack.enter_context(FakeJamfServer(computers, oauth_token_lifetime=20, tls=certificate,
                                                  normalise_metadata=not args.storing_jamf))
        env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
        env.update(JAMF_CLIENT_ID=DEFAULT_CLIENT_ID, JAMF_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
                   SSL_CERT_FILE=str(certificate[0]))
        proxy = None
        if not args.no_proxy:
            proxy = stack.enter_context(TinyProxy(workdir / "proxy"))
            env["HTTPS_PROXY"] = proxy.url
        shutil.copytree(ROOT / "profiles", workdir / "profiles")
        inventory = workdir / "inventory" / "devices.csv"
        write_inventory(inventory, args.macs)
        compiled, result = run(["compile", "--quiet"], workdir, env)
        if result.returncode:
            raise SystemExit(f"compile failed: {result.stderr}")

        jamf.fail_next(1, 500, method="POST", path=f"{PROFILES}/id/0")
        jamf.fail_next(1, 503, path="/api/*/computers-inventory", headers=(("Retry-After", "1"),))
        jamf.lag_after_create(reads=1, honour_sticky_cookie=True)
        stop = threading.Event()
        watcher = threading.Thread(target=expire_tokens_after, args=(jamf, args.macs // 3, stop))
        watcher.start()
        try:
            first, first_counts, _ = publish(jamf, workdir, env, *jobs)
        finally:
            stop.set()
            watcher.join()
        jamf.clear_faults()
        profiles = len(jamf.profiles())
        assert profiles == args.macs, profiles

        same, same_counts, same_result = publish(jamf, workdir, env, *jobs)
        assert same_counts["writes"] == 0 and json.loads(same_result.stdout)["uploaded"] == 0

        write_inventory(inventory, args.macs, changed=args.macs // 2)
        run(["compile", "--quiet"], workdir, env)
        one, one_counts, _ = publish(jamf, workdir, env, *jobs)
        assert one_counts["writes"] == 1 and [w.redeploy_on_update for w in jamf.profile_writes] == ["All"]

        write_inventory(inventory, args.macs, keep=args.macs - args.macs * 3 // 10)
        run(["compile", "--quiet"], workdir, env)
        refused, refused_counts, refused_result = publish(jamf, workdir, env, "--prune", *jobs, expect=6)
        assert refused_counts["writes"] == 0
        assert not jamf.internal_errors, jamf.internal_errors
        tunnels = len(proxy.connects()) if proxy else 0
        assert proxy is None or tunnels > 0

    route = "direct" if proxy is None else f"through tinyproxy ({tunnels} CONNECT tunnels in all)"
    kind = "storing" if args.storing_jamf else "metadata-normalising"
    print(f"Macs: {args.macs} (plus {args.macs // 4} Linux devices), --jobs {args.jobs}; compile {compiled:.2f} s; "
          f"HTTPS {route} to a {kind} fake Jamf")
    print(f"first publish:        {first:7.2f} s  {describe(first_counts)}")
    print(f"no-change republish:  {same:7.2f} s  {describe(same_counts)}")
    print(f"one Mac changed:      {one:7.2f} s  {describe(one_counts)}")
    print(f"--prune, 30% removed: {refused:7.2f} s  {describe(refused_counts)}; exit 6:")
    print(f"  {json.loads(refused_result.stdout)['error']}")


if __name__ == "__main__":
    main()
