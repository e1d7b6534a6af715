#!/bin/sh
# Usage: need-debian-packages.sh PACKAGE:PROBE ...
# PROBE is a command name or an absolute file path that the package provides. Missing
# packages are installed with apt-get when we are root; otherwise we stop and print the
# exact command to run, rather than failing later with a compiler error.
set -eu
missing=""
for spec in "$@"; do
  pkg=${spec%%:*}
  probe=${spec#*:}
  case "$probe" in
    /*) [ -e "$probe" ] && continue ;;
    *) command -v "$probe" >/dev/null 2>&1 && continue ;;
  esac
  missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq $missing >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
  }
else
  echo "missing Debian packages:$missing" >&2
  echo "run:  sudo apt-get update && sudo apt-get install -y$missing" >&2
  exit 1
fi
