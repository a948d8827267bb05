# Sourced by scripts/test and scripts/dev: makes sure a Redis and a PostgreSQL answer on their
# standard local ports, installing them from Debian packages and starting them when needed.
# Leaves running servers alone. PgBouncer is only installed: the tests start their own.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "cannot install $*: this script knows Debian/Ubuntu (apt-get) only; install it by hand" >&2
    return 1
  fi
  [ -n "${APT_UPDATED:-}" ] || { as_root apt-get update -qq; APT_UPDATED=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

ensure_redis() {
  # redis-server and redis-cli also start the tests' private servers and Redis Cluster.
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  command -v redis-cli >/dev/null || apt_install redis-tools
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile /tmp/step-worker-redis.log >/dev/null
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis-server did not start (see /tmp/step-worker-redis.log)" >&2
  return 1
}

ensure_postgres() {
  [ -n "$(pg_bin_dir)" ] || apt_install postgresql
  command -v pg_isready >/dev/null || apt_install postgresql-client
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL on 127.0.0.1:5432"
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      version=$(ls /etc/postgresql | sort -V | tail -n 1)
      as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main start
    else
      echo "no PostgreSQL cluster to start; create one (pg_createcluster) or set TEST_DATABASE_URL" >&2
      return 1
    fi
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
  fi
  # The tests connect over TCP as postgres/postgres. A fresh Debian cluster asks for a password
  # on TCP that the postgres role does not have yet: give it one (trust-auth clusters ignore it).
  if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  fi
}

# The tests run their own PgBouncer (transaction mode, in front of the local PostgreSQL) to stand
# in for Supabase's pooler; they need only the binary.
ensure_pgbouncer() {
  command -v pgbouncer >/dev/null || apt_install pgbouncer
}

# The console's browser test: Debian's Chromium, and playwright-core (which drives it and
# downloads no browser of its own) from tests/console/package-lock.json. Where Chromium cannot be
# installed, STEP_WORKER_BROWSER_SKIP says why, and the browser test is skipped saying so loudly;
# anywhere else a missing browser fails that test.
ensure_console_browser() {
  local why=""
  if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
    apt_install chromium || why="apt-get install chromium failed"
  fi
  if [ -z "$why" ]; then
    if ! command -v npm >/dev/null; then
      apt_install nodejs npm || why="Node.js and npm could not be installed"
    fi
  fi
  if [ -z "$why" ]; then
    (cd tests/console && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || why="npm ci in tests/console failed"
  fi
  if [ -n "$why" ]; then
    printf '\n%s\nWARNING: the console browser test will be SKIPPED: %s\n%s\n\n' \
      "########################################################################" "$why" \
      "########################################################################" >&2
    export STEP_WORKER_BROWSER_SKIP="$why"
  fi
}
