"""A model file is checked against its registered digest (or, without one, as a zip) before it is deserialized."""
import numpy as np
import skops.io
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from categories_classification.tracking.artifacts import companion_problem, model_file_problem
from categories_classification.tracking.registry import ModelRef
from categories_classification.serialization import DIGEST_TAG, dump_model, sha256_hex, zip_damage
from tests.helpers import flip_bytes_in_largest_entry


def _model_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return dump_model(RandomForestClassifier(n_estimators=3, random_state=0).fit(rng.random((60, 3)),
                                                                                rng.choice(["a", "b"], 60)))


def _ref(digest: str) -> ModelRef:
    return ModelRef("client_0", "client_0_model", 3, "run", digest)


def test_a_digest_mismatch_is_refused_whatever_the_content():
    data = _model_bytes()
    assert model_file_problem(_ref(sha256_hex(data)), data) is None
    wrong = "0" * 64
    assert model_file_problem(_ref(wrong), data) == (
        f"does not match its digest (expected {DIGEST_TAG} {wrong}, found {sha256_hex(data)}): "
        "it was damaged or changed after registration")
    # Refused before deserialization: a file that would run code if it were loaded is never opened.
    hostile = skops.io.dumps(make_pipeline(FunctionTransformer(print)))
    assert "does not match its digest" in model_file_problem(_ref(wrong), hostile)


def test_without_a_digest_a_damaged_zip_is_refused_and_an_intact_one_passes():
    data = _model_bytes()
    assert zip_damage(data) is None and model_file_problem(_ref(""), data) is None
    assert model_file_problem(_ref(""), data[: len(data) // 2]).startswith(
        "cannot be read (BadZipFile: File is not a zip file): expected an intact skops zip file")
    flipped = zip_damage(flip_bytes_in_largest_entry(data))
    assert flipped is not None and ("while decompressing" in flipped or "CRC-32" in flipped), flipped


def test_a_companion_file_is_checked_against_its_own_digest_when_it_has_one():
    text = '{"features": {}}'
    ref = ModelRef("client_0", "client_0_model", 3, "run", "", (("drift_reference.json", sha256_hex(text.encode())),))
    assert companion_problem(ref, "drift_reference.json", text) is None
    changed = companion_problem(ref, "drift_reference.json", text.replace("{}", '{"f0": {}}'))
    assert changed.startswith("does not match its digest (expected drift_reference.json.sha256 ")
    assert changed.endswith("it was damaged or changed after registration")
    # A version registered before companions had digests: nothing to check against.
    assert companion_problem(_ref(""), "drift_reference.json", "anything") is None
