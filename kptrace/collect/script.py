"""`kptrace collect --script`: the collector as a POSIX sh script, for nodes where kptrace cannot be
installed (RHEL 9 has Python 3.9, Ubuntu 22.04 Python 3.10; kptrace needs 3.11).

The script writes the bundle layout `kptrace collect` writes (docs/bundle.md, docs/collect.md): the
same file names from the same commands with the same arguments (the iproute2 list and the sysctl
subset are taken from kptrace/collect/live.py, so the two cannot drift), node.yaml, hostname.txt and
a manifest.json that the loader reads like kptrace's own (failed parts become "not collected"). It
needs only a POSIX shell (dash, busybox sh, bash), coreutils-level tools (cat, tr, sed, grep, head,
sort, find, date, uname, wc, sha256sum if present, timeout if present, tar for a .tar.gz) and the
node's own networking tools. It is read-only like `kptrace collect`: commands only list or save, no
kernel module is loaded (IPVS, ipset and the legacy tables are read only when their module is), and
the one thing it creates is the output directory (mkdir fails if anything is at that path), mode 0700.

What it does not do: the pyroute2 and python-iptables fallbacks (a missing tool is a missing file,
named in the manifest), the host root (`--host-root`; run the script on the host instead) and
`--redact` (its bundle is not redacted: share it only where the node's names and addresses may go).
"""

from __future__ import annotations

import shlex

from kptrace import __version__
from kptrace.collect.live import IPROUTE, RESOLV_FILES, SYSCTL_DIRS, SYSCTL_RE, KUBELET_CONFIG

