#!/usr/bin/env bash
# A local Ray head for `ray job submit`, bound to 127.0.0.1, with its own temp dir and PID file.
#
#   infra/local/ray_head.sh start    # start (or report the running one), wait until the job API answers
#   infra/local/ray_head.sh status   # running or not, and the addresses (exit 3 when not running)
#   infra/local/ray_head.sh stop     # stop THIS head (its process group and descendants), by PID
#
# Never `ray stop`: it kills every Ray process on the machine, including other users' and other checkouts'.
#
# Environment (all optional):
#   VLV_LOCAL_STATE_DIR      state folder (PID file, log, Ray temp dir)      default ./.vlv_local
#   VLV_RAY_DASHBOARD_PORT   dashboard and job API port                      default 8265
#   VLV_RAY_GCS_PORT         GCS port (the `ray.init(address=...)` address)  default 6380
#   VLV_RAY_CLIENT_PORT      Ray client server port                          default 10001
#   VLV_RAY_AGENT_PORT       dashboard agent HTTP port                       default 52385
#                            (not Ray's 52365, which every embedded `ray.init()` on the machine takes)
# No port may lie in 10002-19999, the ports Ray hands to its worker processes: `start` refuses one there.
#   VLV_RAY_NUM_CPUS         CPUs the head offers to tasks                   default: all
#   VLV_RAY_START_TIMEOUT_S  how long `start` waits for the job API          default 180
#   VLV_RAY_STOP_GRACE_S     how long `stop` waits before SIGKILL            default 20
#   VLV_VENV                 virtualenv holding `ray`                        default <repo>/.venv
#
# Ray 2.60 turns token authentication on: the head reads ~/.ray/auth_token (created here if missing) and every
# client (`ray job submit`, `ray.init(address=...)`, the Python JobSubmissionClient) needs RAY_AUTH_MODE=token
# in its environment to send it. `start` writes <state>/ray_head.env with what a client needs (for a Python
# driver joining with `ray.init(address="127.0.0.1:<GCS port>")` that includes
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the head listens on 127.0.0.1 only, see below).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=infra/local/lib.sh
source "$REPO_ROOT/infra/local/lib.sh"
VENV="${VLV_VENV:-$REPO_ROOT/.venv}"
if [[ -x "$VENV/bin/ray" ]]; then RAY="$VENV/bin/ray"; else RAY="$(command -v ray || true)"; fi

STATE_DIR="${VLV_LOCAL_STATE_DIR:-./.vlv_local}"
DASHBOARD_PORT="${VLV_RAY_DASHBOARD_PORT:-8265}"
GCS_PORT="${VLV_RAY_GCS_PORT:-6380}"
CLIENT_PORT="${VLV_RAY_CLIENT_PORT:-10001}"
AGENT_PORT="${VLV_RAY_AGENT_PORT:-52385}"
START_TIMEOUT_S="${VLV_RAY_START_TIMEOUT_S:-180}"
STOP_GRACE_S="${VLV_RAY_STOP_GRACE_S:-20}"
TOKEN_FILE="$HOME/.ray/auth_token"

# Absolute, without creating anything (`status` and `stop` must not leave folders behind).
STATE_DIR="$(realpath -m "$STATE_DIR")"
NAME=ray_head
LOG_FILE="$STATE_DIR/ray_head.log"
ENV_FILE="$STATE_DIR/ray_head.env"
TEMP_DIR="$STATE_DIR/ray"

job_api_ready() {
    # Submissions work once (1) the dashboard's job API answers our token and (2) the head's dashboard agent,
    # which runs the job supervisors, is up: before that the API answers "No available agent to submit job".
    # The header comes on stdin so the token never shows in `ps`.
    local code agent
    code="$( (printf 'Authorization: Bearer %s\n' "$(cat "$TOKEN_FILE" 2>/dev/null)") | curl -s -o /dev/null \
        -w '%{http_code}' --max-time 5 -H @- "http://127.0.0.1:$DASHBOARD_PORT/api/jobs/" || true)"
    agent="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
        "http://127.0.0.1:$AGENT_PORT/api/local_raylet_healthz" || true)"
    # (3) The Ray client server listens only after it found the raylet; if it gives up first (30 s, on a
    # loaded machine), `ray start --block` tears the whole head down, so `start` must not report success before.
    [[ "$code" == "200" && "$agent" == "200" ]] && svc_port_in_use "$CLIENT_PORT"
}

