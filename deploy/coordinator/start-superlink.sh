#!/usr/bin/env bash
# Coordinator: start the Flower SuperLink with TLS and SuperNode authentication.
#
#   deploy/coordinator/start-superlink.sh --certs DIR [--bind ADDR] [--port N] [--state DIR] [--insecure]
#
# --certs DIR   the folder written by `clin-jepa certs` (uses ca.crt, superlink/server.{crt,key})
# --bind ADDR   address to listen on (default 0.0.0.0); --port N (default 9093)
# --state DIR   where the SuperLink keeps its database (registered nodes, runs); default ./superlink-state
# --insecure    no TLS, no node authentication: local testing only (prints a warning)
# One HTTPS port serves the Fleet API (hospitals), the Control API (`flwr run`, `flwr supernode
# register`) and the Runtime API (the ServerApp). The process replaces this shell (exec), so its PID
# is this script's PID.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

certs="" bind="0.0.0.0" port="9093" state="./superlink-state" insecure=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --certs) certs="$2"; shift 2 ;;
        --bind) bind="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --state) state="$2"; shift 2 ;;
        --insecure) insecure=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
require_command flower-superlink
mkdir -p "$state"
state="$(cd "$state" && pwd)"
# The SuperLink's own ServerApp processes read this FLWR_HOME; keep it with the rest of the state.
export FLWR_HOME="${FLWR_HOME:-$state/flwr-home}"
common=(--host "$bind" --port "$port" --database "$state/superlink.db"
        --disable-runtime-dependency-installation)

if [[ $insecure -eq 1 ]]; then
    insecure_banner "SuperLink"
    exec flower-superlink --insecure "${common[@]}"
fi
[[ -n "$certs" ]] || die "--certs DIR is required (or --insecure for a local test)."
require_file "$certs/ca.crt" "CA certificate"
require_file "$certs/superlink/server.crt" "SuperLink certificate"
require_file "$certs/superlink/server.key" "SuperLink private key"
exec flower-superlink "${common[@]}" \
    --ssl-ca-certfile "$certs/ca.crt" \
    --ssl-certfile "$certs/superlink/server.crt" \
    --ssl-keyfile "$certs/superlink/server.key" \
    --enable-supernode-auth
