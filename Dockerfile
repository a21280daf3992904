# Switchboard container image (issue 11). Build from the repository root:
#   docker build -t switchboard .                      (or podman/buildah; EXTRAS=litellm for local models)
#   docker build --build-arg EXTRAS=litellm -t switchboard:litellm .
# Runs `switchboard serve` as a non-root user; the config is a volume at /etc/switchboard, the
# SQLite store (the shipped config's sqlite:///data/switchboard.db, relative to WORKDIR /) at /data.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a venv with Switchboard and its runtime dependencies only (pinned by constraints.txt)
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=
# Behind a TLS-intercepting proxy: the path of its CA bundle, mounted into the build
# (podman build -v /etc/ssl/certs/ca-certificates.crt:/ca.crt:ro --build-arg CA_BUNDLE=/ca.crt .)
ARG CA_BUNDLE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/switchboard
COPY pyproject.toml constraints.txt README.md ./
COPY proxy ./proxy
COPY providers ./providers
COPY platforms ./platforms
RUN if [ -n "$CA_BUNDLE" ]; then export PIP_CERT="$CA_BUNDLE"; fi; \
    /opt/switchboard/bin/pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}"

# ---- runtime: the venv, a default config, nothing else
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/switchboard/bin:$PATH \
    SWITCHBOARD_CONFIG=/etc/switchboard/config.yaml \
    SWITCHBOARD_PORT=8080
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid switchboard --home-dir /data --no-create-home --shell /usr/sbin/nologin switchboard \
 && mkdir -p /data /etc/switchboard \
 && chown switchboard:switchboard /data
COPY --from=build /opt/switchboard /opt/switchboard
COPY config.yaml /etc/switchboard/config.yaml
WORKDIR /
USER switchboard
VOLUME ["/etc/switchboard", "/data"]
EXPOSE 8080
# /readyz: 200 while the store is reachable and a channel can be served (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SWITCHBOARD_PORT','8080'), timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "exec switchboard serve --config \"$SWITCHBOARD_CONFIG\" --host 0.0.0.0 --port \"$SWITCHBOARD_PORT\""]
