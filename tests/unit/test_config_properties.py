"""Property-based tests of the config validator: only safe names ever get through."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from categories_classification.config import validate_client_id, validate_features
from categories_classification.errors import ConfigError

SAFE = re.compile(r"[A-Za-z0-9_]+")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_client_ids_are_accepted_exactly_when_safe(text):
    if SAFE.fullmatch(text):
        assert validate_client_id(text) == text
    else:
        with pytest.raises(ConfigError, match="client id"):
            validate_client_id(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=5))
def test_feature_lists_are_accepted_exactly_when_non_empty_distinct_and_safe(features):
    valid = bool(features) and all(SAFE.fullmatch(name) for name in features) and len(set(features)) == len(features)
    if valid:
        assert validate_features(features, "c1") == features
    else:
        with pytest.raises(ConfigError, match=r"client 'c1': key 'features"):
            validate_features(features, "c1")
