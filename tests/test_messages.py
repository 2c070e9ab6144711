"""What mdmgen prints for people: lists cut short, and secrets never echoed back in any form."""

from mdmgen.canonical import digest
from mdmgen.messages import first_of, redact

SECRET = "s3cr3t+/=&Value with space"


def test_a_secret_is_redacted_in_every_form_a_server_may_echo_it():
    echoes = [SECRET, "s3cr3t%2B%2F%3D%26Value%20with%20space", "s3cr3t%2B%2F%3D%26Value+with+space"]
    for echo in echoes:
        text = redact(f"error: invalid_client {echo!s} (client_secret={echo})", [SECRET])
        assert "s3cr3t" not in text and "%2F" not in text, text
        assert text.startswith("error: invalid_client [redacted]")


def test_the_token_of_a_bearer_header_is_redacted_on_its_own():
    assert redact("collector said: bad token abcdef123456", ["Bearer abcdef123456"]) == \
        "collector said: bad token [redacted]"


def test_short_or_empty_secrets_do_not_blank_out_the_message():
    assert redact("an error about abc", ["", "abc"]) == "an error about abc"


def test_first_of_says_how_many_were_left_out():
    assert first_of(["A", "B"]) == "A, B"
    assert first_of([f"S{i}" for i in range(12)], shown=3) == "S0, S1, S2 (and 9 more)"


def test_the_canonical_digest_ignores_key_order_but_not_values():
    assert digest({"a": 1, "b": [1, "é"]}) == digest({"b": [1, "é"], "a": 1})
    assert digest({"a": 1}) != digest({"a": "1"})


def test_every_form_of_a_secret_is_redacted_json_html_base64_and_lower_case_hex():
    import base64
    import json

    from mdmgen.messages import redact

    secret = 'p@ss/wörd"&<x>'
    echoes = [json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
              json.dumps(secret)[1:-1].replace("/", "\\/"), "p%40ss%2fw%c3%b6rd%22%26%3cx%3e",
              "p@ss/wörd&quot;&amp;&lt;x&gt;", base64.b64encode(secret.encode()).decode()]
    for echo in echoes:
        assert redact(f"server said: {echo}.", [secret]) == "server said: [redacted].", echo
    basic = base64.b64encode(f"client-id:{secret}".encode()).decode()
    assert redact(f"Authorization: Basic {basic}", [f"client-id:{secret}"]) == "Authorization: Basic [redacted]"


def test_a_secret_straddling_the_cut_is_never_printed_in_part():
    from mdmgen.messages import shorten

    secret = "S3CRET-" + "k" * 40
    text = "x" * 180 + secret + " and more"
    cut = shorten(text, 200, [secret])
    assert "S3CRET" not in cut and "kkkkkk" not in cut
    assert cut == "x" * 180 + "[redacted] and more"


def test_log_lines_are_one_line_and_never_carry_a_secret(capsys, monkeypatch):
    """-vv logs what servers and inputs say: escaped like every other line, secrets redacted."""
    import logging

    from mdmgen.console import Report

    monkeypatch.setenv("JAMF_CLIENT_SECRET", "s3cr3t-Client-Value")
    Report(as_json=False, quiet=False, verbose=2)
    logging.getLogger("mdmgen.test").debug("server said %r\nforged line \x1b[2J %s", "ok", "s3cr3t-Client-Value")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err
    assert "s3cr3t-Client-Value" not in err and "[redacted]" in err
    assert err.startswith("mdmgen: DEBUG: server said 'ok'\\nforged line \\x1b[2J ")