_HEAD = r'''#!/bin/sh
# kptrace collect --script (kptrace @VERSION@): capture this node, read-only, into a kptrace bundle.
#
#   sudo sh kptrace-collect.sh [-o DIR|NAME.tar.gz] [--include conntrack] [--node-name NAME]
#                              [--node-ip IP]... [--pod-cidr CIDR] [--timeout SECONDS]
#
# Writes the files `kptrace collect` writes (docs/collect.md), with the same commands, then
# `kptrace why|check --dump DIR` reads them anywhere. Only lists and saves: nothing on the node
# changes, no kernel module is loaded. Exit: 0 everything collected, 4 some parts missing (named on
# stderr and in manifest.json), 2 usage error or the output cannot be written.
set -u
umask 077
LC_ALL=C
export LC_ALL
PATH=$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

OUT=""
INCLUDE=""
NODE_NAME=""
NODE_IPS=""
POD_CIDR=""
TIMEOUT=60
usage() { echo "usage: sh $0 [-o DIR|NAME.tar.gz] [--include conntrack] [--node-name NAME] [--node-ip IP]... [--pod-cidr CIDR] [--timeout SECONDS]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    -o|--output) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
    --include) [ $# -ge 2 ] || usage
      case $2 in conntrack) INCLUDE=conntrack ;; *) echo "error: --include '$2': expected conntrack" >&2; exit 2 ;; esac
      shift 2 ;;
    --node-name) [ $# -ge 2 ] || usage; NODE_NAME=$2; shift 2 ;;
    --node-ip) [ $# -ge 2 ] || usage; NODE_IPS="$NODE_IPS $2"; shift 2 ;;
    --pod-cidr) [ $# -ge 2 ] || usage; POD_CIDR=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" >&2; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage ;;
  esac
done

HOST=$(uname -n)
STARTED=$(date -u +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
SAFE_HOST=$(printf '%s' "$HOST" | tr -c 'A-Za-z0-9._-' '_' | cut -c1-64)
NAME=kptrace-${SAFE_HOST:-host}-$STAMP
TARBALL=""
case $OUT in
  "") DIR=$NAME; TARBALL=$NAME.tar.gz ;;
  *.tar.gz|*.tgz) TARBALL=$OUT; NAME=$(basename "$OUT"); NAME=${NAME%.tar.gz}; NAME=${NAME%.tgz}
    DIR=$(dirname "$OUT")/.kptrace-$$-$NAME ;;
  *) DIR=$OUT ;;
esac
if [ -n "$TARBALL" ] && { [ -e "$TARBALL" ] || [ -L "$TARBALL" ]; }; then
  echo "error: $TARBALL exists; kptrace collect does not overwrite files" >&2; exit 2
fi
# mkdir creates the directory new or fails: nothing that exists is written through.
if ! mkdir "$DIR" 2>/dev/null; then
  echo "error: $DIR exists or cannot be created; kptrace collect does not overwrite files" >&2; exit 2
fi
if [ -n "$TARBALL" ] && [ "$DIR" != "$NAME" ]; then mkdir "$DIR/$NAME" || exit 2; B=$DIR/$NAME; else B=$DIR; fi
TMP=$B/.kptrace-tmp
mkdir "$TMP" || exit 2
: > "$TMP/commands"
: > "$TMP/warnings"
TO=""
if command -v timeout >/dev/null 2>&1; then TO="timeout $TIMEOUT"; fi

# A JSON string's contents: one line, no control characters, \ and " escaped.
js() { printf '%s' "$1" | tr -d '\000-\010\013-\037\177' | tr '\n\t' '  ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
jarr() { first=1; printf '['; for a in "$@"; do [ $first = 1 ] || printf ', '; first=0; printf '"%s"' "$(js "$a")"; done; printf ']'; }
# The node's own program NAME, by its path: a shell's built-in applet of that name (busybox sh has an
# `ip` without -j) is never taken for it.
tool() {
  case $1 in */*) [ -x "$1" ] && { printf '%s' "$1"; return 0; }; return 1 ;; esac
  oldifs=$IFS; IFS=:
  for d in $PATH; do
    if [ -n "$d" ] && [ -f "$d/$1" ] && [ -x "$d/$1" ]; then IFS=$oldifs; printf '%s' "$d/$1"; return 0; fi
  done
  IFS=$oldifs; return 1
}
have() { tool "$1" >/dev/null; }

# rec FILE VIA STATUS EXIT MESSAGE ABSENT_FILE CMD...: one manifest "commands" entry.
rec() {
  f=$1 via=$2 st=$3 rc=$4 msg=$5 absent=$6; shift 6
  {
    printf '{"file": '; if [ -n "$f" ]; then printf '"%s"' "$(js "$f")"; else printf 'null'; fi
    printf ', "command": %s, "via": "%s", "live_label": "%s", "status": "%s", "exit_code": %s' \
      "$(jarr "$@")" "$via" "$(js "$*")" "$st" "${rc:-null}"
    printf ', "duration_s": 0, "stderr": "%s"' "$(js "$(head -c 2000 "$TMP/err" 2>/dev/null)")"
    [ -z "$msg" ] || printf ', "message": "%s"' "$(js "$msg")"
    [ -z "$absent" ] || printf ', "absent_file": "%s"' "$(js "$absent")"
    if [ -n "$f" ] && [ -f "$B/$f" ]; then
      if have sha256sum; then printf ', "sha256": "%s"' "$(sha256sum < "$B/$f" | cut -d' ' -f1)"; fi
      printf ', "bytes": %s' "$(wc -c < "$B/$f" | tr -d ' ')"
    fi
    printf '}\n'
  } >> "$TMP/commands"
  case $st in
    missing|failed|timeout) printf '%s\n' "$(js "${f:-$1}: $msg")" >> "$TMP/warnings"
      echo "warning: ${f:-$1}: $msg" >&2 ;;
  esac
  : > "$TMP/err"
}

# run FILE CMD...: CMD's stdout into FILE (kept only when CMD succeeds), stdin closed.
run() {
  f=$1; shift
  exe=$(tool "$1") || { rec "$f" command missing "" "$1: not found on PATH" "" "$@"; return 1; }
  name=$1; shift
  $TO "$exe" "$@" > "$B/$f" 2> "$TMP/err" < /dev/null
  rc=$?
  set -- "$name" "$@"
  if [ $rc -eq 0 ]; then rec "$f" command ok 0 "" "" "$@"; return 0; fi
  rm -f "$B/$f"
  if [ $rc -eq 124 ] && [ -n "$TO" ]; then
    rec "$f" command timeout $rc "timed out after ${TIMEOUT}s" "" "$@"
  else
    rec "$f" command failed $rc "exit $rc: $(head -n 1 "$TMP/err")" "" "$@"
  fi
  return 1
}

# copy FILE PATH: a file of the node, as it is (absent when the node has none).
copy() {
  if [ -r "$2" ] && [ -f "$2" ]; then
    if cat "$2" > "$B/$1" 2> "$TMP/err"; then rec "$1" file ok "" "" "" read "$2"; return 0; fi
    rm -f "$B/$1"; rec "$1" file failed "" "$2: $(head -n 1 "$TMP/err")" "" read "$2"; return 1
  fi
  if [ -e "$2" ]; then rec "$1" file failed "" "$2: not readable" "" read "$2"; return 1; fi
  rec "" file absent "" "$2: not present on this node" "$1" read "$2"; return 1
}

absent() { f=$1 msg=$2; shift 2; rec "" command absent "" "$msg" "$f" "$@"; }
module_loaded() { [ -e "/sys/module/$1" ] || grep -q "^$1 " /proc/modules 2>/dev/null; }

ipt() {
  p=$1 main=""
  for t in "$p-save" "$p-nft-save" "$p-legacy-save"; do if have "$t"; then main=$t; break; fi; done
  if [ -z "$main" ]; then
    rec "$p-save.txt" command missing "" "$p-save: not found on PATH (nor $p-nft-save, $p-legacy-save)" "" "$p-save"
    return
  fi
  run "$p-save.txt" "$main" || return
  backend=nft
  hdr=$(head -c 4096 "$B/$p-save.txt" | grep -E '^# Generated by [^ ]+ v[A-Za-z0-9_.]+ \([A-Za-z0-9_]+\)' | head -n 1)
  case $hdr in
    *"(legacy)"*) backend=legacy ;;
    "") exe=$(tool "$main"); real=$(readlink -f "$exe" 2>/dev/null || echo "$exe")
        case $real$main in *legacy*) backend=legacy ;; esac ;;
  esac
  if [ $backend = nft ]; then
    if [ $p = ip6tables ]; then names=/proc/net/ip6_tables_names; else names=/proc/net/ip_tables_names; fi
    if [ ! -e $names ]; then
      absent "$p-legacy-save.txt" "legacy $p backend not loaded (no $names)" "$p-legacy-save"
    elif have "$p-legacy-save"; then
      run "$p-legacy-save.txt" "$p-legacy-save"
    elif [ ! -s $names ]; then
      absent "$p-legacy-save.txt" "legacy $p backend holds no tables" "$p-legacy-save"
    else
      rec "$p-legacy-save.txt" command missing "" "the legacy $p backend holds tables ($(tr '\n' ' ' < $names)) but $p-legacy-save is not installed" "" "$p-legacy-save"
    fi
    return
  fi
  # iptables points at the legacy backend: the nft backend may hold rules too (a mixed node).
  have "$p-nft-save" || return
  run "$p-nft-save.txt" "$p-nft-save" || return
  if grep -q '^\*[A-Za-z0-9_]' "$B/$p-nft-save.txt"; then
    # Both backends hold rules: each named after its backend, as the loader expects.
    mv "$B/$p-save.txt" "$B/$p-legacy-save.txt"
    sed "s|^{\"file\": \"$p-save.txt\"|{\"file\": \"$p-legacy-save.txt\"|" "$TMP/commands" > "$TMP/c2" && mv "$TMP/c2" "$TMP/commands"
  fi
}
'''

