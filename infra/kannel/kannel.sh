#!/usr/bin/env bash
# Kannel (Debian's `kannel` package) for the benchmark, which runs it side by side with
# Rassylka against the same SMSC simulator: install | version | status.
#
#   install  apt-get installs `kannel` when `bearerbox` is missing, then makes sure the
#            package's own service (/etc/init.d/kannel: bearerbox on admin port 13000 with
#            a wapbox) is neither running nor enabled: the benchmark starts its own
#            bearerbox and smsbox on free ports with a config of its own
#            (pipeline/bench_kannel.py) and wants no other Kannel eating CPU beside them.
#   version  prints the installed package version (e.g. 1.4.5-12)
#   status   is bearerbox installed, and is the package's service running?
set -euo pipefail

say() { printf '[kannel] %s\n' "$*" >&2; }
sudo_cmd() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }

PIDFILE=/var/run/kannel/kannel_bearerbox.pid

bearerbox_bin() {
  command -v bearerbox 2>/dev/null || { [[ -x /usr/sbin/bearerbox ]] && echo /usr/sbin/bearerbox; }
}

package_version() { dpkg-query -W -f='${Version}' kannel 2>/dev/null || true; }

# The package's own bearerbox (started by its init script, pid in $PIDFILE), if alive.
service_pid() {
  local pid
  [[ -r "$PIDFILE" ]] || return 1
  pid="$(tr -dc 0-9 <"$PIDFILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# The package starts its service on install unless policy-rc.d forbids it (containers
# usually do): stop it and keep it from starting at boot.
quiet_service() {
  [[ -x /etc/init.d/kannel ]] || return 0
  if command -v update-rc.d >/dev/null; then
    sudo_cmd update-rc.d kannel disable >/dev/null 2>&1 || true
  fi
  if service_pid >/dev/null; then
    say "stopping the kannel package's own service (the benchmark runs its own bearerbox) ..."
    sudo_cmd /etc/init.d/kannel stop >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do service_pid >/dev/null || break; sleep 0.2; done
    if service_pid >/dev/null; then
      say "the kannel service (pid $(service_pid)) is still running: stop it with 'sudo /etc/init.d/kannel stop'"
      exit 1
    fi
    say "the kannel service is stopped and disabled"
  fi
}

install() {
  if bin="$(bearerbox_bin)"; then
    quiet_service
    say "bearerbox is installed ($bin, kannel $(package_version))"
    return 0
  fi
  command -v apt-get >/dev/null || {
    say "bearerbox not found and no apt-get to install it: install Kannel 1.4 (bearerbox, smsbox) yourself"; exit 1; }
  say "installing Debian's kannel package (apt-get install kannel) for the benchmark ..."
  sudo_cmd apt-get update -q >/dev/null
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 kannel >/dev/null
  bearerbox_bin >/dev/null || { say "apt-get installed kannel but no bearerbox is on PATH or in /usr/sbin"; exit 1; }
  quiet_service
  say "installed kannel $(package_version) ($(bearerbox_bin))"
}

status() {
  if ! bin="$(bearerbox_bin)"; then say "bearerbox is not installed: run 'make kannel'"; exit 1; fi
  say "bearerbox: $bin (kannel $(package_version))"
  if pid="$(service_pid)"; then
    say "the kannel package's service is running (bearerbox pid $pid): 'infra/kannel/kannel.sh install' stops it"
  else
    say "the kannel package's service is not running"
  fi
}

case "${1:-}" in
  install) install ;;
  version) v="$(package_version)"; [[ -n "$v" ]] || { say "kannel is not installed: run 'make kannel'"; exit 1; }; echo "$v" ;;
  status) status ;;
  *) echo "usage: $0 install|version|status" >&2; exit 2 ;;
esac
