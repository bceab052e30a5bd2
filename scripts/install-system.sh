#!/usr/bin/env bash
# make install-system: install ArtStore on this host for systemd.
#
#   /opt/artstore/venv                     the Python package and its dependencies
#   /usr/local/bin/artstored, artstore     links to the venv's entry points
#   /etc/systemd/system/*.service          artstored.service, artstore-mount.service
#   /usr/local/share/man/man{1,5,8}        artstore(1), artstore.toml(5), artstored(8), ...
#   /etc/artstore/artstored.toml.example   every key with its default
#   /etc/artstore/artstored.toml           created once (never overwritten)
#   user and group "artstore"; /var/lib/artstore owned by them
#
# DESTDIR=dir installs into a staging tree instead (no user, no systemctl); with
# ARTSTORE_INSTALL_VENV=0 the venv is not built (for checking the rest quickly).
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
VENV=/opt/artstore/venv
PYTHON=${PYTHON:-python3}

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install-system: run as root (or set DESTDIR to stage the files)" >&2
  exit 2
fi
./scripts/install-system-deps.sh

if [ "${ARTSTORE_INSTALL_VENV:-1}" != 0 ]; then
  "$PYTHON" -m venv "$DESTDIR$VENV"
  "$DESTDIR$VENV/bin/pip" install -q --upgrade pip
  "$DESTDIR$VENV/bin/pip" install -q .
fi
install -d "$DESTDIR$PREFIX/bin"
ln -sfn "$VENV/bin/artstored" "$DESTDIR$PREFIX/bin/artstored"
ln -sfn "$VENV/bin/artstore" "$DESTDIR$PREFIX/bin/artstore"

install -d "$DESTDIR/etc/systemd/system"
install -m 0644 systemd/artstored.service systemd/artstore-mount.service \
  "$DESTDIR/etc/systemd/system/"

for page in man/*.[1-8]; do
  section=${page##*.}
  install -d "$DESTDIR$PREFIX/share/man/man$section"
  install -m 0644 "$page" "$DESTDIR$PREFIX/share/man/man$section/"
done

install -d -m 0755 "$DESTDIR/etc/artstore"
install -m 0644 etc/artstored.toml.example "$DESTDIR/etc/artstore/artstored.toml.example"
if [ ! -e "$DESTDIR/etc/artstore/artstored.toml" ]; then
  cat > "$DESTDIR/etc/artstore/artstored.toml" <<'CONF'
# ArtStore configuration: see artstore.toml(5) and artstored.toml.example beside this file.
[storage]
data_dir = "/var/lib/artstore"

[server]
listen = "127.0.0.1:8470"
CONF
  chmod 0644 "$DESTDIR/etc/artstore/artstored.toml"
fi

if [ -z "$DESTDIR" ]; then
  getent group artstore >/dev/null || groupadd --system artstore
  getent passwd artstore >/dev/null || useradd --system --gid artstore \
    --home-dir /var/lib/artstore --no-create-home --shell /usr/sbin/nologin artstore
  install -d -m 0750 -o artstore -g artstore /var/lib/artstore
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
  echo "installed; start with: systemctl enable --now artstored" >&2
  echo "disk roots (storage.disks) go under /srv or /mnt, owned by artstore; anywhere" \
    "else needs a ReadWritePaths= drop-in: see SYSTEMD in artstored(8)" >&2
fi
