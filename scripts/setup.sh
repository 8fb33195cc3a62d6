#!/usr/bin/env bash
# Makes this checkout ready to run and test canaryd:
#   1. the Debian packages canaryd drives or its tests start (nginx, HAProxy, sshd, Prometheus, pg tools);
#   2. uv (the one on PATH, else a private copy bootstrapped with pip);
#   3. .venv from uv.lock, every dependency group included (`uv sync --frozen`).
# Idempotent, and quiet and quick (well under 5 s) when everything is already there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian package -> the commands that show it (or an equivalent: nginx-full for nginx-light, a versioned
# postgresql-client-NN for postgresql-client) is already installed.
PACKAGES=(
  "nginx-light:nginx"
  "haproxy:haproxy"
  "openssh-server:sshd"
  "prometheus:prometheus"
  "postgresql-client:pg_isready createdb"
  "chromium:chromium"
  "curl:curl"
  "jq:jq"
)

is_root() { [[ $(id -u) -eq 0 ]]; }

have_cmd() {
  command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 || -x /usr/bin/$1 ]]
}

pkg_present() {
  local pkg=$1 cmds=$2 cmd status
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] && return 0
  for cmd in $cmds; do
    have_cmd "$cmd" || return 1
  done
  return 0
}

missing=()
for entry in "${PACKAGES[@]}"; do
  pkg_present "${entry%%:*}" "${entry#*:}" || missing+=("${entry%%:*}")
done

installed_note="system packages present"
deferred_error=""
if ((${#missing[@]})); then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The project starts its own nginx/haproxy/sshd/prometheus on loopback when it needs them, so keep the
    # packages' system services from starting during the install (they may clash on ports 80, 9090, 22);
    # only if no policy is set already, and only for the length of this install.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    trap 'if [[ $own_policy == 1 ]]; then rm -f "$policy"; fi' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ $own_policy == 1 ]]; then rm -f "$policy"; fi
    own_policy=0
    installed_note="installed ${missing[*]}"
  else
    deferred_error="setup: missing Debian packages: ${missing[*]}
setup: install them as root, then run 'make setup' again:
  apt-get update && apt-get install -y ${missing[*]}"
    installed_note="MISSING ${missing[*]}"
  fi
fi

# Container image and deploy-file tests (tests/deploy): podman with runc builds and runs the image, debootstrap
# makes its base locally, systemd-analyze checks the units. With their recommended packages: podman's build
# steps need its network stack (netavark, containernetworking-plugins).
CONTAINER_PACKAGES=("podman:podman" "runc:runc" "debootstrap:debootstrap" "systemd:systemd-analyze")
container_missing=()
for entry in "${CONTAINER_PACKAGES[@]}"; do
  pkg_present "${entry%%:*}" "${entry#*:}" || container_missing+=("${entry%%:*}")
done
if ((${#container_missing[@]})); then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${container_missing[*]}"
    # As above: no package's service starts during the install.
    own_container_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_container_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${container_missing[@]}" >/dev/null
    if [[ $own_container_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    installed_note="$installed_note; installed ${container_missing[*]}"
  else
    deferred_error="${deferred_error:+$deferred_error
}setup: missing Debian packages: ${container_missing[*]}; as root: apt-get update && apt-get install -y ${container_missing[*]}"
  fi
fi

# --- uv ------------------------------------------------------------------------------------------------------
BOOTSTRAP="${XDG_CACHE_HOME:-$HOME/.cache}/canaryd/uv-bootstrap"

find_uv() {
  local candidate
  for candidate in "$(command -v uv 2>/dev/null || true)" "$HOME/.local/bin/uv" "$BOOTSTRAP/bin/uv"; do
    if [[ -n $candidate && -x $candidate ]] && "$candidate" --version >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

bootstrap_uv() {
  echo "setup: uv not found; installing it into $BOOTSTRAP" >&2
  if ! python3 -m venv "$BOOTSTRAP" >/dev/null 2>&1; then
    rm -rf "$BOOTSTRAP"
    if is_root && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
      python3 -m venv "$BOOTSTRAP" >/dev/null
    else
      # No venv module: a user install (Debian's PEP 668 guard may refuse it; then install python3-venv).
      python3 -m pip install --user --quiet uv >&2
      return 0
    fi
  fi
  "$BOOTSTRAP/bin/python" -m pip install --quiet --disable-pip-version-check uv >&2
}

UV=$(find_uv) || { bootstrap_uv && UV=$(find_uv); } || {
  echo "setup: could not install uv (tried: PATH, ~/.local/bin, pip into $BOOTSTRAP)" >&2
  exit 1
}

# --- .venv ---------------------------------------------------------------------------------------------------
# Never fetch a Python build from the network (this project's machines cannot); use the system's 3.11+.
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
"$UV" sync --frozen --all-groups --quiet
# Bytecode for every module, once: where PYTHONDONTWRITEBYTECODE is set (this project's machines and CI set
# it) Python never caches what it compiles, so every process (each canaryd, canaryctl and pytest worker the
# tests start) compiled SQLAlchemy, FastAPI and pydantic again from source: 5.2 s of CPU to import the API
# and the worker against 1.9 s with bytecode. compileall skips what is up to date (~1 s on later runs);
# files it cannot compile (test data inside packages) only keep their source.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages src >/dev/null 2>&1 || true

if [[ -n $deferred_error ]]; then
  echo "$deferred_error" >&2
  exit 1
fi

echo "setup: ok: $installed_note; $("$UV" --version | cut -d' ' -f1-2); .venv $(.venv/bin/python -c 'import platform; print("Python", platform.python_version())')"
