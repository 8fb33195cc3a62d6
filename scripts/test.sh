#!/usr/bin/env bash
# The whole check, as CI runs it: services up, lint, types, tests, then the contract smoke tests in both
# modes. Runs every step even after a failure, then exits non-zero if any failed. Arguments go to pytest.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
# Let the suite's hundreds of Python processes share compiled modules (setup.sh compiled the libraries and
# src/; this adds the tests' assertion-rewritten modules, which pytest caches only when bytecode may be
# written). With PYTHONDONTWRITEBYTECODE set, every process compiled them again.
unset PYTHONDONTWRITEBYTECODE
SMOKE=../shared/contract/smoke.py
failed=()

header() { printf "\n==> %s  [%d s]\n" "$*" "$SECONDS"; }

# run_step NAME CMD...: runs CMD under a header and remembers NAME if it fails.
run_step() {
  local name=$1 rc=0
  shift
  header "$name"
  "$@" || rc=$?
  if ((rc != 0)); then
    failed+=("$name (exit $rc)")
  fi
  return 0
}

# --- services ------------------------------------------------------------------------------------------------
pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h 127.0.0.1 -p 5432 -t 2
  else
    python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), timeout=2).close()' 2>/dev/null
  fi
}

redis_up() {
  python3 - <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", 6379), timeout=2) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ ! -d /etc/postgresql ]]; then
    echo "pg_ctlcluster or /etc/postgresql not found: PostgreSQL is not installed here" >&2
    return 1
  fi
  local version
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
}

start_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: Redis is not installed here" >&2
    return 1
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

# ensure_service NAME ADDRESS CHECK START
ensure_service() {
  local name=$1 address=$2 check=$3 start=$4 _
  if "$check"; then
    echo "$name answers on $address"
    return 0
  fi
  echo "$name does not answer on $address; starting it"
  "$start" || true
  for _ in $(seq 1 40); do
    if "$check"; then
      echo "$name answers on $address"
      return 0
    fi
    sleep 0.5
  done
  echo "error: $name does not answer on $address and could not be started; the tests need it." >&2
  return 1
}

header "services: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379"
ensure_service PostgreSQL 127.0.0.1:5432 pg_up start_postgres || exit 1
ensure_service Redis 127.0.0.1:6379 redis_up start_redis || exit 1

if [[ ! -x $BIN/pytest ]]; then
  echo "error: $BIN/pytest not found; run 'make setup' first" >&2
  exit 1
fi

# --- checks ------------------------------------------------------------------------------------------------
# The contract smoke tests (both modes side by side) spend most of their ~60 s waiting for stages, while lint
# keeps one core busy for about as long: they run together, before pytest, and each one's output is shown
# whole, in order, once both are done.
SMOKE_OUT=$(mktemp -d)
trap 'rm -rf "$SMOKE_OUT"' EXIT
smoke_pids=()
if [[ -f $SMOKE ]]; then
  "$BIN/python" "$SMOKE" >"$SMOKE_OUT/embedded" 2>&1 &
  smoke_pids+=($!)
  "$BIN/python" "$SMOKE" --production >"$SMOKE_OUT/production" 2>&1 &
  smoke_pids+=($!)
fi

run_step "lint: ruff check" "$BIN/ruff" check .
run_step "lint: ruff format --check" "$BIN/ruff" format --check .
run_step "types: mypy" "$BIN/mypy"
run_step "layers: lint-imports" "$BIN/lint-imports"
run_step "dead code: vulture" "$BIN/vulture" src/canaryd tests bench tools/vulture_whitelist.py --min-confidence 60 --exclude src/canaryd/migrations

# smoke_result MODE PID: waits for that smoke run, shows its output, remembers a failure.
smoke_result() {
  local mode=$1 pid=$2 rc=0
  wait "$pid" || rc=$?
  header "contract smoke test: $mode mode"
  cat "$SMOKE_OUT/$mode"
  if ((rc != 0)); then failed+=("contract smoke test: $mode mode"); fi
}

if ((${#smoke_pids[@]})); then
  smoke_result embedded "${smoke_pids[0]}"
  smoke_result production "${smoke_pids[1]}"
else
  header "contract smoke tests: skipped ($SMOKE not found)"
fi

# The container-image test builds FROM a Debian base made with debootstrap (minutes of downloads and dpkg,
# once per machine). On a whole run, start making it now, after the smoke tests (under its load their healthy
# canaries paused: machine-wide latency bursts left the judge short of evidence at 3 s stages): it then
# overlaps the first tests instead of holding a pytest worker for all of it. The test waits for it
# (make-base.sh takes a lock) and reports any failure itself.
if (($# == 0)); then
  bash deploy/image/make-base.sh >/dev/null 2>&1 &
fi

# Most end-to-end tests spend their time waiting for real stages to pass, so more pytest-xdist workers than
# cores cut the wall time: in a 3-worker run the tests' wall times summed to 1,843 s against 587 s of CPU.
# `--dist load` is tests/scheduling.py's longest-first scheduler: each worker gets the longest test not yet
# started as it frees up (file order used to leave one 50 s test running alone at the end).
# PYTEST_WORKERS overrides the count; 0 runs them one by one.
# Tests marked `solo` load every core on purpose (a CPU hog): they run afterwards, one at a time, so that no
# real-time test shares the machine with them. Either run may select nothing when arguments narrow it down.
pytest_step() {
  local rc=0 solo_rc=0
  "$BIN/pytest" -q -n "${PYTEST_WORKERS:-5}" --dist load --durations=15 -m "not solo" "$@" || rc=$?
  "$BIN/pytest" -q -n 0 -m solo "$@" || solo_rc=$?
  if ((rc == 5 && solo_rc == 5)); then
    echo "error: pytest collected no tests" >&2
    return 5
  fi
  ((rc == 5)) && rc=0
  ((solo_rc == 5)) && solo_rc=0
  return $((rc != 0 ? rc : solo_rc))
}
run_step "tests: pytest -q $*" pytest_step "$@"

# --- summary -------------------------------------------------------------------------------------------------
if ((${#failed[@]})); then
  header "FAILED"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
header "all checks passed"
