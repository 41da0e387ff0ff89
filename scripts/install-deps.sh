#!/bin/sh
# Install what lathe needs to build and test, from Debian 12's packages.
# Run as root (or through sudo). Safe to run again.
set -e
pkgs="build-essential autoconf automake libtool pkg-config \
  libinih-dev check libsubunit-dev libopenblas-dev libopenblas0-openmp \
  libjansson-dev libpcre2-dev libunistring-dev openmpi-bin libopenmpi-dev time"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing
fi
