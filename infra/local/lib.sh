# Shared by infra/local/*.sh: launch a service in its own session and process group, find it again by PID,
# and stop exactly that process tree. Sourced, not run.
#
# A service is identified by NAME and STATE_DIR: its PID file is $STATE_DIR/NAME.pid, and the process carries
# VLV_SERVICE_ID=NAME@STATE_DIR in its environment, so a PID recycled by an unrelated process is never taken
# for ours (and never signalled).

svc_die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

svc_alive() {
    # kill -0 also succeeds on a zombie; a zombie has finished, so it does not count.
    [[ -r "/proc/$1/stat" ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

svc_id() { echo "$1@$STATE_DIR"; }

svc_running_pid() {
    # The recorded PID of service NAME if that process is alive and carries our service id.
    local name="$1" pid_file="$STATE_DIR/$1.pid" pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(head -n 1 "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    svc_alive "$pid" || return 1
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "VLV_SERVICE_ID=$(svc_id "$name")" || return 1
    echo "$pid"
}

svc_launch() {
    # svc_launch NAME LOG_FILE COMMAND...: start COMMAND with setsid as the leader of a new session and process
    # group (the shell records its own PID and then execs COMMAND, so the recorded PID is the group id).
    local name="$1" log_file="$2" pid_file="$STATE_DIR/$1.pid"
    shift 2
    rm -f "$pid_file"
    VLV_SERVICE_ID="$(svc_id "$name")" setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" "$@" \
        >"$log_file" 2>&1 </dev/null &
    local waited=0
    while [[ ! -s "$pid_file" ]] && (( waited < 100 )); do sleep 0.1; waited=$((waited + 1)); done
    [[ -s "$pid_file" ]] || svc_die "$name did not launch; see $log_file"
    head -n 1 "$pid_file"
}

svc_descendants() {
    # Every process under PID, including children that made their own process group or session.
    local parent="$1" child
    for child in $(ps -e -o pid=,ppid= | awk -v p="$parent" '$2 == p {print $1}'); do
        echo "$child"
        svc_descendants "$child"
    done
}

svc_stop() {
    # svc_stop NAME GRACE_S: SIGTERM the leader, wait up to GRACE_S for the whole tree, then SIGKILL what is
    # left of its process group and descendants. Nothing outside that tree is signalled.
    local name="$1" grace_s="$2" pid_file="$STATE_DIR/$1.pid" pid
    if ! pid="$(svc_running_pid "$name")"; then
        echo "$name: not running (no live process recorded in $pid_file)"
        rm -f "$pid_file"
        return 0
    fi
    local tree i p remaining leftover=""
    tree="$(svc_descendants "$pid" | tr '\n' ' ')"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace_s; i++)); do
        remaining=""
        for p in $pid $tree; do svc_alive "$p" && remaining+="$p "; done
        [[ -z "$remaining" ]] && break
        sleep 1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    for p in $tree; do svc_alive "$p" && leftover+="$p "; done
    # shellcheck disable=SC2086
    [[ -n "$leftover" ]] && kill -KILL $leftover 2>/dev/null
    rm -f "$pid_file"
    echo "$name: stopped (pid $pid${leftover:+; SIGKILLed leftover processes $leftover})"
}

svc_wait_ready() {
    # svc_wait_ready NAME PID TIMEOUT_S LOG_FILE CHECK_FUNCTION: poll CHECK_FUNCTION until it succeeds; fail
    # with the log's tail if the process exits first or the timeout passes.
    local name="$1" pid="$2" timeout_s="$3" log_file="$4" check="$5" started=$SECONDS
    until "$check"; do
        if ! svc_alive "$pid"; then
            tail -n 30 "$log_file" >&2
            rm -f "$STATE_DIR/$name.pid"
            local reason
            reason="$(svc_log_reason "$log_file")"
            svc_die "$name exited before it came up: ${reason:-no error line in its log (its last lines are above)}; \
log: $log_file"
        fi
        if (( SECONDS - started > timeout_s )); then
            tail -n 30 "$log_file" >&2
            svc_die "$name did not answer within ${timeout_s}s; it is still running (pid $pid): inspect \
$log_file, then '$0 stop'"
        fi
        sleep 1
    done
}

svc_status() {
    # svc_status NAME CHECK_FUNCTION LABEL: whether NAME runs, whether CHECK_FUNCTION answers, then the
    # caller's print_client_help PID (how to connect). Exit status 3 when not running, as LSB scripts do.
    local name="$1" check="$2" label="$3" pid
    if pid="$(svc_running_pid "$name")"; then
        if "$check"; then echo "$label: answering"; else echo "$label: NOT answering (yet?)"; fi
        print_client_help "$pid"
    else
        echo "not running (state dir $STATE_DIR)"
        return 3
    fi
}

svc_port_in_use() {
    # True if something on this machine listens on TCP port $1 (any address).
    if command -v ss >/dev/null; then
        [[ -n "$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

svc_log_reason() {
    # The last error line of a service's log (a Python exception or an error message), trimmed; empty if none.
    { grep -E '^[A-Za-z_.]*(Error|Exception)(: |$)|[Ee]rror: ' "$1" 2>/dev/null || true; } | tail -n 1 | cut -c1-400
}

# Ray's default worker port range (`ray start --min-worker-port/--max-worker-port`): vlv/ports.py says why no
# port of ours may lie in it.
RAY_MIN_WORKER_PORT=10002
RAY_MAX_WORKER_PORT=19999

svc_require_ports_outside_ray_workers() {
    # svc_require_ports_outside_ray_workers VAR=PORT...: fail naming the variable if a port is not a number or
    # lies in Ray's worker port range, with the reason (Ray's own error for it only says "trying to use a port
    # number ... that is used by other components").
    local pair port
    for pair in "$@"; do
        port="${pair#*=}"
        [[ "$port" =~ ^[0-9]+$ ]] && (( port >= 1 && port <= 65535 )) || \
            svc_die "${pair%%=*}=$port is not a port number (1-65535)"
        if (( port >= RAY_MIN_WORKER_PORT && port <= RAY_MAX_WORKER_PORT )); then
            svc_die "${pair%%=*}=$port lies in Ray's worker port range $RAY_MIN_WORKER_PORT-$RAY_MAX_WORKER_PORT: Ray \
hands those ports to its worker processes (ray start refuses it for its own services, and a worker handed a \
port another server holds cannot listen on it); choose a port outside it, e.g. $((port + 20000))"
        fi
    done
}

svc_require_free_ports() {
    # svc_require_free_ports VAR=PORT...: fail naming the variable to change if a port is taken. Another
    # program's server on our port would otherwise answer our readiness checks in our place.
    local pair
    for pair in "$@"; do
        if svc_port_in_use "${pair#*=}"; then
            svc_die "port ${pair#*=} is already in use by another program; choose a free one with ${pair%%=*}=<port>"
        fi
    done
}
