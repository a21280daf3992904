"""Issue 11: the container image definition and deploy/ validated without a container engine.

These check the structure (compose services, health-gated start-up, no secrets inline), that
deploy/config.yaml is a valid Switchboard config on the shared Redis store, and, where Debian's
nginx is installed, that deploy/nginx.conf passes `nginx -t`. Building and running the image is
not done here (see README, "Deploy")."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRETS = ("SWITCHBOARD_KEY", "OPENAI_API_KEY", "DIFY_APP_KEY", "SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN")


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_two_instances_redis_and_a_load_balancer():
    services = compose()["services"]
    assert set(services) == {"redis", "switchboard-1", "switchboard-2", "lb"}
    one, two = services["switchboard-1"], services["switchboard-2"]
    assert one["image"] == two["image"] and one["build"]["context"] == ".."
    assert (DEPLOY / one["build"]["context"] / one["build"]["dockerfile"]).is_file()
    for s in (one, two):
        assert "./config.yaml:/etc/switchboard/config.yaml:ro" in s["volumes"]
        assert "ports" not in s  # only the load balancer is published
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]
    assert list(services["lb"]["ports"]) == ["${SWITCHBOARD_HTTP_PORT:-8080}:80"]


def test_startup_is_health_gated():
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("switchboard-1", "switchboard-2"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
    assert services["lb"]["depends_on"] == {
        "switchboard-1": {"condition": "service_healthy"},
        "switchboard-2": {"condition": "service_healthy"},
    }


def test_no_secret_is_written_in_deploy_files():
    for service in compose()["services"].values():
        env = service.get("environment", {})
        for key, value in env.items():
            assert value == f"${{{key}:-}}", f"{key} must come from the environment, not the file"
    assert set(compose()["services"]["switchboard-1"]["environment"]) == set(SECRETS)
    for path in (DEPLOY / "config.yaml", DEPLOY / "compose.yaml", DEPLOY / ".env.example"):
        text = path.read_text()
        assert not re.search(r"\bsk-(?!local-demo)[A-Za-z0-9]{8,}", text), path
        assert not re.search(r"xox[bp]-", text), path
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert value == "" or key == "SWITCHBOARD_HTTP_PORT", line
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_deploy_config_is_valid_and_uses_the_shared_store(monkeypatch):
    from proxy.config import load_config

    for key in SECRETS:
        monkeypatch.delenv(key, raising=False)
    settings = load_config(str(DEPLOY / "config.yaml"))
    raw = settings.raw
    assert raw.store.url == "redis://redis:6379/0"
    assert raw.server.host == "0.0.0.0" and raw.server.port == 8080
    assert "demo" in [c.name for c in raw.channels]


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "multi-stage: build, then runtime"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert re.search(r"pip install -c constraints\.txt \"\.\$\{EXTRAS:\+\[\$EXTRAS\]\}\"", text)
    assert re.search(r"^USER switchboard$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*urllib.*?/readyz", text, re.M)
    assert re.search(r'^VOLUME \["/etc/switchboard", "/data"\]$', text, re.M)
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    assert "switchboard serve --config" in text and "--host 0.0.0.0" in text
    assert "PYTHONUNBUFFERED=1" in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".venv", "bench", "tests", ".pytest_cache"):
        assert entry in ignore


def test_nginx_streams_unbuffered():
    text = (DEPLOY / "nginx.conf").read_text()
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_http_version 1.1;"):
        assert directive in text
    timeout = re.search(r"proxy_read_timeout (\d+)s;", text)
    assert timeout and int(timeout.group(1)) >= 300
    for name in ("switchboard-1:8080", "switchboard-2:8080"):
        assert f"server {name}" in text


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (apt-get install nginx-light): syntax not checked",
)
def test_nginx_config_syntax(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    # The compose service names do not resolve here: a stub upstream on loopback instead.
    conf = (DEPLOY / "nginx.conf").read_text().replace("switchboard-1:8080", "127.0.0.1:18081")
    conf = conf.replace("switchboard-2:8080", "127.0.0.1:18082")
    conf = f"pid {tmp_path / 'nginx.pid'};\nerror_log stderr;\n{conf}"
    (tmp_path / "nginx.conf").write_text(conf)
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr
