"""The shared HTTP layer and its one retry policy.

The policy's unit tests drive a real :class:`~mdmgen.publish.jamf.JamfClient` (and so the real
Connection: deadline, size caps, one-line errors) against scripted answers (tests/scripted.py):
no server, no socket, no wait. The client gets a fake ``sleep`` that records what it was asked to
wait, and a fixed wall clock for HTTP-date ``Retry-After`` values. What needs a real socket (a
truncated body, the CLI runs, whose real waits are kept at zero with ``Retry-After: 0``) is driven
against the fake Jamf Pro server.
"""

from __future__ import annotations

import gzip
import re
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from mdmgen import http
from mdmgen.publish import base
from mdmgen.publish import jamf as jamfpub

from .conftest import run
from .fakes.graph_http import ManualClock
from .fakes.jamf_server import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Computer, FakeJamfServer
from .scripted import Script, dripping

PROFILES = "/JSSResource/osxconfigurationprofiles"
TOKEN = "/api/oauth/token"
NOW = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
URL = "https://acme.jamfcloud.example"
LISTED = {"os_x_configuration_profiles": []}


@pytest.fixture
def jamf():
    with FakeJamfServer([Computer(100 + i, f"mac-{i}", f"MAC{i:04d}") for i in range(4)]) as fake:
        yield fake
        assert fake.internal_errors == []


