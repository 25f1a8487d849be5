# syntax=docker/dockerfile:1
#
# chat-relay in a container.
#
#   docker build -t chat-relay .
#   docker run -d --name chat-relay --stop-timeout 30 \
#       -v relay-data:/data -p 7300:7300 chat-relay
#
# The data folder (identity.key, relay.db, run.json, admin.token, backups/) lives in the volume
# /data: keep the volume, or the relay gets a new identity and a new address for every channel.
# Admin commands run inside, where --data finds the operator port and its token:
#   docker exec chat-relay relay admin groups --data /data
#   docker exec chat-relay relay admin backup relay.db --data /data     # -> /data/backups/relay.db
#
# TLS without a proxy: mount the certificate and key (readable by uid 10001) and set
# server.tls_cert / server.tls_key in the config file (docs/operations.md, "TLS").
#
# Public URL: inside the container the relay listens on 0.0.0.0:7300, which is not what clients
# dial. Mount a config file that sets `server.public_url` to the URL clients use (for example
# "https://relay.example.org:443", the port written out) and pass --config; otherwise the
# relay hands out addresses such as http://0.0.0.0:7300/... that nobody can reach:
#
#   docker run -d --name chat-relay --stop-timeout 30 \
#       -v relay-data:/data -p 7300:7300 \
#       -v /etc/chat-relay/relay.toml:/etc/chat-relay/relay.toml:ro \
#       chat-relay serve --data /data --listen 0.0.0.0:7300 --admin-listen 127.0.0.1:7301 \
#                        --config /etc/chat-relay/relay.toml
#
# (--listen and --admin-listen on the command line win over the config file.) The image carries
# the documented default config at /etc/chat-relay/relay.toml as a starting point:
#   docker run --rm --entrypoint cat chat-relay /etc/chat-relay/relay.toml > relay.toml
#
# More: docs/operations.md.

# Pin it by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a virtualenv with the project and its dependencies ------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the build needs (see .dockerignore): metadata, README (the package's readme), code.
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install --no-cache-dir .

# --- final: the venv on a clean slim image, run as a non-root user -----------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="chat-relay" \
      org.opencontainers.image.description="A relay daemon for owner-signed channels" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid/gid (10001), so that a bind-mounted data folder can be prepared on the host
# with `chown 10001:10001 DIR` and orchestrators can check runAsNonRoot.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --no-log-init --uid 10001 --gid relay --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin relay \
 && install -d -o relay -g relay -m 0700 /data

# Same base image in both stages, so the venv's interpreter path (/usr/local/bin/python3.11)
# exists here too.
COPY --from=builder /opt/venv /opt/venv
COPY config/relay.toml /etc/chat-relay/relay.toml

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]

# 7300: public port (HTTP/1.1 + WebSocket), for clients.
# 7301: operator port (/healthz, /readyz, /metrics without a token; /admin/... with the token in
#       /data/admin.token). The default CMD binds it to 127.0.0.1 inside the container, so
#       publishing it does nothing. To scrape /metrics from outside, override CMD with
#       --admin-listen 0.0.0.0:7301 and publish it on the host's loopback only:
#       -p 127.0.0.1:7301:7301 (requests must name a loopback host, or server.admin_hosts).
EXPOSE 7300 7301

# SIGTERM drains: stop accepting, let requests in flight finish for server.shutdown_grace
# (default 10 s), close the database, exit 0. Docker's default stop time-out is also 10 s:
# give it more (docker run --stop-timeout 30, compose stop_grace_period: 30s).
STOPSIGNAL SIGTERM

# Health: GET /healthz on the operator port, from inside the container (proxy variables ignored).
# It needs no token, and its Host (127.0.0.1) is loopback, which the operator port accepts.
# If you move the operator port (--admin-listen), this check must follow it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:7301/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["relay"]
CMD ["serve", "--data", "/data", "--listen", "0.0.0.0:7300", "--admin-listen", "127.0.0.1:7301"]
