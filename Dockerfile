# One image for every Turnout process; compose.yaml runs it with different commands
# (`router`, `sink`, `alerts`, `dashboard`, `simulate`, ...):
#   docker build -t turnout .
#   docker run --rm turnout --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY turnout/ turnout/
COPY service/ service/
COPY analytics/ analytics/
COPY dashboards/ dashboards/
RUN pip install . \
 && useradd --create-home --uid 10001 turnout \
 && mkdir /data \
 && chown turnout /data

# The DuckDB archive lives on a volume; a turnout.toml in /data is read when present.
ENV TURNOUT_DUCKDB_PATH=/data/turnout.duckdb
VOLUME /data
WORKDIR /data
USER turnout
EXPOSE 8080 8089 8501

ENTRYPOINT ["turnout"]
CMD ["--help"]