@pytest.fixture
def jamf_env(monkeypatch) -> None:
    monkeypatch.setenv("JAMF_CLIENT_ID", DEFAULT_CLIENT_ID)
    monkeypatch.setenv("JAMF_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)


@pytest.fixture
def script():
    """The scripted Jamf Pro: a token first, then whatever the test adds; all of it must be asked for."""
    answers = Script().on("POST", TOKEN, json={"access_token": "t0k3n", "expires_in": 1200})
    yield answers
    answers.assert_done()


def client(target: FakeJamfServer | Script, sleeps: list[float], **kwargs) -> jamfpub.JamfClient:
    if isinstance(target, Script):
        return jamfpub.JamfClient(URL, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, sleep=sleeps.append,
                                  wall_clock=NOW.timestamp, transport=target, **kwargs)
    return jamfpub.JamfClient(target.url, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, sleep=sleeps.append,
                              wall_clock=NOW.timestamp, **kwargs)


def listing(target: FakeJamfServer | Script, sleeps: list[float], **kwargs):
    jamf_client = client(target, sleeps, **kwargs)
    try:
        return jamf_client.request("GET", PROFILES, doing="listing macOS configuration profiles")
    finally:
        jamf_client.close()


def hits(jamf: FakeJamfServer, path: str, method: str | None = None) -> int:
    return len(jamf.requests_to(path, method))


# --- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_waited(script, status):
    script.on("GET", PROFILES, status, headers=[("Retry-After", "3")], times=2).on("GET", PROFILES, json=LISTED)
    sleeps: list[float] = []
    assert listing(script, sleeps).status == 200
    assert sleeps == [3.0, 3.0]
    assert script.hits(PROFILES) == 3


def test_retry_after_as_an_http_date_is_waited_until_then(script):
    later = format_datetime(NOW.replace(second=7), usegmt=True)  # 7 s after the client's clock
    script.on("GET", PROFILES, 503, headers=[("Retry-After", later)]).on("GET", PROFILES, json=LISTED)
    sleeps: list[float] = []
    assert listing(script, sleeps).status == 200
    assert sleeps == [7.0]


def test_a_retry_after_in_the_past_or_unreadable_is_no_long_wait(script):
    earlier = format_datetime(NOW.replace(minute=20), usegmt=True)
    script.on("GET", PROFILES, 503, headers=[("Retry-After", earlier)])
    script.on("GET", PROFILES, 429, headers=[("Retry-After", "soon")]).on("GET", PROFILES, json=LISTED)
    sleeps: list[float] = []
    assert listing(script, sleeps, base_delay=0.5).status == 200
    assert sleeps[0] == 0.0  # the date has passed: try again now
    assert 0.0 <= sleeps[1] <= 1.0  # unreadable: the exponential backoff's second step, jittered


def test_without_retry_after_the_backoff_is_exponential_and_jittered(script):
    script.on("GET", PROFILES, 503, times=4).on("GET", PROFILES, json=LISTED)
    sleeps: list[float] = []
    assert listing(script, sleeps, base_delay=0.5).status == 200
    assert len(sleeps) == 4
    assert all(0.0 <= wait <= 0.5 * 2 ** n for n, wait in enumerate(sleeps))


def test_every_wait_is_capped_even_the_servers(script):
    script.on("GET", PROFILES, 429, headers=[("Retry-After", "86400")], times=2).on("GET", PROFILES, json=LISTED)
    sleeps: list[float] = []
    assert listing(script, sleeps, max_delay=30).status == 200
    assert sleeps == [30.0, 30.0]


def test_a_storm_that_outlasts_the_attempts_stops_after_them(script):
    script.on("GET", PROFILES, 503, headers=[("Retry-After", "1")], times=4)
    sleeps: list[float] = []
    with pytest.raises(jamfpub.JamfHTTPError) as failed:
        listing(script, sleeps, attempts=4)
    assert failed.value.status == 503  # the attributes survive the added message
    assert str(failed.value).endswith("(gave up after 4 attempts)")
    assert str(failed.value).count("gave up") == 1
    assert script.hits(PROFILES) == 4 and sleeps == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("status", [400, 403, 404, 409, 501])
def test_a_request_that_cannot_succeed_is_sent_once(script, status):
    script.on("GET", PROFILES, status)
    sleeps: list[float] = []
    with pytest.raises(jamfpub.JamfHTTPError) as failed:
        listing(script, sleeps)
    assert failed.value.status == status
    assert "gave up" not in str(failed.value)
    assert script.hits(PROFILES) == 1 and sleeps == []


def test_a_401_renews_the_token_once_then_stops(script):
    script.on("GET", PROFILES, 401).on("POST", TOKEN, json={"access_token": "t2", "expires_in": 1200})
    script.on("GET", PROFILES, 401)
    sleeps: list[float] = []
    with pytest.raises(jamfpub.JamfHTTPError, match=r"refused a fresh access token \(401\)"):
        listing(script, sleeps)
    assert script.hits(PROFILES) == 2 and script.hits(TOKEN) == 2 and sleeps == []
    assert [r.headers["Authorization"] for r in script.requests if r.url.path == PROFILES] == [
        "Bearer t0k3n", "Bearer t2"]


# --- the token endpoint: retried once, never nested ----------------------------------------------


def test_a_failing_token_endpoint_gets_exactly_the_attempts_and_one_message():
    script = Script().on("POST", TOKEN, 503, times=5)
    sleeps: list[float] = []
    with pytest.raises(jamfpub.JamfHTTPError) as failed:
        listing(script, sleeps)
    script.assert_done()  # 5 attempts in all, not 5 per attempt of the request; the listing never sent
    assert script.hits(TOKEN) == 5 and script.hits(PROFILES) == 0
    assert str(failed.value).count("gave up after 5 attempts") == 1
    assert "while requesting an access token" in str(failed.value)


def test_after_a_token_failure_parallel_workers_do_not_hammer_the_endpoint():
    script = Script().on("POST", TOKEN, 503, times=5)
    sleeps: list[float] = []
    jamf_client = client(script, sleeps)
    for _ in range(3):  # e.g. three workers that each need a token
        with pytest.raises(base.RemoteError):
            jamf_client.request("GET", PROFILES, doing="listing")
    jamf_client.close()
    script.assert_done()
    assert script.hits(TOKEN) == 5


# --- the transport seam keeps the deadline and the size caps ----------------------------------------


def connection(script: Script, clock: ManualClock, timeout: float = 10, **kwargs) -> http.Connection:
    return http.Connection(URL, service="Jamf Pro", max_connections=1, timeout=timeout, user_agent="test",
                           log=http.logging.getLogger("test"), timeout_hint="try a larger --timeout", clock=clock,
                           transport=script, **kwargs)


def test_an_answer_after_the_deadline_is_a_retryable_timeout():
    clock = ManualClock()

    def late(_request):
        clock.advance(11)  # the server takes longer than --timeout to answer
        return http.httpx.Response(200, json=LISTED)

    script = Script().on("GET", PROFILES, answer=late)
    with pytest.raises(http.TransportFailure) as failed:
        connection(script, clock).send("GET", PROFILES, doing="listing")
    assert str(failed.value) == f"Jamf Pro at {URL} did not answer within 10 s while listing; try a larger --timeout"
    assert failed.value.kind == "timeout" and http.classify(failed.value) is not None


def test_a_server_that_stays_slow_gives_up_after_the_attempts_with_one_line():
    clock = ManualClock()

    def late(_request):
        clock.advance(0.5)  # every answer comes after the 0.1 s deadline
        return http.httpx.Response(200, json=LISTED)

    script = Script().on("GET", PROFILES, answer=late, times=5)
    slow = connection(script, clock, timeout=0.1)
    sleeps: list[float] = []
    with pytest.raises(http.TransportFailure) as failed:
        http.RetryPolicy(sleep=sleeps.append).run(
            lambda: slow.send("GET", PROFILES, doing="listing macOS configuration profiles"))
    script.assert_done()
    assert str(failed.value) == (f"Jamf Pro at {URL} did not answer within 0.1 s while listing macOS configuration "
                                 "profiles (gave up after 5 attempts); try a larger --timeout")
    assert len(sleeps) == 4


def test_a_body_still_dripping_at_the_deadline_is_not_retried():
    clock = ManualClock()
    script = Script().on("GET", PROFILES, answer=dripping(200, [b"{", b'"a": 1', b"}"], lambda: clock.advance(4)))
    with pytest.raises(http.TransportFailure) as failed:
        connection(script, clock).send("GET", PROFILES, doing="listing")
    assert str(failed.value) == (f"Jamf Pro at {URL} did not send its whole answer within 10 s while listing (it "
                                 "sends too slowly; not retried); try a larger --timeout")
    assert http.classify(failed.value) is None


def test_a_body_within_the_deadline_arrives_whole():
    clock = ManualClock()
    script = Script().on("GET", PROFILES, answer=dripping(200, [b"{", b'"a": 1', b"}"], lambda: clock.advance(3)))
    assert connection(script, clock).send("GET", PROFILES, doing="listing").json() == {"a": 1}


@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_past_the_cap_is_cut_declared_or_streamed(declared):
    body = b"x" * 2048
    headers = [("Content-Length", "2048")] if declared else []
    script = Script().on("GET", PROFILES, answer=dripping(200, [body[:1024], body[1024:]], lambda: None, headers))
    with pytest.raises(http.TransportFailure) as failed:
        connection(script, ManualClock(), max_body=1024).send("GET", PROFILES, doing="listing")
    assert str(failed.value) == (f"Jamf Pro at {URL} sent an answer larger than 1 KiB while listing; it was not "
                                 "read further")
    assert failed.value.kind == "too large" and not failed.value.transient


def test_the_cap_applies_after_decoding_so_a_compressed_bomb_is_cut():
    bomb = gzip.compress(b"0" * (1 << 20))
    script = Script().on("GET", PROFILES, content=bomb, headers=[("Content-Encoding", "gzip")])
    with pytest.raises(http.TransportFailure, match="larger than 64 KiB"):
        connection(script, ManualClock(), max_body=64 << 10).send("GET", PROFILES, doing="listing")
    assert len(bomb) < 64 << 10


def test_without_a_transport_requests_go_through_the_deadline_socket_stack():
    plain = http.Connection(URL, service="Jamf Pro", max_connections=1, timeout=10, user_agent="test",
                            log=http.logging.getLogger("test"))
    try:
        assert isinstance(plain._client._transport, http._Transport)
        assert plain._client._transport._pool._network_backend is plain.backend
    finally:
        plain.close()


def test_an_unexpected_request_fails_the_test_that_made_it():
    script = Script().on("GET", PROFILES, json=LISTED)
    with pytest.raises(AssertionError, match=f"unexpected request DELETE {PROFILES}/id/1; expected GET {PROFILES}"):
        connection(script, ManualClock()).send("DELETE", f"{PROFILES}/id/1", doing="deleting")
    assert script.unexpected and script.hits(PROFILES) == 0


def test_the_cli_stops_a_503_storm_with_one_line_and_bounded_requests(workdir, jamf, jamf_env):
    from .test_publish_jamf import compile_fleet, one_line_error

    compile_fleet(workdir, range(2))
    jamf.fail_next(1000, 503, path=TOKEN, headers=(("Retry-After", "0"),))
    result = run(workdir, "publish", "jamf", "--url", jamf.url)
    assert result.exit_code == 7
    assert one_line_error(result) == (
        "error: Jamf Pro answered 503 Service Unavailable while requesting an access token: Injected HTTP 503 "
        "(gave up after 5 attempts)")
    assert hits(jamf, TOKEN) == 5 and len(jamf.requests) == 5


def test_the_cli_sends_a_400_once(workdir, jamf, jamf_env):
    from .test_publish_jamf import compile_fleet, one_line_error

    compile_fleet(workdir, range(2))
    jamf.fail_next(1, 400, method="GET", path=PROFILES)
    result = run(workdir, "publish", "jamf", "--url", jamf.url)
    assert result.exit_code == 7
    assert one_line_error(result).startswith("error: Jamf Pro answered 400 Bad Request while listing macOS "
                                             "configuration profiles: The request could not be understood")
    assert hits(jamf, PROFILES, "GET") == 1


# --- answers that are not what was asked for ------------------------------------------------------


def test_a_sign_in_page_instead_of_json_is_one_line_and_not_retried(workdir, jamf, jamf_env):
    from .test_publish_jamf import compile_fleet, one_line_error

    compile_fleet(workdir, range(1))
    portal = b"<!DOCTYPE html><html><head><title>Corporate Sign-In</title></head><body>...</body></html>"
    jamf.fail_next(1, 200, path=PROFILES, body=portal, content_type="text/html; charset=utf-8")
    result = run(workdir, "publish", "jamf", "--url", jamf.url)
    assert result.exit_code == 7
    assert one_line_error(result) == (
        "error: Jamf Pro answered with an HTML page ('Corporate Sign-In') instead of JSON while listing macOS "
        "configuration profiles: is a proxy or a sign-in portal in the way? Check the URL, and HTTPS_PROXY/NO_PROXY")
    assert "JSONDecodeError" not in result.output
    assert hits(jamf, PROFILES) == 1


def test_a_redirect_to_a_sign_in_portal_is_one_line_and_not_followed(workdir, jamf, jamf_env):
    from .test_publish_jamf import compile_fleet, one_line_error

    compile_fleet(workdir, range(1))
    jamf.fail_next(1, 302, path=TOKEN, headers=(("Location", "https://sso.corp.example/login?state=x1y2"),))
    result = run(workdir, "publish", "jamf", "--url", jamf.url)
    assert result.exit_code == 7
    assert one_line_error(result) == (
        "error: Jamf Pro answered 302 Found while requesting an access token: redirected to "
        "https://sso.corp.example/login; is a sign-in portal or a proxy in the way? Check --url and NO_PROXY")
    assert len(jamf.requests) == 1


def test_a_truncated_body_is_retried(jamf):
    jamf.fail_next(1, path=PROFILES, truncate=True)
    sleeps: list[float] = []
    assert listing(jamf, sleeps).json() == {"os_x_configuration_profiles": []}
    assert [r.fault for r in jamf.requests_to(PROFILES)] == ["truncated", None] and len(sleeps) == 1


def test_a_body_that_stays_truncated_is_one_line(jamf):
    jamf.fail_next(10, path=PROFILES, truncate=True)
    with pytest.raises(http.TransportFailure) as failed:
        listing(jamf, [], attempts=3)
    assert re.fullmatch(
        re.escape(f"Jamf Pro at {jamf.url} dropped the connection or sent an incomplete answer while listing macOS "
                  "configuration profiles: peer closed connection without sending complete message body ")
        + r"\(received \d+ bytes, expected \d+\) \(gave up after 3 attempts\)", str(failed.value))
    assert hits(jamf, PROFILES) == 3


def test_json_that_does_not_parse_is_one_line():
    answer = http.Response(200, http.httpx.Headers({"Content-Type": "application/json"}), b'{"a": [1, 2',
                           "listing things", "Jamf Pro")
    with pytest.raises(http.UnexpectedAnswer, match=r"^Jamf Pro sent an answer that is not valid JSON while "
                                                    r"listing things \(11 bytes of application/json; truncated\?\)$"):
        answer.json()


# --- the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0), (" 0 ", 0.0), (format_datetime(NOW.replace(minute=30), usegmt=True), 120.0),
    ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0), ("-5", None), ("1.5", None), ("tomorrow", None), ("", None), (None, None),
])
def test_parse_retry_after(value, expected):
    assert http.parse_retry_after(value, now=NOW.timestamp()) == expected


