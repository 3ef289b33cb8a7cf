"""What the plan checks before any model is looked up: the header of a local input, the client's own values."""
import gzip
import re

import pytest

from categories_classification.errors import ConfigError, InputDataError
from categories_classification.prediction.plan import plan_clients, read_header


def test_the_header_is_read_from_the_first_line_of_a_local_gzip_csv(tmp_path):
    source = tmp_path / "data_predict.csv.gz"
    with gzip.open(source, "wt", encoding="utf-8") as handle:
        handle.write("product_id, f0 ,f1\np1,0.1,0.2\n")
    assert read_header("c1", str(source)) == ("product_id", "f0", "f1")
    assert read_header("c1", f"file:{source}") == ("product_id", "f0", "f1")


@pytest.mark.parametrize("content, found", [
    (None, r"not found \(expected a gzip CSV at this path; is DATA_PREFIX right\?\)"),
    (b"product_id,f0\n", "is not a valid gzip file: expected a gzip-compressed CSV"),
    (gzip.compress(b"\n", mtime=0), "is empty: expected a header row and data"),
])
def test_an_unreadable_header_is_the_clients_one_line_error(tmp_path, content, found):
    source = tmp_path / "data_predict.csv.gz"
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(InputDataError, match=rf"^client 'c1': file {re.escape(str(source))}: {found}$"):
        read_header("c1", str(source))


def test_a_client_that_cannot_be_planned_fails_alone_under_the_id_it_was_given():
    plans, failures = plan_clients(["bad id", "c2"], "2026-11-23", "/data", {}, {"c2": -1.0}, False)
    assert not plans
    assert isinstance(failures["bad id"], ConfigError) and "client id: expected" in str(failures["bad id"])
    assert str(failures["c2"]) == "client 'c2': drift_threshold: expected a positive number (a PSI), found -1.0"
