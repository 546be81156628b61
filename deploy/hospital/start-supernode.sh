#!/usr/bin/env bash
# Hospital: start this site's Flower SuperNode next to its data.
#
#   deploy/hospital/start-supernode.sh --superlink HOST:PORT --keys DIR --site-config FILE
#                                      [--state DIR] [--runtime-port N] [--min-patients N] [--insecure]
#
# --superlink HOST:PORT  the coordinator's SuperLink; HOST must be a name in its certificate
# --keys DIR             this node's folder from `clin-jepa certs` (nodes/<name>/: node.key, ca.crt,
#                        coordinator_signing.pub)
# --site-config FILE     site_configs/<site>.yaml: where the data is, code map, privacy budget
# --state DIR            this node's Flower home (app cache, logs); default ./supernode-state
# --runtime-port N       local port between the SuperNode and its ClientApp process (default 9094);
#                        bound to 127.0.0.1 only
# --min-patients N       metrics aggregating fewer patients are not sent (only num-examples); default 10
# --insecure             no TLS, no node authentication: local testing only (prints a warning)
# The SuperNode only connects out to the SuperLink; it opens no port to the network. Runtime
# dependency installation stays disabled: the ClientApp runs with the packages installed here.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

superlink="" keys="" site="" state="./supernode-state" runtime_port="9094" min_patients="" insecure=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --superlink) superlink="$2"; shift 2 ;;
        --keys) keys="$2"; shift 2 ;;
        --site-config) site="$2"; shift 2 ;;
        --state) state="$2"; shift 2 ;;
        --runtime-port) runtime_port="$2"; shift 2 ;;
        --min-patients) min_patients="$2"; shift 2 ;;
        --insecure) insecure=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
require_command flower-supernode
[[ -n "$superlink" ]] || die "--superlink HOST:PORT is required."
[[ -n "$site" ]] || die "--site-config FILE is required."
require_file "$site" "site config"
site="$(abs_path "$site")"
mkdir -p "$state"
export FLWR_HOME="$(cd "$state" && pwd)/flwr-home"  # one Flower home per node, never shared
node_config="site-config=\"$site\""
if [[ -n "$min_patients" ]]; then
    [[ "$min_patients" =~ ^[1-9][0-9]*$ ]] || die "--min-patients must be a whole number >= 1."
    node_config+=" min-patients=$min_patients"
fi
common=(--superlink "$superlink" --host 127.0.0.1 --port "$runtime_port" --isolation subprocess)

if [[ $insecure -eq 1 ]]; then
    insecure_banner "SuperNode"
    exec flower-supernode --insecure "${common[@]}" --node-config "$node_config"
fi
[[ -n "$keys" ]] || die "--keys DIR is required (or --insecure for a local test)."
require_file "$keys/node.key" "node private key"
require_file "$keys/ca.crt" "CA certificate"
require_file "$keys/coordinator_signing.pub" "coordinator public signing key"
node_config+=" coordinator-pubkey=\"$(abs_path "$keys/coordinator_signing.pub")\""
exec flower-supernode "${common[@]}" \
    --root-certificates "$keys/ca.crt" \
    --auth-supernode-private-key "$keys/node.key" \
    --node-config "$node_config"
