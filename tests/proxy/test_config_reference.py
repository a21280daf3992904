"""Every config key is documented, and docs/config-reference.md is what the generator prints now."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config_reference import PLATFORMS, PROVIDERS, adapter_models, markdown, sections, undocumented

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def test_every_config_field_has_a_description() -> None:
    assert undocumented() == [], f"config fields without a description (a docstring below the field): {undocumented()}"


def test_the_reference_covers_top_level_sections_and_every_registered_kind() -> None:
    paths = [path for path, _ in sections()]
    for top in ("server", "store", "keys[]", "failover", "channels[]", "channels[].match", "limits"):
        assert top in paths
    for group, prefix in ((PROVIDERS, "providers"), (PLATFORMS, "platforms")):
        kinds = adapter_models(group)
        assert kinds
        for kind in kinds:
            assert f"{prefix}.<name> (kind: {kind})" in paths


def test_secrets_are_shown_as_variables_and_types_readably() -> None:
    page = markdown()
    assert "| `bot_token` | str (length ≥ 1) | required, e.g. `${SLACK_BOT_TOKEN}` |" in page
    assert "| `timeout` | float > 0 |" in page
    assert '| `app_mode` | "chat" \\| "agent" \\| "completion" \\| "workflow" | `"chat"` |' in page
    assert "| `port` | 0 ≤ int ≤ 65535 | `8080` |" in page


def test_the_command_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-reference", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == markdown()


def test_the_docs_page_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == markdown(), (
        "docs/config-reference.md is stale: run `switchboard config-reference > docs/config-reference.md`"
    )
