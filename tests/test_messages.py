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
