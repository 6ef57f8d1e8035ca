#!/usr/bin/env bash
# Stand-ins for the base images that docker-compose.yml and deploy/*.Dockerfile name, made from
# Debian's packages, for a Docker host that reaches no image registry (CI here):
#   python:3.11-slim  Debian bookworm's Python 3.11 as a virtual environment at /usr/local, so
#                     `python` and `pip` are on PATH and `pip install` works, as in the real one;
#   postgres:15       Debian bookworm's postgresql-15 with an entrypoint that, like the real one's,
#                     honours POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, runs initdb into
#                     PGDATA (/var/lib/postgresql/data) on the first start and runs the server as
#                     the postgres user; pg_isready and psql are on PATH. Unlike the real one
#                     it stops on SIGTERM (a smart shutdown): `docker import` sets no STOPSIGNAL.
#
#   scripts/build-base-images.sh [IMAGE...]     (default: python:3.11-slim postgres:15)
#
# An image that exists already is kept: a host that reaches a registry has the real one (pull it
# first: `docker compose pull` or `docker pull postgres:15`), and one built here before is Docker's
# own cache between runs. `docker rmi` it to build it again. Needs root (debootstrap) and Debian's
# mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian); honours DOCKER_HOST.
set -euo pipefail

mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
images=("$@")
if [[ ${#images[@]} == 0 ]]; then images=(python:3.11-slim postgres:15); fi

exists() { docker image inspect "$1" >/dev/null 2>&1; }

work=""
cleanup() { if [[ -n "$work" ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT

# A minimal Debian root for IMAGE in $work/root, with the packages INCLUDE (comma-separated).
debian_root() {
  if [[ $(id -u) != 0 ]]; then
    echo "building $1 needs root (debootstrap); or pull the real image" >&2
    exit 1
  fi
  if ! command -v debootstrap >/dev/null; then
    echo "building $1 needs debootstrap (apt-get install debootstrap); or pull the real image" >&2
    exit 1
  fi
  work="$(mktemp -d "${TMPDIR:-/var/tmp}/ik-base-image.XXXXXX")"
  echo "debootstrap $suite for $1 (from $mirror)..."
  debootstrap --variant=minbase --include="$2" "$suite" "$work/root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
}

# PACKAGES into the root through apt, as in a Dockerfile: no service started, no recommends.
apt_install() {
  local root="$work/root"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
    "$@" >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    exit 1
  }
  rm -f "$root/usr/sbin/policy-rc.d"
}

# What no container needs: package lists and caches, documentation, manuals, translations.
slim_root() {
  local root="$work/root"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/tmp/* "$root"/var/tmp/* \
    "$root"/etc/resolv.conf "$root"/etc/hostname
  # As in Debian's own images: apt keeps no downloaded packages.
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' \
    >"$root/etc/apt/apt.conf.d/docker-clean"
}

import_root() {
  local tag="$1"
  shift
  local changes=()
  for change in "$@"; do changes+=(--change "$change"); done
  tar -C "$work/root" --numeric-owner -c . | docker import "${changes[@]}" \
    --message "stand-in for $tag from Debian $suite packages (scripts/build-base-images.sh)" \
    - "$tag" >/dev/null
  rm -rf "$work"
  work=""
  echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

build_python() {
  debian_root "$1" ca-certificates,netbase,tzdata
  apt_install python3.11 python3.11-venv
  # A virtual environment at /usr/local: python, python3, pip there as in the real image, and
  # `pip install` into it allowed (Debian's own Python is externally managed).
  chroot "$work/root" /usr/bin/python3.11 -m venv /usr/local
  rm -f "$work"/root/usr/local/bin/[Aa]ctivate*
  slim_root
  import_root "$1" \
    'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV LANG=C.UTF-8' \
    'CMD ["python3"]'
}

build_postgres() {
  local major=15
  debian_root "$1" ca-certificates,netbase,tzdata
  local root="$work/root"
  # No cluster of Debian's own: the entrypoint makes one in PGDATA.
  mkdir -p "$root/etc/postgresql-common/createcluster.d"
  echo "create_main_cluster = false" >"$root/etc/postgresql-common/createcluster.d/no-main.conf"
  apt_install "postgresql-$major"
  # Listening on every address, as the real image does: the Manager connects from its container.
  sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
    "$root/usr/share/postgresql/$major/postgresql.conf.sample"
  mkdir -p "$root/var/lib/postgresql/data" "$root/var/run/postgresql"
  chroot "$root" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
  chmod 700 "$root/var/lib/postgresql/data"
  chmod 3777 "$root/var/run/postgresql"
  install -m 755 /dev/stdin "$root/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# The part of the official postgres image's entrypoint that docker-compose.yml relies on.
set -eu
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    printf 'host all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        psql -v ON_ERROR_STOP=1 -q --username="$POSTGRES_USER" --dbname=postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
ENTRYPOINT
  slim_root
  import_root "$1" \
    "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    'ENV LANG=C.UTF-8' \
    "ENV PG_MAJOR=$major" \
    'ENV PGDATA=/var/lib/postgresql/data' \
    'VOLUME /var/lib/postgresql/data' \
    'EXPOSE 5432' \
    'ENTRYPOINT ["docker-entrypoint.sh"]' \
    'CMD ["postgres"]'
}

for image in "${images[@]}"; do
  if exists "$image"; then
    echo "image $image exists"
    continue
  fi
  case "$image" in
    python:3.11-slim) build_python "$image" ;;
    postgres:15) build_postgres "$image" ;;
    *)
      echo "no stand-in for $image" >&2
      exit 2
      ;;
  esac
done
