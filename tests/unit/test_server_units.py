"""The server's pure parts without a model: keys, exposure check, request refusals, stop sequences."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from clara_plugins.errors import ConfigError
from clara_plugins.server.chat import StopScanner, build_job, cut_at_stop
from clara_plugins.server.errors import APIError
from clara_plugins.server.schemas import ChatRequest
from clara_plugins.server.settings import ServerSettings, check_exposure, load_keys, parse_keys


def _req(**fields):
    return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "q?"}], **fields})


def test_keys_come_from_env_and_file_without_comments(tmp_path, monkeypatch):
    monkeypatch.setenv("CLARA_TEST_KEYS", "a, b")
    path = tmp_path / "keys"
    path.write_text("# team keys\nc\nd e\n")
    assert load_keys("CLARA_TEST_KEYS", path) == {"a", "b", "c", "d", "e"}
    assert parse_keys("") == frozenset()


def test_missing_key_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        load_keys("CLARA_UNSET_VAR", tmp_path / "nope")


def test_public_host_without_keys_is_refused_unless_allowed():
    open_settings = ServerSettings()
    check_exposure("127.0.0.1", open_settings, allow_no_auth=False)
    with pytest.raises(ConfigError, match="0.0.0.0"):
        check_exposure("0.0.0.0", open_settings, allow_no_auth=False)
    check_exposure("0.0.0.0", open_settings, allow_no_auth=True)
    check_exposure("0.0.0.0", ServerSettings(read_keys=frozenset({"k"})), allow_no_auth=False)


@pytest.mark.parametrize("field", ["max_batch", "max_concurrent", "max_request_bytes"])
def test_bad_settings_name_the_field(field):
    with pytest.raises(ConfigError, match=field):
        ServerSettings(**{field: 0})


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"temperature": 0.7}, "temperature", 400),
        ({"top_p": 0.5}, "top_p", 400),
        ({"n": 2}, "n", 400),
        ({"max_tokens": 10_000}, "max_tokens", 400),
        ({"max_completion_tokens": 0}, "max_completion_tokens", 400),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
        ({"tools": [{"type": "function"}]}, "tools", 400),
        ({"model": "gpt-4"}, "model", 404),
        ({"clara_documents": ["x"], "clara_k": 2}, "clara_k", 400),
        ({"clara_k": 1000}, "clara_k", 400),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages", 400),
    ],
)
def test_requests_the_generator_cannot_honour_are_refused(fields, param, status):
    settings = ServerSettings(model_name="m", max_tokens_limit=64)
    with pytest.raises(APIError) as err:
        build_job(_req(**fields), settings, default_max_tokens=32)
    assert (err.value.status, err.value.param) == (status, param)


def test_greedy_defaults_are_accepted():
    job, stops = build_job(_req(temperature=0, top_p=1, n=1, stop="\n"), ServerSettings(model_name="m"), 32)
    assert (job.question, job.max_new_tokens, stops) == ("q?", 32, ["\n"])


def test_stop_sequences_cut_whole_and_streamed_text():
    assert cut_at_stop("Paris. Next", [". ", "xyz"]) == ("Paris", True)
    assert cut_at_stop("Paris", ["."]) == ("Paris", False)
    scanner, sent = StopScanner(["END"]), []
    for piece in ["Par", "is E", "N", "D more"]:
        out, stopped = scanner.feed(piece)
        sent.append(out)
        if stopped:
            break
    assert "".join(sent) == "Paris " and stopped


def test_serve_refuses_an_exposed_address_without_keys_before_loading_anything(tmp_path, monkeypatch, capsys):
    from clara_plugins.cli import main

    monkeypatch.delenv("CLARA_API_KEYS", raising=False)
    monkeypatch.delenv("CLARA_WRITE_KEYS", raising=False)
    assert main(["serve", "--db", str(tmp_path / "db"), "--host", "0.0.0.0"]) == 1
    assert "--allow-no-auth" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()  # no store was created


def test_serve_names_a_missing_key_file(tmp_path, capsys):
    from clara_plugins.cli import main

    assert main(["serve", "--db", str(tmp_path / "db"), "--api-key-file", str(tmp_path / "keys.txt")]) == 1
    assert "keys.txt" in capsys.readouterr().err
