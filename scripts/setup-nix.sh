#!/usr/bin/env bash
# Makes Debian's nix-bin usable on a machine where nothing else set it up.
#
# Debian's package installs the programs only: no /etc/nix, no `nixbld`
# group (which its Nix names in build-users-group), no /nix/store and no Nix
# database. This does what Nix's own multi-user installer does for those,
# without a daemon: root builds with the nixbld users, as on NixOS.
#
# Changes to the machine, each only when missing (running it again changes
# nothing):
#   - group `nixbld` and system users nixbld1..nixbld$NIX_BUILD_USERS
#     (no home, no login shell), the build users Nix runs builders as;
#   - /nix/store (root:nixbld, mode 1775) and /nix/var/nix;
#   - Nix's database /nix/var/nix/db/db.sqlite, created by `nix-store --verify`.
# It writes no /etc/nix/nix.conf: Debian's defaults are kept.
set -euo pipefail

users=${NIX_BUILD_USERS:-16}
# NIX_FIRST_BUILD_UID: give the group this gid and the users the uids after
# it, instead of letting groupadd/useradd pick free system ids. Nix kills
# every process of a build user before it uses it, so two Nix installations
# that share a kernel (a container and its host) must not share build uids.
first=${NIX_FIRST_BUILD_UID:-}

if [ "$(id -u)" -ne 0 ]; then
	exec sudo --preserve-env=NIX_BUILD_USERS,NIX_FIRST_BUILD_UID "$0" "$@"
fi
if ! command -v nix-store >/dev/null; then
	echo "setup-nix: nix-store is not installed (apt-get install nix-bin)" >&2
	exit 1
fi

if ! getent group nixbld >/dev/null; then
	groupadd --system ${first:+--gid "$first"} nixbld
	echo "setup-nix: created group nixbld"
fi
created=0
for i in $(seq 1 "$users"); do
	if ! getent passwd "nixbld$i" >/dev/null; then
		useradd --system ${first:+--uid "$((first + i))"} --no-create-home --home-dir /var/empty \
			--shell /usr/sbin/nologin --gid nixbld --groups nixbld \
			--comment "Nix build user $i" "nixbld$i"
		created=$((created + 1))
	fi
done
[ "$created" -eq 0 ] || echo "setup-nix: created $created build users (nixbld1..nixbld$users)"

if [ ! -d /nix/store ]; then
	mkdir -p /nix/store
	echo "setup-nix: created /nix/store"
fi
# What the installer sets: builders (group nixbld) may create outputs; the
# sticky bit keeps them from removing each other's.
chgrp nixbld /nix/store
chmod 1775 /nix/store
mkdir -p /nix/var/nix

if [ ! -s /nix/var/nix/db/db.sqlite ]; then
	nix-store --verify >/dev/null
	echo "setup-nix: created the Nix database /nix/var/nix/db/db.sqlite"
fi
