#!/usr/bin/env bash
# A light local MLflow tracking server for pipeline runs submitted as Ray jobs (or from other machines'
# clients through an SSH tunnel): SQLite backend and artifacts inside the run store, bound to 127.0.0.1.
#
#   infra/local/mlflow_server.sh start    # start (or report the running one), wait until /health answers
#   infra/local/mlflow_server.sh status   # running or not (exit 3 when not running)
#   infra/local/mlflow_server.sh stop     # stop THIS server (its process group and descendants), by PID
#
# Environment (all optional):
#   VLV_LOCAL_STATE_DIR         state folder (PID file, log)                    default ./.vlv_local
#   VLV_MLFLOW_STORE            folder holding mlflow.db and mlflow-artifacts/  default ./vlv_runs
#   VLV_MLFLOW_PORT             port (not in Ray's worker ports 10002-19999)    default 5000
#   VLV_MLFLOW_START_TIMEOUT_S  how long `start` waits for /health              default 120
#   VLV_MLFLOW_STOP_GRACE_S     how long `stop` waits before SIGKILL            default 15
#   VLV_VENV                    virtualenv holding `mlflow`                     default <repo>/.venv
#
# Artifacts are proxied (--serve-artifacts): clients upload through the server's HTTP API, so a pipeline
# needs only MLFLOW_TRACKING_URI=http://127.0.0.1:<port>, no access to the artifact folder.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=infra/local/lib.sh
source "$REPO_ROOT/infra/local/lib.sh"
VENV="${VLV_VENV:-$REPO_ROOT/.venv}"
if [[ -x "$VENV/bin/mlflow" ]]; then MLFLOW="$VENV/bin/mlflow"; else MLFLOW="$(command -v mlflow || true)"; fi

STATE_DIR="${VLV_LOCAL_STATE_DIR:-./.vlv_local}"
STORE="${VLV_MLFLOW_STORE:-./vlv_runs}"
PORT="${VLV_MLFLOW_PORT:-5000}"
START_TIMEOUT_S="${VLV_MLFLOW_START_TIMEOUT_S:-120}"
STOP_GRACE_S="${VLV_MLFLOW_STOP_GRACE_S:-15}"

# Absolute paths, without creating anything (`status` and `stop` must not leave folders behind).
STATE_DIR="$(realpath -m "$STATE_DIR")"
STORE="$(realpath -m "$STORE")"
NAME=mlflow_server
LOG_FILE="$STATE_DIR/mlflow_server.log"
BACKEND_URI="sqlite:///$STORE/mlflow.db"
ARTIFACTS="$STORE/mlflow-artifacts"

health_ok() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/health" || true)" == 200 ]]
}

print_client_help() {
    cat <<EOF
MLflow server running: pid $1 (process group $1)
  tracking URI:  http://127.0.0.1:$PORT   (UI: open it in a browser; remote: ssh -L $PORT:127.0.0.1:$PORT ...)
  backend:       $BACKEND_URI
  artifacts:     $ARTIFACTS (served by the server)
  log:           $LOG_FILE
Pipelines log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT
  (under ray job submit: --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:$PORT"}}')
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
    svc_require_ports_outside_ray_workers VLV_MLFLOW_PORT="$PORT"
    [[ -n "$MLFLOW" ]] || svc_die "no 'mlflow' in $VENV/bin or on PATH; run 'make install' first"
    command -v curl >/dev/null || svc_die "curl is needed to check that the server answers; install it"
    svc_require_free_ports VLV_MLFLOW_PORT="$PORT"
    mkdir -p "$STATE_DIR" "$ARTIFACTS"
    # Job execution off (it would start a Huey consumer per worker); telemetry off.
    pid="$(MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
        svc_launch "$NAME" "$LOG_FILE" "$MLFLOW" server \
        --backend-store-uri "$BACKEND_URI" \
        --serve-artifacts --artifacts-destination "$ARTIFACTS" \
        --host 127.0.0.1 --port "$PORT" --workers 1)"
    local started=$SECONDS
    svc_wait_ready "$NAME" "$pid" "$START_TIMEOUT_S" "$LOG_FILE" health_ok
    echo "started in $((SECONDS - started))s"
    print_client_help "$pid"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) svc_stop "$NAME" "$STOP_GRACE_S" ;;
    status) svc_status "$NAME" health_ok "health" ;;
    *) echo "usage: $0 start|stop|status  (environment variables: see the header of this file)" >&2
       exit 2 ;;
esac
