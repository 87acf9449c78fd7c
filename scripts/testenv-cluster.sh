# testenv-cluster.sh — the replicated ClickHouse of scripts/testenv.sh, sourced by it.
#
# A standalone ZooKeeper (Debian's `zookeeper` package) and S x R
# clickhouse-server processes: S shards of R replicas each, the cluster
# `cdc_cluster` (default: 1 shard of 2 replicas). Server I (1..S*R) is replica
# rI of shard (I-1)/R+1, so servers 1..R are shard 01, R+1..2R shard 02, and so
# on. Each has its own directory, ports, <macros> (shard 0S, replica rI),
# <remote_servers> (every shard), <interserver_http_host> and <distributed_ddl>.
# Everything lives in its own state dir, so it never touches the single test
# server.
#
#   cluster-up               install zookeeper if missing, start ZooKeeper and every replica
#   cluster-down             stop every replica and ZooKeeper, keep their data
#   cluster-kill-replica N   SIGKILL server N (a crash: no flush, no goodbye to ZooKeeper)
#   cluster-stop-replica N   stop server N (SIGTERM, wait for exit)
#   cluster-start-replica N  start server N, wait until it answers and sees ZooKeeper
#   cluster-zk-restart       SIGKILL ZooKeeper and start it again
#   cluster-zk-kill          SIGKILL ZooKeeper (replicated tables turn read-only until it is back)
#   cluster-zk-start         start ZooKeeper (again), wait until it answers
#   cluster-status           show whether ZooKeeper and each replica answer
#
# Set CDC_TESTENV_CLUSTER=1 to make `up`, `down`, `env` and `status` include the cluster.
# Overrides: CDC_TESTENV_CLUSTER_DIR (default $STATE_DIR/cluster), CDC_TESTENV_ZKPORT
# (27190), CDC_TESTENV_CLUSTER_SHARDS (1), CDC_TESTENV_CLUSTER_REPLICAS (2, per shard),
# CDC_TESTENV_CLUSTER_BASEPORT (27100: server I listens on BASE+10*(I-1) for TCP, +1 HTTP,
# +2 interserver HTTP; below Linux's ephemeral ports, which a client connection can hold
# when a server starts; ZooKeeper's default sits at BASE+90, so at most 9 servers).
#
# It reuses testenv.sh's ch_* functions by pointing their CH_* variables at one replica
# (cl_select) before each call.

CL_DIR="${CDC_TESTENV_CLUSTER_DIR:-$STATE_DIR/cluster}"
ZK_PORT="${CDC_TESTENV_ZKPORT:-27190}"
CL_SHARDS="${CDC_TESTENV_CLUSTER_SHARDS:-1}"
CL_REPLICAS="${CDC_TESTENV_CLUSTER_REPLICAS:-2}"
CL_SERVERS=$((CL_SHARDS * CL_REPLICAS))
CL_BASEPORT="${CDC_TESTENV_CLUSTER_BASEPORT:-27100}"
CL_NAME="cdc_cluster"
ZK_DIR="$CL_DIR/zk"
ZK_PIDFILE="$ZK_DIR/zookeeper.pid"
ZK_LOG="$ZK_DIR/zookeeper.log"
ZK_SERVER="/usr/share/zookeeper/bin/zkServer.sh"

cl_tcp_port() { echo $((CL_BASEPORT + 10 * ($1 - 1))); }

# cl_shard I prints the shard macro of server I: 01 for servers 1..R, 02 for
# R+1..2R, ...
cl_shard() { printf '%02d' $((($1 - 1) / CL_REPLICAS + 1)); }

