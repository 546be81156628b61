#!/usr/bin/env bash
# Coordinator: register hospital node public keys with the running SuperLink.
#
#   deploy/coordinator/register-nodes.sh FEDERATION NODE_DIR_OR_PUB [...]
#
# FEDERATION        the connection name added with add-federation.py
# NODE_DIR_OR_PUB   a nodes/<name>/ folder from `clin-jepa certs` (its node.pub is used, named <name>),
#                   or a node.pub file a hospital generated itself (`ssh-keygen -t ecdsa -b 384`)
# Only registered keys can connect when the SuperLink runs with --enable-supernode-auth. The
# SuperLink keeps registrations in its database (--state), so this is done once, not per restart.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
[[ $# -ge 2 ]] || { usage; exit 2; }
require_command flwr
federation="$1"; shift
for item in "$@"; do
    if [[ -d "$item" ]]; then
        pub="$item/node.pub"; name="$(basename "$item")"
    else
        pub="$item"; name="$(basename "$(dirname "$item")")"
    fi
    require_file "$pub" "node public key"
    echo "registering $name ($pub)"
    flwr supernode register "$pub" "$federation" --name "$name"
done
