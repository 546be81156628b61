# Shared helpers for the deploy scripts (sourced, not run).
# Every script runs Flower with runtime dependency installation disabled: a node only ever runs code
# from packages its operator installed beforehand.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# No traffic to anyone but the SuperLink: Flower otherwise sends usage telemetry to telemetry.flower.ai
# and checks for new releases on start.
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1

die() { echo "error: $*" >&2; exit 2; }

require_file() {  # require_file PATH WHAT
    [[ -f "$1" ]] || die "$2 not found at '$1' (made by \`clin-jepa certs\`; see deploy/README.md)."
    [[ "$1" != *'"'* ]] || die "path '$1' contains a double quote; move the file to a plain path."
}

require_command() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH; activate the environment where clin-jepa and flwr are installed (e.g. 'source .venv/bin/activate')."
}

abs_path() { (cd "$(dirname "$1")" && echo "$PWD/$(basename "$1")"); }

insecure_banner() {  # insecure_banner WHO
    cat >&2 <<BANNER
################################################################################
##  WARNING: INSECURE MODE ($1)
##  TLS is OFF and SuperNode authentication is OFF. Model updates travel in
##  clear text and ANY machine that reaches this port can join or impersonate
##  a hospital. Use only on a single machine for testing, never with patient
##  data and never across a network.
################################################################################
BANNER
}

usage() {  # print the comment block at the top of the calling script
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
