#!/usr/bin/env bash
# Runs the README's two commands, `make test` and `make run`, in a pristine
# Debian bookworm root, so that nothing configured by hand on this machine
# can make them pass.
#
#   scripts/fresh-root.sh            # make test, then the make run check
#   scripts/fresh-root.sh test       # only make test
#   scripts/fresh-root.sh run        # only the make run check
#   scripts/fresh-root.sh shell      # a shell in a fresh root (debugging)
#
# The root is debootstrap's minbase plus what a new machine of this project's
# kind has (build-essential, git, curl, python3, sqlite3, PostgreSQL 15; Go is
# the host's /usr/local/go, mounted read-only): no Nix, no Chromium, no
# /etc/nix, no nixbld group. The base is made once and kept as a tarball in
# $FRESH_ROOT_CACHE (default /var/cache/crystal-forge); every run unpacks it
# into a new directory and deletes that afterwards, so each run starts clean.
#
# The root is entered with pivot_root in a private mount and PID namespace,
# not chroot: Nix re-enters the mount namespace it saved at start before it
# runs git, which escapes a chroot ("fatal: cannot change to '<dir>'").
# The source is the working tree's tracked and untracked, not ignored, files.
# Must run as root (debootstrap, namespaces). Needs debootstrap and
# util-linux's unshare; installs debootstrap when missing.
set -euo pipefail

what=${1:-all}
case $what in all | test | run | shell) ;; *)
	echo "usage: $0 [all|test|run|shell]" >&2
	exit 2
	;;
esac
if [ "$(id -u)" -ne 0 ]; then
	echo "fresh-root: must run as root (debootstrap and namespaces need it)" >&2
	exit 1
fi
src=$(cd "$(dirname "$0")/.." && pwd)
goroot=${GOROOT_HOST:-/usr/local/go}
[ -x "$goroot/bin/go" ] || {
	echo "fresh-root: no Go at $goroot (set GOROOT_HOST)" >&2
	exit 1
}

# What a new machine of this kind has besides minbase.
preinstalled=build-essential,git,curl,ca-certificates,python3,sqlite3,postgresql-15,make,procps
cache=${FRESH_ROOT_CACHE:-/var/cache/crystal-forge}
tag=$(printf '%s\n' "bookworm" "$preinstalled" "v1" | sha256sum | cut -c1-12)
base="$cache/fresh-root-bookworm-$tag.tar"

log() { printf 'fresh-root: %s\n' "$*" >&2; }
t0=$(date +%s)

if [ ! -s "$base" ]; then
	command -v debootstrap >/dev/null || {
		log "installing debootstrap"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
	}
	# The mirror this machine's apt uses (deb822 or one-line format).
	mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
	[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$mirror" ] || {
		log "cannot find this machine's Debian mirror in /etc/apt"
		exit 1
	}
	mkdir -p "$cache"
	stage=$(mktemp -d "$cache/stage.XXXXXX")
	trap 'rm -rf "$stage"' EXIT
	log "debootstrap bookworm (minbase + $preinstalled) from $mirror"
	debootstrap --variant=minbase --include="$preinstalled" bookworm "$stage/root" "$mirror" >"$stage/debootstrap.log" 2>&1 || {
		tail -30 "$stage/debootstrap.log" >&2
		exit 1
	}
	# apt inside uses the same sources as this machine (security updates too).
	if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
		rm -f "$stage/root/etc/apt/sources.list"
		for f in /etc/apt/sources.list.d/*.sources; do
			grep -q '^URIs:.*debian' "$f" && cp "$f" "$stage/root/etc/apt/sources.list.d/"
		done
	fi
	rm -rf "$stage/root/var/cache/apt/archives/"*.deb "$stage/root/var/lib/apt/lists/"*
	tar -C "$stage/root" -cf "$base.tmp" .
	mv "$base.tmp" "$base"
	rm -rf "$stage"
	trap - EXIT
	log "base root ready in $(($(date +%s) - t0)) s ($base)"
fi

work=$(mktemp -d /var/tmp/crystal-forge-fresh-root.XXXXXX)
cleanup() {
	# Nix makes store paths read-only; make them removable first.
	chmod -R u+w "$work" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"
mkdir -p "$root"
tar -C "$root" -xf "$base"
mkdir -p "$root/src" "$root/usr/local/go"
(cd "$src" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$root/src" -xf -
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The network's trust, not the project's configuration: where the way out
# goes through a proxy with its own CA, the host trusts it and so must the root.
if [ -d /usr/local/share/ca-certificates ]; then
	cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
log "root unpacked in $(($(date +%s) - t0)) s"

# Inside the root: the README's commands, as a new user types them.
cat >"$root/fresh-root-run" <<'EOF'
#!/bin/bash
set -euo pipefail
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root GOTOOLCHAIN=local
cd /src
case $1 in
shell) exec bash -i ;;
test | all)
	s=$(date +%s)
	make test
	echo "fresh-root: make test passed in $(($(date +%s) - s)) s"
	[ "$1" = test ] && exit 0
	;;
esac
s=$(date +%s)
scripts/check-make-run.sh
echo "fresh-root: make run check passed in $(($(date +%s) - s)) s"
EOF
chmod +x "$root/fresh-root-run"

# CI and the proxy settings pass through; nothing else of this environment.
# The root's build users get uids of their own: Nix kills every process of
# a build user before building as it, and the host's Nix, seeing the root's
# processes, would kill the root's builders if the uids were the same.
env_args=(CI="${CI:-}" TERM="${TERM:-dumb}" NIX_FIRST_BUILD_UID=30000)
for v in GOPROXY GOSUMDB GONOSUMDB GOPRIVATE GOFLAGS http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
	[ -n "${!v:-}" ] && env_args+=("$v=${!v}")
done

unshare --mount --pid --fork --propagation private /bin/bash -euo pipefail -c '
	root=$1 goroot=$2 what=$3; shift 3
	mount --bind "$root" "$root"
	mount --bind -o ro "$goroot" "$root/usr/local/go"
	mount -o remount,bind,ro "$root/usr/local/go"
	mount -t proc proc "$root/proc"
	mount -t sysfs sysfs "$root/sys"
	mount -t tmpfs -o mode=755 tmpfs "$root/dev"
	for d in null zero full random urandom tty; do
		touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
	done
	mkdir -p "$root/dev/pts" "$root/dev/shm"
	mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
	ln -s pts/ptmx "$root/dev/ptmx"
	mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
	ln -s /proc/self/fd "$root/dev/fd"
	cd "$root"
	mkdir -p .old-root
	pivot_root . .old-root
	cd /
	umount -l /.old-root
	rmdir /.old-root
	exec env -i "$@" /fresh-root-run "$what"
' fresh-root "$root" "$goroot" "$what" "${env_args[@]}"
log "done in $(($(date +%s) - t0)) s"
