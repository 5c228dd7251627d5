#!/bin/sh
# Copies iptables into OUT for ward's distroless image: the tools `ward init`
# runs (src/intercept/backend.rs: {ip,ip6}tables-{nft,legacy}-{save,restore}),
# the xtables multi-call binaries behind them, the extension modules they
# load (-m owner, -j REDIRECT, ...) and every shared library those need,
# except glibc and libgcc, which the runtime image (distroless/cc) has.
# Runs in the Dockerfile's Debian stage, and in tests/deploy_image.rs.
set -eu

out=${1:?usage: iptables-rootfs.sh OUT}
sbin=/usr/sbin
tools="iptables-nft-save iptables-nft-restore ip6tables-nft-save ip6tables-nft-restore
iptables-legacy-save iptables-legacy-restore ip6tables-legacy-save ip6tables-legacy-restore"

# Provided by distroless/cc (libc6, libgcc-s1): never copied, so the image
# has one glibc.
in_base() {
    case "$(basename "$1")" in
        libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | \
            ld-linux*.so.* | libgcc_s.so.*) return 0 ;;
        *) return 1 ;;
    esac
}

# copy_real PATH: the file PATH resolves to, at its real path under OUT.
copy_real() {
    real=$(readlink -f "$1")
    mkdir -p "$out$(dirname "$real")"
    cp -p "$real" "$out$real"
}

mkdir -p "$out$sbin"
for tool in $tools; do
    [ -e "$sbin/$tool" ] || { echo "iptables-rootfs: $sbin/$tool is missing" >&2; exit 1; }
    copy_real "$sbin/$tool"
    # Tools are symlinks to a multi-call binary that dispatches on its name.
    ln -sf "$(basename "$(readlink -f "$sbin/$tool")")" "$out$sbin/$tool"
done

# Extension modules, wherever this architecture keeps them.
modules=$(dirname "$(find /usr/lib -name libxt_standard.so -print -quit)")
[ "$modules" != . ] || { echo "iptables-rootfs: no xtables modules found" >&2; exit 1; }
mkdir -p "$out$modules"
cp -p "$modules"/*.so "$out$modules/"

# Every library the binaries and modules link, under its soname, at the
# real directory (Debian's /lib is a symlink to /usr/lib).
for elf in "$out$sbin"/xtables-*-multi "$out$modules"/*.so; do
    ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r soname path; do
    in_base "$soname" && continue
    dir=$(dirname "$(readlink -f "$path")")
    mkdir -p "$out$dir"
    cp -pL "$path" "$out$dir/$soname"
done

# getprotobyname("tcp") reads /etc/protocols.
mkdir -p "$out/etc"
cp -p /etc/protocols "$out/etc/protocols"