print_client_help() {
    cat <<EOF
Ray head running: pid $1 (process group $1)
  job API / dashboard:   http://127.0.0.1:$DASHBOARD_PORT
  GCS (ray.init):        127.0.0.1:$GCS_PORT
  temp dir:              $TEMP_DIR
  log:                   $LOG_FILE
Clients need token auth (Ray 2.60; the token is read from ~/.ray/auth_token):
  source $ENV_FILE    # RAY_AUTH_MODE=token, RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
  (a Python driver joining with ray.init(address="127.0.0.1:$GCS_PORT") also needs the file's
   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, or Ray swaps 127.0.0.1 for this machine's network address)
  ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --working-dir . \\
      --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}}' \\
      -- python pipelines/full_run.py --preset tiny --store "\$PWD/vlv_runs"
Stop it with: $0 stop
EOF
}

cmd_start() {
    local pid
    if pid="$(svc_running_pid "$NAME")"; then
        echo "already running"
        print_client_help "$pid"
        return 0
    fi
    local ports=(VLV_RAY_GCS_PORT="$GCS_PORT" VLV_RAY_DASHBOARD_PORT="$DASHBOARD_PORT"
        VLV_RAY_CLIENT_PORT="$CLIENT_PORT" VLV_RAY_AGENT_PORT="$AGENT_PORT")
    svc_require_ports_outside_ray_workers "${ports[@]}"
    [[ -n "$RAY" ]] || svc_die "no 'ray' in $VENV/bin or on PATH; run 'make install' first"
    command -v curl >/dev/null || svc_die "curl is needed to check that the head answers; install it"
    # Ray puts unix sockets under <temp>/session_<date>_<pid>/sockets/; the kernel limit is 107 bytes.
    (( ${#TEMP_DIR} <= 50 )) || svc_die "temp dir $TEMP_DIR is too long for Ray's unix sockets \
(${#TEMP_DIR} > 50 characters); set VLV_LOCAL_STATE_DIR to a shorter folder, e.g. /tmp/vlv_local"
    if [[ "${RAY_AUTH_MODE:-token}" == "token" && ! -s "$TOKEN_FILE" ]]; then
        "$RAY" get-auth-token --generate >/dev/null 2>&1 || svc_die "could not create $TOKEN_FILE"
        chmod 600 "$TOKEN_FILE"
        echo "created a Ray auth token in $TOKEN_FILE"
    fi
    if [[ -f "$TOKEN_FILE" && "$(stat -c %a "$TOKEN_FILE")" != 600 ]]; then
        echo "warning: $TOKEN_FILE is readable by other users (mode $(stat -c %a "$TOKEN_FILE")); chmod 600 it" >&2
    fi
    svc_require_free_ports "${ports[@]}"
    mkdir -p "$STATE_DIR" "$TEMP_DIR"
    local args=(start --head --block --disable-usage-stats
        --node-ip-address=127.0.0.1 --port="$GCS_PORT"
        --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT"
        --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="$AGENT_PORT"
        --temp-dir="$TEMP_DIR")
    if [[ -n "${VLV_RAY_NUM_CPUS:-}" ]]; then args+=(--num-cpus="$VLV_RAY_NUM_CPUS"); fi
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use 127.0.0.1 as the node IP: without it Ray replaces
    # --node-ip-address=127.0.0.1 by the machine's routable address (services.resolve_ip_for_localhost), and
    # the GCS, raylet, client server and agents then listen on the network. This script makes a single-node
    # head, which is what that setting allows. No drain on SIGTERM: the 30 s drain exists to move Serve
    # replicas to other nodes, and this head has no other nodes.
    # The venv first on PATH: job entrypoints say `python ...`, which must be the interpreter that has vlv.
    pid="$(PATH="$(dirname "$RAY"):$PATH" RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" RAY_USAGE_STATS_ENABLED=0 \
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
        svc_launch "$NAME" "$LOG_FILE" "$RAY" "${args[@]}")"
    local started=$SECONDS
    svc_wait_ready "$NAME" "$pid" "$START_TIMEOUT_S" "$LOG_FILE" job_api_ready
    printf 'export RAY_AUTH_MODE=token\nexport RAY_ADDRESS=http://127.0.0.1:%s\nexport RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0\n' \
        "$DASHBOARD_PORT" >"$ENV_FILE"
    echo "started in $((SECONDS - started))s"
    print_client_help "$pid"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) svc_stop "$NAME" "$STOP_GRACE_S"; rm -f "$ENV_FILE" ;;
    status) svc_status "$NAME" job_api_ready "job API" ;;
    *) echo "usage: $0 start|stop|status  (environment variables: see the header of this file)" >&2
       exit 2 ;;
esac
