#!/bin/sh
# Checks the Debian packages lmpress needs; installs the missing ones when run as root,
# otherwise prints the apt-get line and fails.
PKGS="gcc make zlib1g-dev libopenblas-dev liblapacke-dev libcjson-dev libpcre2-dev python3-numpy python3-pip gnuplot-nox bc"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null || exit 1
else
    echo "missing packages; run:  sudo apt-get install$missing" >&2
    exit 1
fi