def test_proxy_for_names_the_proxy_without_credentials_and_honours_no_proxy():
    env = {"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128", "NO_PROXY": "internal.corp,.jamf.local"}
    assert http.proxy_for("https://acme.jamfcloud.com", env) == "http://proxy.corp:3128"
    assert http.proxy_for("https://x.internal.corp", env) is None
    assert http.proxy_for("https://mdm.jamf.local", env) is None
    assert http.proxy_for("http://127.0.0.1:8080", env) is None  # plain http (loopback) never goes through one
    assert http.proxy_for("https://acme.jamfcloud.com", {"all_proxy": "proxy.corp:8080"}) == "http://proxy.corp:8080"
    assert http.proxy_for("https://acme.jamfcloud.com", {}) is None
    both = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}
    assert http.proxy_for("https://acme.jamfcloud.com", both) == "http://lower:1"


def test_minus_vv_logs_one_line_per_request_and_no_library_header_dumps(workdir, jamf, jamf_env):
    from .test_publish_jamf import compile_fleet

    compile_fleet(workdir, range(2))
    result = run(workdir, "publish", "jamf", "--url", jamf.url, "-vv")
    assert result.exit_code == 0, result.output
    assert "jamf: POST /api/oauth/token -> 200" in result.output
    for library_line in ("HTTP Request:", "send_request_headers", "receive_response_headers", "Set-Cookie",
                         "Authorization", "Bearer", DEFAULT_CLIENT_SECRET, "computers-inventory?"):
        assert library_line not in result.output


def test_where_the_run_stopped_is_added_without_losing_the_status():
    def write(item):
        raise jamfpub.JamfHTTPError("Jamf Pro answered 409 Conflict while creating", 409, "Duplicate name")

    plan = base.build_plan([base.Desired("a", "1", 1, "MAC1")], [], prune=False)
    with pytest.raises(jamfpub.JamfHTTPError) as failed:
        base.apply(plan, write=write, delete=lambda item: None, workers=1)
    assert (failed.value.status, failed.value.reason) == (409, "Duplicate name")
    assert str(failed.value) == ("Jamf Pro answered 409 Conflict while creating (the writes that finished are in "
                                 "place; rerun to finish)")
    hinted = http.gave_up(http.TransportFailure("no answer", kind="timeout", transient=True,
                                                hint="try a larger --timeout"), 5)
    hinted.progress = "nothing was committed"
    assert str(hinted) == ("no answer (gave up after 5 attempts); try a larger --timeout (nothing was committed; "
                           "rerun to finish)")
