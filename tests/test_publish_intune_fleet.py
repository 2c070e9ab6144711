"""The issue's "done when": a 3,000-device fleet across 8 teams, published to the fake tenant with the
token expiring mid-run, a 429 storm (with and without Retry-After, inside ``$batch`` too) and a 503,
makes a number of Intune objects proportional to the teams; seen from every enrolled device, what is
assigned to its user's groups gives exactly its compiled settings; an unchanged republish writes nothing.

The real publish flow runs with a clock the test moves (the client's waits advance the fake's clock),
so throttling costs no wall time and nothing depends on the machine's speed.
"""

from __future__ import annotations

from pathlib import Path

from mdmgen.publish import flow
from mdmgen.publish.intune.graph import GraphClient, credential_factory
from mdmgen.publish.intune.publisher import IntunePublisher

from .fakes.graph_server import FakeGraphServer, ManualClock
from .fakes.tls import self_signed
from .intune_helpers import Row, azure_env, compile_rows, seed, writes
from .test_publish_intune import assert_every_device_gets_its_settings

TEAMS = ["Platform", "R&D, Berlin", "sales=emea", "Ops", "Data Science", "Mobile", "Security", "Design"]
DEVICES = 3000


def rows() -> list[Row]:
    return [Row(f"SN{i:05d}", "macos" if (i // 8) % 2 else "windows", f"person{i}@example.com", TEAMS[i % 8])
            for i in range(DEVICES)]


def run_publish(out: Path, graph: FakeGraphServer, clock: ManualClock, on_sleep=None) -> flow.Outcome:
    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        if on_sleep is not None:
            on_sleep()

    def connect() -> IntunePublisher:
        client = GraphClient(graph.graph_url, credential_factory(), clock=clock, sleep=sleep)
        return IntunePublisher(client)

    return flow.run(out, connect, destination="Intune", dry_run=False, prune=False, max_delete=10.0, force=False)


def test_a_3000_device_fleet_across_8_teams_under_faults(tmp_path: Path, workdir: Path, monkeypatch):
    clock = ManualClock()
    fleet = rows()
    out = compile_rows(workdir, fleet, intune='intune: {groups: {"R&D, Berlin": "sg-rnd"}}')
    with FakeGraphServer(tls=self_signed(tmp_path / "tls"), clock=clock, page_size=100) as graph:
        azure_env(monkeypatch, graph, tmp_path / "tls" / "cert.pem")
        users = seed(graph, fleet, groups={"R&D, Berlin": "sg-rnd", "Ops": "ops"})  # "ops": case is ignored
        graph.throttle(4, retry_after=3)
        graph.throttle(3, retry_after="soon")  # not an integer: backoff instead
        graph.throttle(30, retry_after=1, path="/v1.0/users/*")  # inner $batch requests
        graph.fail_next(503, 1, method="POST", path="/beta/deviceManagement/deviceManagementScripts")
        expired = []

        def expire_once() -> None:  # the token runs out in the middle of the storm
            if not expired:
                expired.append(True)
                graph.expire_all_tokens()

        outcome = run_publish(out, graph, clock, on_sleep=expire_once)
        assert graph.internal_errors == []
        faults = [r.fault for r in graph.requests if r.fault]
        assert faults.count("status-429") >= 37 and "status-503" in faults
        assert [r.status for r in graph.requests if r.status == 401], "the expired token was refused once"
        assert graph.tokens_issued >= 2
        assert len(graph.configurations) == 8
        assert 8 <= len(graph.scripts) <= 16  # one or two scripts per team, never per device
        assert outcome.plan.counts()["create"] == len(graph.configurations) + len(graph.scripts)
        assert_every_device_gets_its_settings(graph, out, fleet, users)

        graph.reset_requests()
        again = run_publish(out, graph, clock)
        assert writes(graph) == [] and again.plan.counts()["unchanged"] == len(graph.configurations) + len(
            graph.scripts)
