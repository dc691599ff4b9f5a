# rtml: one image for every service of docker-compose.yml (Dagster webserver and daemon, the
# streaming sidecar, the prediction API); the command picks the role.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RTML_HOME=/var/lib/rtml \
    DAGSTER_HOME=/opt/dagster/home

RUN useradd --create-home --uid 10001 rtml \
 && mkdir -p /var/lib/rtml /opt/dagster/home \
 && chown rtml:rtml /var/lib/rtml /opt/dagster/home

WORKDIR /app
# dependencies first (cached while only the code changes)
COPY pyproject.toml README.md ./
RUN mkdir rtml_core rtml_assets rtml_stream api rtml_cli \
 && pip install . && pip uninstall -y rtml
COPY rtml_core rtml_core
COPY rtml_assets rtml_assets
COPY rtml_stream rtml_stream
COPY api api
COPY rtml_cli rtml_cli
COPY data data
RUN pip install --no-deps .
# the Dagster instance (PostgreSQL storage from RTML_DAGSTER_PG_URL) and the code location
COPY dagster.yaml workspace.yaml /opt/dagster/home/

USER rtml
EXPOSE 3000 8000 9108
CMD ["rtml", "--help"]
