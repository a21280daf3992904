from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_config, parse_config
from proxy.errors import ConfigError

BASE = {
    "keys": [{"key": "sk-test"}],
    "providers": {"echo": {"kind": "echo"}, "other": {"kind": "echo", "prefix": "other: "}},
    "channels": [{"name": "demo", "providers": ["echo", "other"]}],
}


def with_(**over):
    return {**BASE, **over}


def error_of(data, env=None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(data, env or {})
    return e.value


def test_interpolation_with_default_and_env():
    s = parse_config(
        with_(
            keys=[{"key": "${K:-sk-default}"}, {"key": "${K2}"}],
            providers={"echo": {"kind": "echo", "prefix": "${P}"}},
            channels=[{"name": "d", "providers": ["echo"]}],
        ),
        {"P": "hi ", "K2": "sk-two"},
    )
    assert [k.key for k in s.raw.keys] == ["sk-default", "sk-two"]
    assert s.providers["echo"].config.prefix == "hi "


def test_missing_secret_disables_only_that_provider():
    data = with_(
        providers={"echo": {"kind": "echo"}, "paid": {"kind": "echo", "prefix": "${PAID_KEY}"}},
        channels=[{"name": "c", "providers": ["paid", "echo"]}],
    )
    s = parse_config(data, {})
    assert s.providers["paid"].disabled == "PAID_KEY is not set"
    assert s.providers["echo"].disabled is None
    assert s.by_name["c"].providers == ("echo",)
    assert s.by_name["c"].skipped == ("paid",)


def test_missing_variable_outside_adapters_is_an_error():
    e = error_of(with_(keys=[{"key": "${NOPE}"}]))
    assert e.path == "keys[0].key" and "NOPE" in e.problem


def test_unknown_provider_in_channel_names_path_and_valid_names():
    e = error_of(with_(channels=[{"name": "a", "providers": ["echo"]}, {"name": "b", "providers": ["echo", "gpt5"]}]))
    assert e.path == "channels[1].providers[1]"
    assert "gpt5" in e.problem and e.valid == "echo, other"


def test_unknown_kind_lists_known_kinds():
    e = error_of(with_(providers={"x": {"kind": "nope"}}))
    assert e.path == "providers.x.kind" and "echo" in (e.valid or "")


def test_bad_value_inside_provider_block():
    e = error_of(with_(providers={"echo": {"kind": "echo", "delay": "slow"}}))
    assert e.path == "providers.echo.delay"


def test_typo_key_is_rejected():
    e = error_of(with_(channels=[{"name": "c", "providers": ["echo"], "histroy": 3}]))
    assert e.path == "channels[0].histroy" and e.problem == "unknown key"


def test_session_policy_lists_valid_values():
    e = error_of(with_(channels=[{"name": "c", "providers": ["echo"], "session": "room"}]))
    assert e.path == "channels[0].session" and "thread" in (e.valid or "")


def test_duplicate_channel_and_unknown_platform():
    assert error_of(with_(channels=[{"name": "c", "providers": ["echo"]}] * 2)).path == "channels[1].name"
    e = error_of(with_(channels=[{"name": "c", "providers": ["echo"], "match": {"platform": "irc"}}]))
    assert e.path == "channels[0].match.platform"


def test_prompt_file_relative_to_config(tmp_path: Path):
    (tmp_path / "p.txt").write_text("Be brief.\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {echo: {kind: echo}}\nchannels: [{name: c, providers: [echo], prompt_file: p.txt}]\n")
    assert load_config(cfg, {}).by_name["c"].prompt == "Be brief."
    cfg.write_text("providers: {echo: {kind: echo}}\nchannels: [{name: c, providers: [echo], prompt_file: gone.txt}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, {})
    assert e.value.path == "channels[0].prompt_file"


def test_yaml_syntax_error_names_line(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("channels:\n  - name: [oops\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, {})
    assert "line" in e.value.problem


def test_check_prints_route_table_and_disabled(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("PAID_KEY", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "providers: {echo: {kind: echo}, paid: {kind: echo, prefix: '${PAID_KEY}'}}\n"
        "channels:\n  - {name: eng, match: {chat: C1}, providers: [paid, echo]}\n  - {name: demo, providers: [echo]}\n"
    )
    assert main(["check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "paid" in out and "disabled: PAID_KEY is not set" in out
    assert "eng" in out and "chat=C1" in out and "paid → echo" in out


def test_check_bad_config_exits_2_without_traceback(tmp_path: Path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("providers: {echo: {kind: echo}}\nchannels: [{name: c, providers: [nope]}]\n")
    with pytest.raises(SystemExit) as e:
        main(["check", "--config", str(cfg)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "channels[0].providers[0]" in err and "Traceback" not in err


def test_shipped_config_is_valid_without_secrets(monkeypatch):
    for var in ("OPENAI_API_KEY", "API2D_KEY", "DIFY_APP_KEY", "OLLAMA_API_BASE", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(var, raising=False)
    s = load_config(Path(__file__).parents[2] / "config.yaml")
    assert s.by_name["demo"].providers == ("echo",)
    assert s.providers["openai"].disabled == "OPENAI_API_KEY is not set"


def test_claim_lease_and_recovery_window():
    server = parse_config(with_(), {}).raw.server
    assert (server.claim_lease, server.recover_within) == (30.0, 3600.0)
    assert error_of(with_(server={"claim_lease": 0.1})).path == "server.claim_lease"
    e = error_of(with_(server={"dedupe_ttl": 20, "claim_lease": 30}))
    assert e.path == "server.claim_lease" and "dedupe_ttl" in e.problem
    assert error_of(with_(server={"recover_within": 0})).path == "server.recover_within"
