# Two images from one file; compose.yaml runs them with different commands:
#   docker build --target router -t turnout-router .   # `turnout router` alone: locks/router.txt
#   docker build -t turnout .                          # every other process (sink, alerts,
#                                                      # dashboard, gateway, simulate, ...):
#   docker run --rm turnout --help                     # locks/demo.txt
# Each installs its lock file (every pin hash-checked), then the project without dependencies:
# the router image has no Streamlit, DuckDB, pyarrow, pandas or uvicorn.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TURNOUT_DUCKDB_PATH=/data/turnout.duckdb

RUN useradd --create-home --uid 10001 turnout \
 && mkdir /data \
 && chown turnout /data
COPY locks/ /locks/

# The DuckDB archive lives on a volume; a turnout.toml in /data is read when present.
VOLUME /data
WORKDIR /data
EXPOSE 8080 8089 8501
ENTRYPOINT ["turnout"]
CMD ["--help"]

# The project's wheel, built once for both images.
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY turnout/ turnout/
COPY service/ service/
COPY analytics/ analytics/
COPY dashboards/ dashboards/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS router
RUN pip install --require-hashes -r /locks/router.txt
COPY --from=wheel /wheels/ /wheels/
RUN pip install --no-deps /wheels/*.whl
USER turnout

# The default target (last): every Turnout process.
FROM base AS full
RUN pip install --require-hashes -r /locks/demo.txt
COPY --from=wheel /wheels/ /wheels/
RUN pip install --no-deps /wheels/*.whl
USER turnout
