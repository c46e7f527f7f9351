#!/usr/bin/env bash
# `make compose-test`: run compose/docker-compose.yml for real on this machine and check it.
#
# 1. Installs the Docker engine, debootstrap and Compose v1 with apt-get when they are missing
#    (root only), and starts a private dockerd (its own data root, exec root, pid file and socket
#    under a temporary directory), so nothing of another engine is touched.
# 2. Builds a local Python base image without Docker Hub (debootstrap of Debian bookworm, then
#    python3, python3-venv and this machine's CA certificates, so pip inside the build can reach
#    the package index) and caches it under $AW_COMPOSE_CACHE as a saved image. A user elsewhere
#    gets python:3.11-slim instead; the compose files are the same.
# 3. Builds the project image and brings the project up with free ports on 127.0.0.1, waits until
#    every validator answers /ready, checks that heights advance and that all nodes agree on the
#    execution state root, kills one validator container and checks that the other three go on.
# 4. Always (trap): brings the project down with its volumes, stops the private dockerd by its
#    pid, and resets what it leaves in the host's networking (its iptables chains and rules, the
#    FORWARD policy, net.ipv4.ip_forward) to what they were before.
#
# Environment: AW_COMPOSE_CACHE (default /var/cache/agent-world-compose), COMPOSE_TIMEOUT_S (make)
# (default 1200: the whole run), PYTHON (for the checks; default .venv/bin/python), AW_COMPOSE_LOGS
# (a file to save the project's logs in before it is brought down).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${AW_COMPOSE_CACHE:-/var/cache/agent-world-compose}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_TAG="local/agent-world-python:3.11"
PROJECT="awcompose$$"
W="$(mktemp -d /tmp/aw-compose.XXXXXX)"
export DOCKER_HOST="unix://$W/docker.sock"
STARTED=$(date +%s)
say() { echo "[compose-test $(( $(date +%s) - STARTED ))s] $*"; }