_TAIL = r'''
# ipset, IPVS: only when their module is loaded (asking would load it).
if module_loaded ip_set; then run ipset-save.txt ipset save; else absent ipset-save.txt "no ipsets in this kernel (ip_set not loaded)" ipset save; fi
if [ -e /proc/net/ip_vs ]; then
  if run ipvsadm.txt ipvsadm -Ln; then run ipvsadm-save.txt ipvsadm -Sn; fi
else
  absent ipvsadm.txt "no IPVS in this kernel (ip_vs not loaded, no /proc/net/ip_vs)" ipvsadm -Ln
fi
if [ "$INCLUDE" != conntrack ]; then
  rec "" command skipped "" "not asked for (--include conntrack)" "" conntrack -L
elif [ ! -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
  absent conntrack.txt "no conntrack in this kernel (nf_conntrack not loaded)" conntrack -L
else
  run conntrack.txt conntrack -L
fi
if [ -d /run/systemd/system ]; then
  run services.txt systemctl list-units --type=service --all --no-pager
else
  absent services.txt "systemd is not running here (no /run/systemd/system)" systemctl list-units
fi

# sysctl: the subset docs/bundle.md lists, file by file from /proc/sys, as `key = value`.
for d in @SYSCTL_DIRS@; do
  [ -d "/proc/sys/$d" ] && find "/proc/sys/$d" -type f 2>/dev/null
done | while IFS= read -r f; do
  key=$(printf '%s' "${f#/proc/sys/}" | tr './' '/.')
  printf '%s\n' "$key" | grep -Eq '@SYSCTL_RE@' || continue
  v=$(cat "$f" 2>/dev/null) || continue
  printf '%s = %s\n' "$key" "$v"
done | sort > "$B/sysctl.txt"
rec sysctl.txt file ok "" "" "" read /proc/sys

if [ -e /proc/modules ]; then copy modules.txt /proc/modules
else rec "" file absent "" "no /proc/modules (a kernel without loadable modules: everything is built in)" modules.txt read /proc/modules; fi
copy flannel-subnet.env /run/flannel/subnet.env

# DNS: the node's resolv.conf files, kubelet's command line and config file.
@RESOLV@
KPID=""
for d in /proc/[0-9]*; do
  if [ "$(cat "$d/comm" 2>/dev/null)" = kubelet ]; then KPID=${d#/proc/}; break; fi
done
CONFIG=/@KUBELET_CONFIG@
if [ -z "$KPID" ]; then
  rec "" file absent "" "no kubelet process visible here (not a node, or no host PID namespace)" kubelet-cmdline.txt read /proc/PID/cmdline
elif tr '\000' '\n' < "/proc/$KPID/cmdline" > "$B/kubelet-cmdline.txt" 2> "$TMP/err"; then
  rec kubelet-cmdline.txt file ok "" "" "" read "/proc/$KPID/cmdline"
  c=$(sed -n -e 's/^--config=//p' "$B/kubelet-cmdline.txt" | head -n 1)
  [ -n "$c" ] || c=$(sed -n -e '/^--config$/{n;p;}' "$B/kubelet-cmdline.txt" | head -n 1)
  [ -z "$c" ] || CONFIG=$c
else
  rm -f "$B/kubelet-cmdline.txt"; rec kubelet-cmdline.txt file failed "" "/proc/$KPID/cmdline: not readable" "" read "/proc/$KPID/cmdline"
fi
copy kubelet-config.yaml "$CONFIG"

printf '%s\n' "$HOST" > "$B/hostname.txt"
rec hostname.txt kptrace ok "" "" "" hostname
{
  printf 'name: "%s"\n' "$(js "${NODE_NAME:-$HOST}")"
  printf 'hostname: "%s"\n' "$(js "$HOST")"
  printf 'kernel_version: "%s"\n' "$(js "$(uname -r)")"
  if [ -n "$NODE_IPS" ]; then printf 'node_ips: '; jarr $NODE_IPS; printf '\n'; fi
  [ -z "$POD_CIDR" ] || printf 'pod_cidr: "%s"\n' "$(js "$POD_CIDR")"
  printf 'collected_by: "kptrace @VERSION@ (collect --script)"\n'
} > "$B/node.yaml"
rec node.yaml kptrace ok "" "" "" node.yaml

ENDED=$(date -u +%s)
{
  printf '{\n  "format": 1,\n  "kptrace_version": "@VERSION@",\n  "collector": "collect --script",\n'
  printf '  "hostname": "%s",\n  "node_name": "%s",\n' "$(js "$HOST")" "$(js "${NODE_NAME:-$HOST}")"
  printf '  "kernel": {"release": "%s", "version": "%s", "machine": "%s"},\n' \
    "$(js "$(uname -r)")" "$(js "$(uname -v)")" "$(js "$(uname -m)")"
  printf '  "created": "%s",\n  "duration_s": %s,\n  "uid": %s,\n' \
    "$(date -u -d "@$STARTED" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)" "$((ENDED - STARTED))" "$(id -u)"
  printf '  "include": [%s],\n  "redacted": false,\n' "$([ -z "$INCLUDE" ] || printf '"conntrack"')"
  # The script runs on the node itself: its iptables is the host's own (kptrace collect's `used`).
  IPTV=null
  if ipts=$(tool iptables-save); then v=$("$ipts" --version 2>/dev/null | head -n 1); [ -z "$v" ] || IPTV="\"$(js "$v")\""; fi
  printf '  "iptables_versions": {"container": %s, "host": null, "host_root": null, "used": "container", "mismatch": false, "note": "collect --script: read with the iptables on the node'"'"'s PATH"},\n' "$IPTV"
  printf '  "warnings": ['

  sed -e 's/^/"/' -e 's/$/"/' "$TMP/warnings" | paste -sd, - | sed 's/,/, /g' | tr -d '\n'
  printf '],\n  "commands": [\n'
  sed -e 's/^/    /' -e '$!s/$/,/' "$TMP/commands"
  printf '  ]\n}\n'
} > "$B/manifest.json"
WARNED=$(wc -l < "$TMP/warnings" | tr -d ' ')
rm -rf "$TMP"
if [ -n "$TARBALL" ]; then
  if [ "$DIR" = "$NAME" ]; then (tar czf "$TARBALL.tmp$$" "$NAME" && mv "$TARBALL.tmp$$" "$TARBALL") || exit 2; rm -rf "$NAME"
  else (cd "$DIR" && tar czf - "$NAME") > "$TARBALL.tmp$$" && mv "$TARBALL.tmp$$" "$TARBALL" || exit 2; rm -rf "$DIR"; fi
  echo "$TARBALL"
else
  echo "$DIR"
fi
[ "$WARNED" = 0 ] || exit 4
exit 0
'''


# Lines of the sh script (its own `ipt` and `run` functions), not an argv: the sh script is
# checked as a whole by tests/kernel/test_kernel_collect_script.py.
_RULESETS = """\
ipt iptables
ipt ip6tables
run nft-ruleset.json nft -j list ruleset"""


def _iptables_and_iproute() -> str:
    lines = _RULESETS.splitlines()
    for name, argv, _ in IPROUTE:
        lines.append(f"run {shlex.quote(name)} {' '.join(shlex.quote(a) for a in argv)}")
    return "\n".join(lines) + "\n"


def script() -> str:
    """The POSIX sh collector, with this kptrace's version and file lists."""
    resolv = "\n".join(f"copy {shlex.quote(name)} /{rel}" for name, rel in RESOLV_FILES)
    tail = (_TAIL.replace("@SYSCTL_DIRS@", " ".join(shlex.quote(d) for d in SYSCTL_DIRS))
            .replace("@SYSCTL_RE@", SYSCTL_RE.pattern).replace("@RESOLV@", resolv)
            .replace("@KUBELET_CONFIG@", KUBELET_CONFIG))
    return (_HEAD + "\n" + _iptables_and_iproute() + tail).replace("@VERSION@", __version__)
