# canaryd: one image for `canaryd serve` (the default), `canaryd worker` and `canaryd migrate`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

RUN pip install --no-cache-dir "uv==0.13.9"

WORKDIR /app

# Dependencies first, so that a change to the code does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY src/ src/
COPY migrations/ migrations/
COPY alembic.ini ./
RUN uv sync --frozen --no-dev --no-editable

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/canaryd --create-home \
        --shell /usr/sbin/nologin canaryd \
    && mkdir -p /etc/canaryd/ssh
USER canaryd

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["canaryd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
