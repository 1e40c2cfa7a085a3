# The store paths bench/cache.sh serves: `small` paths of a few KiB each and
# one large path. Plain derivations (no nixpkgs), /bin/sh as the builder.
# Input-addressed with fixed names, so the store paths are the same on every
# run and nix-build rebuilds only what is missing from the store.
#
# Small path i is a directory with a slice of a real ELF binary (bin/), a
# text file (share/doc/) and, for i > 0, a reference to small path i/8 (a
# tree of depth ~4), so narinfos carry References like real ones do.
#
# The large path is one file: the first `largeMiB` MiB of the regular files
# under /usr/lib, /usr/bin and /usr/share (sorted by name, concatenated), i.e.
# real ELF objects and text that zstd compresses the way store contents do,
# not random bytes. Its bytes depend on what this machine has installed; its
# store path does not.
{ small ? 1000, largeMiB ? 256, system ? builtins.currentSystem }:
let
  sh = "/bin/sh";
  path = "/usr/bin:/bin";
  pad = i: let s = toString i; in
    builtins.substring 0 (4 - builtins.stringLength s) "0000" + s;
  mkSmall = i: derivation ({
    name = "cf-bench-small-${pad i}";
    inherit system;
    builder = sh;
    PATH = path;
    idx = i;
    args = [ "-c" ''
      set -e
      mkdir -p $out/bin $out/share/doc $out/nix-support
      # 1-4.5 KiB of /bin/bash starting at an index-dependent offset.
      size=$(( 1024 + (idx * 37) % 3584 ))
      off=$(( (idx * 4096) % ($(wc -c < /bin/bash) - 8192) ))
      tail -c +$(( off + 1 )) /bin/bash | head -c $size > $out/bin/tool-$idx
      [ -s $out/bin/tool-$idx ]
      chmod +x $out/bin/tool-$idx
      {
        echo "cf-bench-small-$idx: a small store path for bench/cache.sh."
        head -c $(( 512 + (idx * 53) % 1536 )) /usr/share/common-licenses/GPL-3
      } > $out/share/doc/README
      if [ -n "$dep" ]; then echo "$dep" > $out/nix-support/deps; fi
    '' ];
  } // { dep = if i > 0 then builtins.elemAt smalls (i / 8) else ""; });
  smalls = builtins.genList mkSmall small;
  large = derivation {
    name = "cf-bench-large";
    inherit system;
    builder = sh;
    PATH = path;
    bytes = largeMiB * 1024 * 1024;
    args = [ "-c" ''
      set -e
      find /usr/lib /usr/bin /usr/share -type f -size +0 -print0 2>/dev/null \
        | LC_ALL=C sort -z | xargs -0 cat 2>/dev/null | head -c $bytes > $out || true
      [ "$(wc -c < $out)" -eq "$bytes" ]
    '' ];
  };
in smalls ++ [ large ]
