# syntax=docker/dockerfile:1
# One image per service, from one file: docker build --target ingest|query|retrieve|worker|gateway .
# Each image runs one service as a non-root user with a
# read-only root filesystem in mind (writes go to DATA_DIR, mount an emptyDir there), and answers a
# healthcheck.

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
COPY clients ./clients
# one environment for every service: they share all their heavy dependencies (pydicom, numpy, codecs)
RUN uv sync --frozen --no-dev --no-editable --all-packages && rm -rf /root/.cache

FROM ${PYTHON} AS runtime
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin dicomgw \
 && mkdir -p /var/lib/dicomgw && chown 10001 /var/lib/dicomgw
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/var/lib/dicomgw PORT=8080
WORKDIR /app
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=3)"]

FROM runtime AS ingest
COPY --from=build /app/.venv /app/.venv
CMD ["sh", "-c", "exec uvicorn --factory dicomgw_ingest.app:create_app --host 0.0.0.0 --port $PORT --timeout-graceful-shutdown 30 --no-access-log"]

FROM runtime AS query
COPY --from=build /app/.venv /app/.venv
CMD ["sh", "-c", "exec uvicorn --factory dicomgw_query.app:create_app --host 0.0.0.0 --port $PORT --timeout-graceful-shutdown 30 --no-access-log"]

FROM runtime AS retrieve
COPY --from=build /app/.venv /app/.venv
CMD ["sh", "-c", "exec uvicorn --factory dicomgw_retrieve.app:create_app --host 0.0.0.0 --port $PORT --timeout-graceful-shutdown 30 --no-access-log"]

FROM runtime AS worker
COPY --from=build /app/.venv /app/.venv
HEALTHCHECK NONE
CMD ["dicomgw-worker", "worker"]

FROM runtime AS dimse
COPY --from=build /app/.venv /app/.venv
HEALTHCHECK NONE
EXPOSE 11112
CMD ["dicomgw-dimse", "--host", "0.0.0.0", "--port", "11112"]

FROM runtime AS gateway
COPY --from=build /app/.venv /app/.venv
CMD ["dicomgw", "serve", "--host", "0.0.0.0"]
