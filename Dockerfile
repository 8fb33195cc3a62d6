# syntax=docker/dockerfile:1
# canaryd: one image for `canaryd serve` (the default), `canaryd worker` and `canaryd migrate`.
#
# The base is any Debian 12 image with python3.11 and its venv module: Docker Hub's python:3.11-slim-bookworm
# by default. Without a registry, deploy/image/build.sh makes one locally (debootstrap) and passes it as
# BASE_IMAGE, and lends the host's CA bundle and package-index settings to the build steps as secrets (never
# stored in a layer). See deploy/README.md, "Container image".
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# --- build: uv resolves nothing here, it installs exactly uv.lock into /opt/canaryd -------------------------
FROM ${BASE_IMAGE} AS build

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_PROJECT_ENVIRONMENT=/opt/canaryd

COPY deploy/image/with-host-index.sh /usr/local/bin/with-host-index
RUN --mount=type=secret,id=ca-bundle --mount=type=secret,id=index-env \
    with-host-index sh -c 'python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --quiet "uv==0.13.9"'

WORKDIR /src
# Dependencies first, so that a change to the code does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=secret,id=ca-bundle --mount=type=secret,id=index-env --mount=type=cache,target=/root/.cache/uv \
    with-host-index /opt/uv/bin/uv sync --frozen --no-dev --no-install-project
COPY src/ src/
# --no-editable: canaryd itself (its migrations included) goes into site-packages; /src stays behind.
RUN --mount=type=secret,id=ca-bundle --mount=type=secret,id=index-env --mount=type=cache,target=/root/.cache/uv \
    with-host-index /opt/uv/bin/uv sync --frozen --no-dev --no-editable

# --- final: the base, the venv and a user; no uv, no pip cache, no compilers, no source tree ----------------
FROM ${BASE_IMAGE}

# CANARYD_DATA_DIR (and the working directory, for releases whose default SQLite path is ./canaryd.db) is
# the volume: the default SQLite database lives there, writable by the canaryd user.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/canaryd/bin:$PATH \
    CANARYD_DATA_DIR=/var/lib/canaryd \
    CANARYD_HOST=0.0.0.0 \
    CANARYD_PORT=8080

RUN groupadd --gid 10001 canaryd \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/canaryd --no-create-home --no-log-init \
        --shell /usr/sbin/nologin canaryd \
    && install -d -m 0750 -o canaryd -g canaryd /var/lib/canaryd \
    && install -d -m 0755 /etc/canaryd /etc/canaryd/ssh

COPY --from=build /opt/canaryd /opt/canaryd

USER 10001:10001
WORKDIR /var/lib/canaryd
VOLUME ["/var/lib/canaryd"]
EXPOSE 8080

# Follows CANARYD_PORT, the port `canaryd serve` listens on (its --port defaults to that variable).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CANARYD_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["canaryd"]
CMD ["serve"]
