# nerbot container: the package and its locked dependencies, nothing else.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

WORKDIR /app
RUN pip install --no-cache-dir uv
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY nerbot ./nerbot
RUN uv sync --frozen --no-dev

VOLUME ["/data"]
ENTRYPOINT ["/app/.venv/bin/nerbot"]
CMD ["run", "-c", "/config/config.toml"]
