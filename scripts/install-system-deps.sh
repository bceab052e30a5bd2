#!/usr/bin/env bash
# Installs the Debian packages ArtStore needs to build and test, only those missing.
# fuse3/libfuse3-dev/pkg-config: pyfuse3 builds from source against libfuse3.
# attr, rsync: the FUSE tests call getfattr and rsync. mandoc: the tests lint the man pages.
# swift-object, nginx-light: the reference servers the benchmarks compare against (the
# quick benchmark is part of make test). prometheus: promtool checks our metrics. python3-venv/-dev, gcc: the venv and C extensions
# on a machine whose python3 is Debian's. util-linux (losetup, mount), e2fsprogs (mkfs.ext4,
# e2fsck), xfsprogs (mkfs.xfs, xfs_repair): the power-cut tests put each disk and LMDB on a
# loop-mounted ext4 or XFS image. systemd: the tests run systemd-analyze verify on the units.
# make: the README's commands. iproute2 (ip), nftables (nft): tests/netns.py puts cluster
# nodes in network namespaces on a bridge and cuts links or drops packets between them.
# etcd-server, etcd-client (etcd, etcdctl): the tests of the etcd cluster authority start
# their own three-member etcd cluster on loopback (tests/etcd_lab.py). rclone, curl: the S3
# endpoint's tests drive it with rclone (an existing tool, unchanged) and a presigned URL with curl.
# swift-proxy, swift-account, swift-container, memcached: Swift's own S3 front (s3api), the
# reference of the S3 benchmark (bench/s3.py, in make test's quick run).
set -euo pipefail
packages=(fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev attr rsync mandoc
          swift-object nginx-light prometheus util-linux mount e2fsprogs xfsprogs systemd make
          iproute2 nftables etcd-server etcd-client
          rclone curl swift-proxy swift-account swift-container memcached)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The services below run even when the packages were installed by someone else (.ci/run
# installs them first): stopping them is idempotent and quick.
# Debian starts the nginx and prometheus it installs; we need only their binaries.
for service in nginx prometheus; do
  $sudo systemctl disable --now "$service" >/dev/null 2>&1 || $sudo pkill -x "$service" || true
done
# Likewise memcached and Swift's services: the S3 benchmark starts its own on free ports.
# (No pkill fallback: it would also kill those of a benchmark in progress.)
for service in memcached swift-proxy swift-account swift-container swift-object; do
  $sudo systemctl disable --now "$service" >/dev/null 2>&1 || true
done
# Likewise the etcd it enables on port 2379: the tests start their own members on free
# ports. (No pkill fallback: it would also kill the members of a test run in progress.)
$sudo systemctl disable --now etcd >/dev/null 2>&1 || $sudo service etcd stop >/dev/null 2>&1 \
  || true
