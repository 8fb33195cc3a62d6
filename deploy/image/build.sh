#!/usr/bin/env bash
# Builds the canaryd image with podman on a machine that reaches the package index but no container
# registry: the base comes from make-base.sh (beside this file), and the host's CA bundle and package-index
# settings are lent to the build steps as build secrets (mounted for those steps only, never in a layer).
#
#   deploy/image/build.sh [TAG]     default TAG: localhost/canaryd:local; prints the tag on its last line
#
# What is lent: the first CA bundle found in SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE, pip's `cert`
# setting, /etc/ssl/certs/ca-certificates.crt; and, when set in the environment or in pip's configuration,
# the http(s) index URLs, trusted hosts and proxies (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST,
# UV_DEFAULT_INDEX, UV_INDEX, UV_INDEX_URL, UV_EXTRA_INDEX_URL, HTTP(S)_PROXY, NO_PROXY). Local (file://)
# indexes and pip constraint files are not lent: they do not exist inside the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

TAG=${1:-localhost/canaryd:local}
PODMAN=(podman --cgroup-manager=cgroupfs --events-backend=file --runtime=runc)
BASE=$(bash deploy/image/make-base.sh | tail -n 1)

secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT

pip_config() {  # pip_config KEY: the value of global.KEY in the host's pip configuration, if any
  python3 -m pip config get "global.$1" 2>/dev/null || true
}

ca=""
for candidate in "${SSL_CERT_FILE:-}" "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "$(pip_config cert)" \
  /etc/ssl/certs/ca-certificates.crt; do
  if [[ -n $candidate && -s $candidate ]]; then
    ca=$candidate
    break
  fi
done
if [[ -n $ca ]]; then
  cp "$ca" "$secrets/ca-bundle"
else
  : >"$secrets/ca-bundle"
fi

quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
only_http() { tr ' \n' '\n\n' | grep -E '^https?://' | paste -sd ' ' - || true; }
{
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST UV_DEFAULT_INDEX UV_INDEX UV_INDEX_URL \
    UV_EXTRA_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    if [[ -n ${!var:-} ]]; then
      echo "$var=$(quote "${!var}")"
    fi
  done
  if [[ -z ${PIP_INDEX_URL:-} ]]; then
    value=$(pip_config index-url | only_http)
    [[ -z $value ]] || echo "PIP_INDEX_URL=$(quote "$value")"
  fi
  if [[ -z ${PIP_EXTRA_INDEX_URL:-} ]]; then
    value=$(pip_config extra-index-url | only_http)
    [[ -z $value ]] || echo "PIP_EXTRA_INDEX_URL=$(quote "$value")"
  fi
  if [[ -z ${PIP_TRUSTED_HOST:-} ]]; then
    value=$(pip_config trusted-host | tr '\n' ' ')
    [[ -z ${value// /} ]] || echo "PIP_TRUSTED_HOST=$(quote "$value")"
  fi
  if [[ -z ${HTTPS_PROXY:-} ]]; then
    value=$(pip_config proxy)
    [[ -z $value ]] || echo "HTTPS_PROXY=$(quote "$value")"
  fi
} >"$secrets/index-env"

# --format docker: the OCI format has no HEALTHCHECK. --pull=never: the base is local, no registry is asked.
"${PODMAN[@]}" build --quiet --format docker --pull=never \
  --build-arg "BASE_IMAGE=$BASE" \
  --secret "id=ca-bundle,src=$secrets/ca-bundle" \
  --secret "id=index-env,src=$secrets/index-env" \
  --tag "$TAG" --file Dockerfile . >&2
echo "$TAG"
