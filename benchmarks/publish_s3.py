"""S3 publish benchmark: first publish, no-change republish and one-device change of a synthetic fleet.

    .venv/bin/python benchmarks/publish_s3.py --devices 10000

Compiles the fleet with the real ``mdmgen compile``, starts moto's S3 server on loopback (the
test fake, which counts the HTTP requests the server receives), and runs the real
``mdmgen publish`` as a subprocess against it. Times are wall-clock seconds of the command
(interpreter start-up included); request counts are what the server saw. It finishes with the
"truncated export" check: ``--prune`` after 30% of the inventory is gone must be refused (exit 6).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from fleet import write_inventory  # noqa: E402
from tests.fakes.s3_server import S3Server  # noqa: E402

BUCKET = "bench"
DEST = f"s3://{BUCKET}/fleet"


def run(args: list[str], workdir: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mdmgen", *args], cwd=workdir, env=env,
                            capture_output=True, text=True, check=False)
    return time.perf_counter() - started, result


def compile_fleet(workdir: Path, env: dict[str, str]) -> float:
    elapsed, result = run(["compile", "--quiet"], workdir, env)
    if result.returncode != 0:
        raise SystemExit(f"compile failed ({result.returncode}): {result.stderr}")
    return elapsed


def publish(s3: S3Server, workdir: Path, env: dict[str, str], *extra: str,
            expect: int = 0) -> tuple[float, Counter, subprocess.CompletedProcess]:
    s3.reset_counts()
    elapsed, result = run(["publish", DEST, "--endpoint-url", s3.url, "--json", *extra], workdir, env)
    if result.returncode != expect:
        raise SystemExit(f"publish {' '.join(extra)} exited {result.returncode}: {result.stderr}")
    counts = Counter("LIST" if seen.is_list else seen.method for seen in s3.requests())
    return elapsed, counts, result


def describe(counts: Counter) -> str:
    return ", ".join(f"{method} {counts[method]}" for method in ("PUT", "GET", "LIST", "DELETE")) + \
        f" (total {sum(counts.values())})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=16, help="mdmgen publish --jobs")
    args = parser.parse_args()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    jobs = ["--jobs", str(args.jobs)]
    with tempfile.TemporaryDirectory() as tmp, S3Server() as s3:
        workdir = Path(tmp)
        shutil.copytree(ROOT / "profiles", workdir / "profiles")
        inventory = workdir / "inventory" / "devices.csv"
        write_inventory(inventory, args.devices)
        compiled = compile_fleet(workdir, env)
        files = sum(1 for p in (workdir / "output").rglob("*") if p.is_file())
        s3.client().create_bucket(Bucket=BUCKET)

        first, first_counts, _ = publish(s3, workdir, env, *jobs)
        same, same_counts, same_result = publish(s3, workdir, env, *jobs)
        assert json.loads(same_result.stdout)["uploaded"] == 0 and same_counts["PUT"] == 0
        write_inventory(inventory, args.devices, changed_row=args.devices // 2)
        compile_fleet(workdir, env)
        one, one_counts, _ = publish(s3, workdir, env, *jobs)
        verify, verify_counts, _ = publish(s3, workdir, env, "--verify", *jobs)
        write_inventory(inventory, args.devices - args.devices * 3 // 10)
        compile_fleet(workdir, env)
        refused, refused_counts, refused_result = publish(s3, workdir, env, "--prune", *jobs, expect=6)

    print(f"devices: {args.devices} ({files} files incl. manifest.json), --jobs {args.jobs}; "
          f"compile {compiled:.2f} s")
    print(f"first publish:         {first:7.2f} s  {describe(first_counts)}")
    print(f"no-change republish:   {same:7.2f} s  {describe(same_counts)}")
    print(f"  ratio no-change/first: time {same / first:.3f}, requests "
          f"{sum(same_counts.values()) / sum(first_counts.values()):.4f}")
    print(f"one device changed:    {one:7.2f} s  {describe(one_counts)}")
    print(f"--verify, no change:   {verify:7.2f} s  {describe(verify_counts)}")
    print(f"--prune, 30% removed:  {refused:7.2f} s  {describe(refused_counts)}  exit 6:")
    print(f"  {json.loads(refused_result.stdout)['error']}")


if __name__ == "__main__":
    main()
