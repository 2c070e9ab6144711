"""OTEL_RESOURCE_ATTRIBUTES encoding: no HR value can split or inject an attribute."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdmgen import attributes

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"


def test_hostile_team_names_stay_one_value():
    text = attributes.encode({"user_email": "ann+cc@example.com", "team": "R&D, Berlin",
                              "region": "sales=emea"})
    assert text.count(",") == 2 and text.count("=") == 3
    assert attributes.decode(text) == {"user_email": "ann+cc@example.com",
                                       "team": "R&D, Berlin", "region": "sales=emea"}


def test_decodes_the_form_the_real_client_decoded():
    # shared/reference/claude-code-managed-settings.md section 11: what the client received.
    assert attributes.decode("user_email=ann%2Bcc%40example.com,team=R%26D%2C%20Berlin") == {
        "user_email": "ann+cc@example.com", "team": "R&D, Berlin"}


def test_encoded_values_use_only_unreserved_characters_and_escapes():
    text = attributes.encode_value('Zoë "quoted"; back\\slash 100% ü')
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%")


@given(st.dictionaries(st.text(TOKEN_CHARS, min_size=1, max_size=8),
                       st.text(st.characters(exclude_categories=["Cs"]), min_size=1),
                       min_size=1, max_size=5))
def test_round_trip_any_values(pairs):
    assert attributes.decode(attributes.encode(pairs)) == pairs


@pytest.mark.parametrize("text, reason", [
    ("a=1,a=2", "more than once"),
    ("a=", "empty value"),
    ("a=x y", "percent-encoded"),
    ("a=%zz", "two hex digits"),
    ("a=%ff", "UTF-8"),
    ("a b=1", "not a token"),
    ("novalue", "no '='"),
])
def test_decode_refuses_malformed_lists(text, reason):
    with pytest.raises(attributes.AttributeListError, match=reason):
        attributes.decode(text)


def test_encode_refuses_a_key_that_is_not_a_token():
    with pytest.raises(attributes.AttributeListError):
        attributes.encode({"team name": "x"})