# cl_select I points the ch_* functions of testenv.sh at server I.
cl_select() {
	local i="$1"
	[[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$CL_SERVERS" ] ||
		die "server must be 1..$CL_SERVERS ($CL_SHARDS shards x $CL_REPLICAS replicas), got '$i'"
	CH_DIR="$CL_DIR/r$i"
	CH_CONFIG="$CH_DIR/config.xml"
	CH_USERS="$CH_DIR/users.xml"
	CH_PIDFILE="$CH_DIR/clickhouse-server.pid"
	CH_LOG="$CH_DIR/log/clickhouse-server.log"
	CH_ERRLOG="$CH_DIR/log/clickhouse-server.err.log"
	CH_STDOUT="$CH_DIR/log/stdout.log"
	CH_PORT="$(cl_tcp_port "$i")"
	CH_HTTP_PORT=$((CH_PORT + 1))
	CH_INTER_PORT=$((CH_PORT + 2))
}

# cl_addrs prints the servers' native addresses (shard by shard), comma-separated.
cl_addrs() {
	local i out=""
	for ((i = 1; i <= CL_SERVERS; i++)); do
		out="${out:+$out,}127.0.0.1:$(cl_tcp_port "$i")"
	done
	echo "$out"
}

# ---------------------------------------------------------------- ZooKeeper

zk_install() {
	[ -x "$ZK_SERVER" ] && return
	is_root || die "ZooKeeper missing; run as root or: apt-get install -y zookeeper"
	log "installing zookeeper (apt; it brings OpenJDK)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq zookeeper >/dev/null 2>&1 || {
		apt-get update -qq
		apt-get install -y -qq zookeeper >/dev/null
	}
	[ -x "$ZK_SERVER" ] || die "$ZK_SERVER still missing after apt-get install zookeeper"
}

# zk_ready: ZooKeeper answers the `srvr` four-letter word (whitelisted by default).
zk_ready() {
	timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && echo srvr >&3 && grep -q '^Mode:' <&3" 2>/dev/null
}

zk_pid() {
	[ -s "$ZK_PIDFILE" ] || return 1
	local pid
	pid="$(cat "$ZK_PIDFILE")"
	proc_alive "$pid" || return 1
	echo "$pid"
}

zk_start() {
	local pid
	if pid="$(zk_pid)"; then
		zk_wait "$pid"
		return
	fi
	zk_ready && die "something not started from $ZK_DIR already answers on 127.0.0.1:$ZK_PORT"
	mkdir -p "$ZK_DIR/data"
	cat >"$ZK_DIR/zoo.cfg" <<EOF
tickTime=500
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
admin.enableServer=false
EOF
	log "starting ZooKeeper on 127.0.0.1:$ZK_PORT"
	(cd "$ZK_DIR" && ZOO_LOG_DIR="$ZK_DIR" exec nohup setsid "$ZK_SERVER" start-foreground "$ZK_DIR/zoo.cfg" \
		</dev/null >>"$ZK_LOG" 2>&1) &
	pid=$!
	echo "$pid" >"$ZK_PIDFILE"
	zk_wait "$pid"
}

zk_wait() {
	local pid="$1" deadline=$((SECONDS + 60))
	until zk_ready; do
		proc_alive "$pid" || {
			tail -n 30 "$ZK_LOG" >&2
			die "ZooKeeper (pid $pid) exited during startup"
		}
		[ $SECONDS -lt $deadline ] || die "ZooKeeper on 127.0.0.1:$ZK_PORT not ready after 60s"
		sleep 0.2
	done
}

# zk_stop SIGNAL: stops ZooKeeper (its java process is the session leader
# setsid made: signal the whole group).
zk_stop() {
	local sig="${1:-TERM}" pid
	pid="$(zk_pid)" || {
		rm -f "$ZK_PIDFILE"
		return 0
	}
	log "stopping ZooKeeper (pid $pid, SIG$sig)"
	kill -"$sig" -- -"$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + 30))
	while proc_alive "$pid"; do
		if [ $SECONDS -ge $deadline ]; then
			kill -KILL -- -"$pid" 2>/dev/null || true
		fi
		sleep 0.1
	done
	rm -f "$ZK_PIDFILE"
}

# ---------------------------------------------------------------- replicas

# cl_write_config I: testenv.sh's single-server config for server I plus
# config.d/cluster.xml, which ClickHouse merges from beside config.xml.
cl_write_config() {
	local i="$1"
	cl_select "$i"
	ch_write_config
	mkdir -p "$CH_DIR/config.d"
	{
		cat <<EOF
<?xml version="1.0"?>
<!-- Managed by scripts/testenv-cluster.sh: rewritten by every 'cluster-up'. -->
<yandex>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <macros>
        <cluster>$CL_NAME</cluster>
        <shard>$(cl_shard "$i")</shard>
        <replica>r$i</replica>
    </macros>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    <remote_servers>
        <$CL_NAME>
EOF
		cl_remote_shards
		cat <<EOF
        </$CL_NAME>
    </remote_servers>
</yandex>
EOF
	} >"$CH_DIR/config.d/cluster.xml"
	if [ -n "$CH_OS_USER" ]; then
		chown -R "$CH_OS_USER:" "$CH_DIR/config.d"
	fi
}

# cl_remote_shards prints the <shard> elements of remote_servers: every
# shard with its replicas (internal_replication: a ReplicatedMergeTree copies
# a part to the other replicas itself).
cl_remote_shards() {
	local s j
	for ((s = 0; s < CL_SHARDS; s++)); do
		echo "            <shard>"
		echo "                <internal_replication>true</internal_replication>"
		for ((j = s * CL_REPLICAS + 1; j <= (s + 1) * CL_REPLICAS; j++)); do
			echo "                <replica><host>127.0.0.1</host><port>$(cl_tcp_port "$j")</port></replica>"
		done
		echo "            </shard>"
	done
}

# cl_wait_zk I: server I answers and reaches ZooKeeper.
cl_wait_zk() {
	cl_select "$1"
	local deadline=$((SECONDS + 60))
	until ch_client -q "SELECT count() FROM system.zookeeper WHERE path = '/'" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || ch_fail "replica $1 (127.0.0.1:$CH_PORT) does not reach ZooKeeper after 60s"
		sleep 0.2
	done
}

cl_start_replica() {
	cl_select "$1"
	[ -f "$CH_CONFIG" ] || cl_write_config "$1"
	ch_start
	cl_wait_zk "$1"
}

cl_kill_replica() {
	cl_select "$1"
	local pid
	pid="$(ch_pid)" || {
		log "replica $1 is not running"
		return 0
	}
	log "killing replica $1 (pid $pid, SIGKILL)"
	kill -KILL "$pid" 2>/dev/null || true
	while proc_alive "$pid"; do sleep 0.05; done
	rm -f "$CH_PIDFILE"
}

cl_up() {
	local t0=$SECONDS i
	mkdir -p "$CL_DIR"
	chmod 0755 "$CL_DIR"
	zk_install
	zk_start
	for ((i = 1; i <= CL_SERVERS; i++)); do
		cl_select "$i"
		if ! ch_pid >/dev/null; then
			cl_write_config "$i"
		fi
		ch_start
	done
	for ((i = 1; i <= CL_SERVERS; i++)); do
		cl_wait_zk "$i"
	done
	log "cluster up in $((SECONDS - t0))s ($CL_NAME, $CL_SHARDS shards x $CL_REPLICAS replicas: $(cl_addrs), zookeeper 127.0.0.1:$ZK_PORT, state $CL_DIR)"
}

cl_down() {
	local i
	for ((i = 1; i <= CL_SERVERS; i++)); do
		cl_select "$i"
		ch_stop
	done
	zk_stop TERM
}

cl_status() {
	local i
	if zk_ready; then echo "zookeeper:  up   127.0.0.1:$ZK_PORT"; else echo "zookeeper:  down"; fi
	for ((i = 1; i <= CL_SERVERS; i++)); do
		cl_select "$i"
		if ch_ready; then echo "replica $i (shard $(cl_shard "$i")):  up   127.0.0.1:$CH_PORT"; else echo "replica $i (shard $(cl_shard "$i")):  down"; fi
	done
}

cl_print_env() {
	local kv
	for kv in \
		"CDC_TEST_CLUSTER_ADDRS=$(cl_addrs)" \
		"CDC_TEST_CLUSTER_NAME=$CL_NAME" \
		"CDC_TEST_ZK_ADDR=127.0.0.1:$ZK_PORT" \
		"CDC_TESTENV_CLUSTER_DIR=$CL_DIR" \
		"CDC_TESTENV_ZKPORT=$ZK_PORT" \
		"CDC_TESTENV_CLUSTER_SHARDS=$CL_SHARDS" \
		"CDC_TESTENV_CLUSTER_REPLICAS=$CL_REPLICAS" \
		"CDC_TESTENV_CLUSTER_BASEPORT=$CL_BASEPORT"; do
		printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
	done
}

# cluster_requested: CDC_TESTENV_CLUSTER=1 adds the cluster to up/down/env/status.
cluster_requested() { [ "${CDC_TESTENV_CLUSTER:-0}" = 1 ]; }

# cluster_main CMD [ARG]: the cluster-* commands.
cluster_main() {
	case "$1" in
	cluster-up) cl_up ;;
	cluster-down) cl_down ;;
	cluster-kill-replica) cl_kill_replica "${2:?replica number}" ;;
	cluster-stop-replica)
		cl_select "${2:?replica number}"
		ch_stop
		;;
	cluster-start-replica) cl_start_replica "${2:?replica number}" ;;
	cluster-zk-restart)
		zk_stop KILL
		zk_start
		;;
	cluster-zk-kill) zk_stop KILL ;;
	cluster-zk-start) zk_start ;;
	cluster-status) cl_status ;;
	cluster-env) cl_print_env ;;
	*) usage ;;
	esac
}