# -- 1. engine ------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "compose-test needs dockerd, debootstrap and docker-compose: sudo apt-get install docker.io debootstrap docker-compose" >&2
        exit 2
    fi
    say "installing docker.io, debootstrap and docker-compose"
    # no system-wide dockerd may start from the package's init scripts: a temporary policy-rc.d
    # (exit 101: "action forbidden") stops that; this script runs its own engine
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap docker-compose >/dev/null
    [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi

FORWARD_POLICY="$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}')"
IP_FORWARD="$(cat /proc/sys/net/ipv4/ip_forward)"
DOCKERD_PID=""

cleanup() {
    status=$?
    set +e
    if [ -S "$W/docker.sock" ]; then
        if [ -n "${AW_COMPOSE_LOGS:-}" ]; then
            (cd "$ROOT/compose" && "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker-compose.fullnode.yml \
                logs --no-color >"$AW_COMPOSE_LOGS" 2>&1)
        fi
        say "bringing the project down"
        (cd "$ROOT/compose" && "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml down -v --remove-orphans >/dev/null 2>&1)
    fi
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill "$DOCKERD_PID"
        for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$DOCKERD_PID" 2>/dev/null
    fi
    # what dockerd leaves behind in the host's networking
    for table in filter nat; do
        for chain in DOCKER-USER DOCKER-ISOLATION-STAGE-1 DOCKER-ISOLATION-STAGE-2 DOCKER; do
            iptables -t "$table" -S 2>/dev/null | grep -E "^-A [A-Z-]+ .*-j $chain( |$)" | sed 's/^-A/-D/' | while read -r rule; do
                eval iptables -t "$table" "$rule" 2>/dev/null
            done
            iptables -t "$table" -F "$chain" 2>/dev/null
            iptables -t "$table" -X "$chain" 2>/dev/null
        done
    done
    for table in filter nat; do  # rules naming its bridges (docker0, br-<id>)
        iptables -t "$table" -S 2>/dev/null | grep -E "^-A .*(docker0|br-[0-9a-f]{12})" | sed 's/^-A/-D/' | while read -r rule; do
            eval iptables -t "$table" "$rule" 2>/dev/null
        done
    done
    [ -n "$FORWARD_POLICY" ] && iptables -P FORWARD "$FORWARD_POLICY" 2>/dev/null
    echo "$IP_FORWARD" > /proc/sys/net/ipv4/ip_forward 2>/dev/null
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^(br-[0-9a-f]{12}|docker0)' | cut -d@ -f1); do
        ip link delete "$link" 2>/dev/null
    done
    umount "$W"/exec/*/* 2>/dev/null
    rm -rf "$W" 2>/dev/null
    if [ $status -eq 0 ]; then say "passed"; else say "FAILED (status $status)"; fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a private dockerd in $W"
dockerd --data-root "$W/data" --exec-root "$W/exec" --pidfile "$W/dockerd.pid" -H "$DOCKER_HOST" \
    >"$W/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
docker info >/dev/null 2>&1 || { tail -20 "$W/dockerd.log"; echo "dockerd did not start" >&2; exit 1; }

# -- 2. base image ---------------------------------------------------------------------------------
mkdir -p "$CACHE"
if [ -f "$CACHE/base-image.tar" ]; then
    say "loading the cached base image"
    docker load -i "$CACHE/base-image.tar" >/dev/null
else
    say "building a Debian bookworm root file system with debootstrap"
    debootstrap --variant=minbase bookworm "$W/rootfs" >"$W/debootstrap.log" 2>&1 \
        || { tail -20 "$W/debootstrap.log"; exit 1; }
    tar -C "$W/rootfs" -c . | docker import - local/debian:bookworm >/dev/null
    rm -rf "$W/rootfs"
    mkdir -p "$W/base"
    cp /usr/local/share/ca-certificates/*.crt "$W/base/" 2>/dev/null || true
    cat > "$W/base/Dockerfile" <<'DOCKERFILE'
FROM local/debian:bookworm
COPY *.crt /usr/local/share/ca-certificates/
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv python3-pip ca-certificates >/dev/null \
    && update-ca-certificates >/dev/null && ln -sf /usr/bin/python3 /usr/bin/python && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
    ls "$W/base"/*.crt >/dev/null 2>&1 || touch "$W/base/none.crt"
    say "building the Python base image"
    docker build -q -t "$BASE_TAG" "$W/base" >/dev/null
    docker save -o "$CACHE/base-image.tar" "$BASE_TAG"
fi

# -- 3. the project --------------------------------------------------------------------------------
read -r P0 P1 P2 P3 PF < <("$PYTHON" -c "
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()")
export BASE_IMAGE="$BASE_TAG" AW_RPC_PORT0=$P0 AW_RPC_PORT1=$P1 AW_RPC_PORT2=$P2 AW_RPC_PORT3=$P3 AW_RPC_PORT_FULLNODE=$PF
export AW_SNAPSHOT_INTERVAL=20
cd "$ROOT/compose"
say "building the project image (BASE_IMAGE=$BASE_IMAGE) with ${COMPOSE[*]}"
BUILD_STARTED=$(date +%s)
"${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml build >"$W/build.log" 2>&1 || { tail -30 "$W/build.log"; exit 1; }
say "image built in $(( $(date +%s) - BUILD_STARTED ))s; starting the project"
UP_STARTED=$(date +%s)
"${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker-compose.fullnode.yml up -d >"$W/up.log" 2>&1 \
    || { cat "$W/up.log"; "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml logs --tail 30; exit 1; }
say "project up in $(( $(date +%s) - UP_STARTED ))s; checking the chain"
"$PYTHON" "$ROOT/compose/check.py" --project "$PROJECT" --ports "$P0,$P1,$P2,$P3" --fullnode-port "$PF" \
    --compose "${COMPOSE[*]}" || { "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml -f docker-compose.fullnode.yml logs --tail 40; exit 1; }
