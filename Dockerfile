# syntax=docker/dockerfile:1
# The chat server's image: one image for every role (docs/deployment.md).
#   node        chatserver run                 (the default command)
#   writer      chatserver compliance run --metrics 0.0.0.0:9108
#   migrate     chatserver migrate             (once, before the nodes start)
# Build:  docker build --build-arg VERSION=0.1.0 --build-arg COMMIT="$(git rev-parse HEAD)" -t chatserver .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a wheel, installed into a virtual environment that the runtime stage copies ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY chatserver ./chatserver
COPY compliance ./compliance
COPY migrations ./migrations
# The build tool in a throwaway environment; the one the runtime copies holds the wheel and its
# dependencies only.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install "build==1.*" \
    && /opt/build/bin/python -m build --wheel --outdir /wheels . \
    && python -m venv /opt/chatserver \
    && /opt/chatserver/bin/pip install /wheels/chatserver-*.whl

# -- runtime: the virtual environment and nothing else, as an unprivileged user -----------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="chatserver" \
      org.opencontainers.image.description="A self-hosted persistent chat server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --home-dir /var/lib/chatserver --create-home chat
COPY --from=build /opt/chatserver /opt/chatserver
COPY deploy/entrypoint.sh /usr/local/bin/chatserver-entrypoint
ENV PATH=/opt/chatserver/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHATSERVER_VERSION=${VERSION} \
    CHATSERVER_COMMIT=${COMMIT}
WORKDIR /var/lib/chatserver
USER 10001:10001
# tcp, websocket, http (files), peer, management; 9108 is the compliance writer's /metrics
EXPOSE 5041 5080 5081 8011 8012 9108
# The management port's readiness (/readyz: accepting clients and the store answers). Roles
# without a management port (the writer, migrate) set their own check in compose.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,ssl,sys,urllib.request as u; sys.exit(0 if u.urlopen(os.environ.get('CHATSERVER_HEALTHCHECK_URL','http://127.0.0.1:8012/readyz'),timeout=2,context=ssl._create_unverified_context()).status==200 else 1)"]
ENTRYPOINT ["chatserver-entrypoint"]
CMD ["chatserver", "run"]
