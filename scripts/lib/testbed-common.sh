# shellcheck shell=bash
# Helpers for scripts/testbed. Sourced, not executed.
# Expects STATE_DIR to be set by the caller.

log() {
  printf 'testbed: %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

have() {
  command -v "$1" >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif have sudo; then
    if [ -t 0 ]; then
      sudo -- "$@"
    else
      sudo -n -- "$@"
    fi
  else
    die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=no

apt_run() {
  # apt_run ARGS...: apt-get, output to ${STATE_DIR}/apt.log (tail on failure).
  local aptlog="${STATE_DIR}/apt.log"
  printf '\n===== %s apt-get %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$*" >>"${aptlog}"
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 "$@" \
    >>"${aptlog}" 2>&1 </dev/null 9>&-; then
    return 0
  fi
  log "apt-get $* failed; last lines of ${aptlog}:"
  tail -n 20 -- "${aptlog}" >&2 || true
  return 1
}

apt_update_once() {
  if [ "${APT_UPDATED}" = no ]; then
    log "apt-get update"
    apt_run update || die "apt-get update failed"
    APT_UPDATED=yes
  fi
}

apt_install() {
  # apt_install PACKAGE...: runs apt-get update first only if a package has
  # no install candidate (fresh machine) or the install fails (stale lists).
  have apt-get || die "apt-get not found; install manually: $*"
  local pkg
  for pkg in "$@"; do
    if ! apt-cache policy -- "${pkg}" 2>/dev/null | grep -q 'Candidate: [^(]'; then
      apt_update_once
      break
    fi
  done
  log "apt-get install $* (log: ${STATE_DIR}/apt.log)"
  if ! apt_run install -y --no-install-recommends -- "$@"; then
    [ "${APT_UPDATED}" = no ] || die "apt-get install $* failed"
    apt_update_once
    apt_run install -y --no-install-recommends -- "$@" || die "apt-get install $* failed"
  fi
}

port_open() {
  # port_open HOST PORT: does something accept TCP connections there?
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

redis_ping() {
  # redis_ping PORT: PING over a raw socket, so redis-cli is not required.
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "PING\r\n" >&3
    IFS= read -r reply <&3 || exit 1
    [ "${reply%$'"'"'\r'"'"'}" = "+PONG" ]
  ' _ "$1" 2>/dev/null
}

wait_for() {
  # wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds.
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "${SECONDS}" -lt "${deadline}" ] || return 1
    sleep 0.2
  done
}

sha256_of() {
  sha256sum -- "$1" | cut -d ' ' -f 1
}

sha256_stdin() {
  sha256sum | cut -d ' ' -f 1
}

pid_matches() {
  # pid_matches PID WORD: is PID alive and does its command line contain WORD?
  local pid="$1" word="$2" cmdline
  case "${pid}" in '' | *[!0-9]*) return 1 ;; esac
  [ -r "/proc/${pid}/cmdline" ] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" || return 1
  case "${cmdline}" in *"${word}"*) return 0 ;; *) return 1 ;; esac
}

pid_alive() {
  # pid_alive PID: running and not a zombie (an orphan stays a zombie until
  # PID 1 reaps it, which some container inits do slowly).
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" || return 1
  [ -n "${state}" ] && [ "${state}" != Z ]
}

stop_pid() {
  # stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
  local pid="$1" _
  if ! kill -TERM "${pid}" 2>/dev/null; then
    pid_alive "${pid}" || return 0
    as_root kill -TERM "${pid}" || return 0  # e.g. a daemon owned by its own user
  fi
  for _ in $(seq 1 100); do
    pid_alive "${pid}" || return 0
    sleep 0.1
  done
  log "pid ${pid} ignored SIGTERM; killing it"
  kill -KILL "${pid}" 2>/dev/null || as_root kill -KILL "${pid}" 2>/dev/null || true
}

env_line() {
  # env_line NAME VALUE: an `export NAME=VALUE` line usable by sh and make;
  # the value is single-quoted only if it needs quoting.
  local name="$1" value="$2"
  case "${value}" in
    *[!A-Za-z0-9_./:@%+=,-]*)
      printf "export %s='%s'\n" "${name}" "${value//\'/\'\\\'\'}"
      ;;
    *)
      printf 'export %s=%s\n' "${name}" "${value}"
      ;;
  esac
}

replace_if_changed() {
  # replace_if_changed TMP DEST: move TMP over DEST unless identical.
  if [ -f "$2" ] && cmp -s -- "$1" "$2"; then
    rm -f -- "$1"
  else
    chmod 0644 -- "$1"
    mv -f -- "$1" "$2"
  fi
}

take_lock() {
  # Serialise concurrent up/down runs (e.g. parallel make jobs).
  if have flock; then
    exec 9>"${STATE_DIR}/.lock"
    flock -w 300 9 || die "another scripts/testbed run holds ${STATE_DIR}/.lock"
  fi
}

elapsed_since() {
  # elapsed_since NANOSECONDS: "1.234s"
  local now
  now="$(date +%s%N)"
  awk -v a="$1" -v b="${now}" 'BEGIN { printf "%.1fs", (b - a) / 1e9 }'
}
