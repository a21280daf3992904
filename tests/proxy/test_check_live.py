"""`switchboard check --live` as a subprocess against fake upstreams on loopback: one line per
provider and key, keys masked, and the exit code."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.dify import FakeDify
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import free_port

ROOT = Path(__file__).parents[2]
GOOD, BAD, DEAD = "sk-good-0000000000001234", "sk-bad-00000000000009876", "sk-dead-0000000000004321"
DIFY_KEY = "app-secret-key-5678"
UNSET = "SWITCHBOARD_TEST_UNSET_KEY"


async def check_live(cfg: Path) -> tuple[int, list[str], str]:
    """Run `python -m proxy check --live` without blocking this loop (the fakes live on it):
    exit code, stdout lines with runs of spaces collapsed, stderr."""
    env = {k: v for k, v in os.environ.items() if k != UNSET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "proxy", "check", "--live", "--config", str(cfg)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    assert proc.returncode is not None
    return proc.returncode, [" ".join(line.split()) for line in out.decode().splitlines()], err.decode()


def providers_yaml(blocks: dict[str, str]) -> str:
    lines = "".join(f"  {name}: {block}\n" for name, block in blocks.items())
    return (
        f"store: {{url: 'memory://'}}\nproviders:\n{lines}channels: [{{name: c, providers: [{', '.join(blocks)}]}}]\n"
    )


async def test_check_live_reports_every_key_and_fails_on_a_dead_provider(tmp_path: Path):
    async with FakeOpenAI() as up, FakeDify(api_key=DIFY_KEY) as dify, FakeOllama() as ollama:
        up.key_rejected.add(BAD)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            providers_yaml(
                {
                    "pool": f"{{kind: openai, base_url: '{up.base_url}', api_keys: [{GOOD}, {BAD}], model: gpt-fake}}",
                    "dead": f"{{kind: openai, base_url: 'http://127.0.0.1:{free_port()}/v1', api_key: {DEAD}}}",
                    "kb": f"{{kind: dify, base_url: '{dify.base_url}', api_key: {DIFY_KEY}}}",
                    "local": f"{{kind: litellm, model: ollama_chat/qwen2.5, api_base: '{ollama.base_url}'}}",
                    "missing": f"{{kind: litellm, model: ollama_chat/llama3, api_base: '{ollama.base_url}'}}",
                    "spare": f"{{kind: openai, api_key: '${{{UNSET}}}'}}",
                    "demo": "{kind: echo}",
                }
            )
        )
        code, lines, err = await check_live(cfg)
    live = lines[lines.index("store: reachable") + 2 :]
    assert live[:-1] == [
        "pool sk-…1234 reachable (model gpt-fake listed)",
        "pool sk-…9876 auth failed: Incorrect API key provided (HTTP 401)",
        "dead sk-…4321 unreachable: cannot connect: Connection refused",
        "kb app…5678 reachable (app 'Fake KB', mode chat)",
        "local - reachable (model qwen2.5 pulled)",
        "missing - misconfigured: model llama3 not pulled (ollama pull llama3); has: qwen2.5:latest",
        f"spare - not probed: disabled ({UNSET} is not set)",
        "demo - not probed: no network",
    ]
    assert live[-1] == "unusable: dead, missing (no key is usable)" and code == 1
    for secret in (GOOD, BAD, DEAD, DIFY_KEY):
        assert secret not in "\n".join(lines) + err
    assert {r.path for r in up.requests} == {"/v1/models"}  # nothing generated, nothing billed
    assert not dify.requests and not ollama.requests


async def test_check_live_exits_0_when_every_enabled_provider_answers(tmp_path: Path):
    async with FakeOpenAI() as up, FakeDify(api_key=DIFY_KEY) as dify:
        up.key_rejected.add(BAD)  # one bad key in a pool: reported, but the pool still works
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            providers_yaml(
                {
                    "pool": f"{{kind: openai, base_url: '{up.base_url}', api_keys: [{GOOD}, {BAD}], model: gpt-fake}}",
                    "kb": f"{{kind: dify, base_url: '{dify.base_url}', api_key: {DIFY_KEY}}}",
                    "spare": f"{{kind: openai, api_key: '${{{UNSET}}}'}}",
                    "demo": "{kind: echo}",
                }
            )
        )
        code, lines, err = await check_live(cfg)
    assert code == 0, (lines, err)
    assert "pool sk-…9876 auth failed: Incorrect API key provided (HTTP 401)" in lines
    assert not any(line.startswith("unusable:") for line in lines)
