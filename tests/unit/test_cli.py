"""CLI option handling: one-line errors and exit code 2 before any training or Spark work."""
import pytest

from categories_classification_cli import main

TRAIN = ["trainer", "--client_id=c1", "--training_date=2026-11-23"]


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("extra, pattern", [
    (["--features=[\"f0\"", "--model_params={}"], "'--features': expected a JSON list, found malformed JSON"),
    (["--features={\"f0\": 1}", "--model_params={}"], "'--features': expected a JSON list, found dict"),
    (["--features=[\"f0\"]", "--model_params=[1]"], "'--model_params': expected a JSON object, found list"),
    (["--features=[\"f0\"]", "--model_params={\"n_trees\": 3}"], "client 'c1': key 'params': unknown RandomForestClassifier parameter"),
    (["--features=[\"f0\"]", "--model_params={\"max_depth\": \"deep\"}"], "client 'c1': key 'params': The 'max_depth' parameter"),
    (["--features=[]", "--model_params={}"], "client 'c1': key 'features'"),
    (["--features=[\"f0\"]"], "Missing option '--model_params'"),
])
def test_bad_trainer_options(capsys, extra, pattern):
    code, out, err = _run(capsys, TRAIN + extra)
    assert code == 2
    assert out == ""
    assert err.startswith("Error: ") and pattern in err
    assert err.count("\n") == 1


def test_bad_client_id_is_refused(capsys):
    code, _, err = _run(capsys, ["trainer", "--client_id=a;b", "--features=[\"f0\"]", "--model_params={}",
                                 "--training_date=2026-11-23"])
    assert code == 2 and "client id: expected letters, digits and '_'" in err


def test_bad_inference_date(capsys):
    code, _, err = _run(capsys, ["predictor", "--client_id=c1", "--inference_date=someday"])
    assert code == 2 and "--inference_date: expected an ISO date" in err


def test_unknown_command(capsys):
    code, _, err = _run(capsys, ["retrain"])
    assert code == 2 and "No such command 'retrain'" in err


def test_help_lists_commands_and_every_option_has_help(capsys):
    from categories_classification_cli import cli  # pylint: disable=import-outside-toplevel

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("trainer", "predictor", "train-all", "predict-all"):
        assert command in out
    for command in cli.commands.values():
        for param in command.params:
            assert getattr(param, "help", None), f"{command.name} {param.name} has no help"


def test_unexpected_errors_are_one_line_unless_debugging(capsys, monkeypatch, tmp_path):
    bad_config = tmp_path / "clients.yaml"
    bad_config.write_text("c1:\n  features: [f0]\n", encoding="utf-8")

    def boom(*_args, **_kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("categories_classification.batch.train_all", boom)
    code, _, err = _run(capsys, ["train-all", f"--config={bad_config}"])
    assert code == 1
    assert err.splitlines()[-1] == "Error: unexpected RuntimeError: disk on fire (set CATEGORIES_DEBUG=1 for the traceback)"
    assert "Traceback" not in err
    monkeypatch.setenv("CATEGORIES_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["train-all", f"--config={bad_config}"])


@pytest.mark.parametrize("command", [["train-all"], ["predict-all", "--inference_date=2026-11-23"]])
def test_a_client_not_in_the_config_is_refused_before_any_work(capsys, tmp_path, command):
    config = tmp_path / "clients.yaml"
    config.write_text("c1:\n  features: [f0]\nc2:\n  features: [f0]\n", encoding="utf-8")
    code, out, err = _run(capsys, [*command, f"--config={config}", "--client_id=c1", "--client_id=c9"])
    assert code == 2 and out == ""
    assert err == f"Error: client 'c9': not found in {config}: expected one of c1, c2\n"
