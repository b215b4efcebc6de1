#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages if it is missing, starts a
# throwaway server on 127.0.0.1:${PGPORT:-55432} (trust auth, data in a
# temporary directory) unless one already answers there, and prints the URL
# for AXUM_BACKGROUND_PG_URL on its last line.
#
#   export AXUM_BACKGROUND_PG_URL="$(.ci/postgres.sh | tail -n1)"
set -euo pipefail
port="${PGPORT:-55432}"
url="postgres://postgres@127.0.0.1:${port}/postgres"

as_root=()
if [ "$(id -u)" -ne 0 ]; then as_root=(sudo); fi

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

if [ -z "$(bin_dir)" ]; then
    echo "installing postgresql from Debian's packages" >&2
    "${as_root[@]}" apt-get update -qq >&2
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends postgresql >&2
fi
bin="$(bin_dir)"

if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    echo "postgres already answers on 127.0.0.1:${port}" >&2
else
    # initdb refuses to run as root: the server runs as the `postgres` user.
    run_as=()
    if [ "$(id -u)" -eq 0 ]; then run_as=(runuser -u postgres --); fi
    data="$(mktemp -d /tmp/axum-background-pg.XXXXXX)"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$data"; fi
    "${run_as[@]}" "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
    "${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
        -o "-h 127.0.0.1 -p ${port} -k ${data} -c max_connections=200" start >&2
fi
echo "$url"
