#!/usr/bin/env bash
# Make, without a container registry, the Debian base images that deploy/docker/Dockerfile and
# deploy/docker/compose.yml start FROM: debootstrap a tree, `tar | docker import` it.
#
#   runtime  PREFIX/debian:bookworm-slim   debootstrap minbase, trimmed like debian:*-slim
#                                          (stands in for debian:bookworm-slim)
#   rust     PREFIX/rust:VERSION-slim-bookworm
#                                          minbase + gcc, libc6-dev, ca-certificates (what
#                                          rust:*-slim has), THIS machine's Rust toolchain
#                                          (bin and lib of `rustc --print sysroot`) and its
#                                          cargo registry (index + downloaded crates), with
#                                          CARGO_NET_OFFLINE=true: `cargo build --locked`
#                                          works inside a build that has no network, for
#                                          every crate this machine has already downloaded
#                                          (run `cargo fetch` first).
#                                          (stands in for rust:1.95-slim-bookworm)
#   mail     PREFIX/mail:bookworm          minbase + postfix + swaks (for deploy/docker/postfix/)
#   scanner  PREFIX/scanner:bookworm       minbase + clamsmtp, clamav-daemon, iproute2
#                                          (for deploy/docker/scanner/)
#
# Usage (as root; needs debootstrap, docker, GNU tar, and deb.debian.org or --mirror):
#
#   deploy/docker/base-images.sh [--prefix NAME] [--cache DIR] [--mirror URL] [--security URL]
#                         [--refresh] [--label KEY=VALUE]... [runtime] [rust] [mail] [scanner]
#
# --prefix  image names (default portcullis-local)
# --cache   where the debootstrap trees are kept (default target/docker-base)
# --mirror  Debian mirror (default $DEBIAN_MIRROR, else http://deb.debian.org/debian);
#           it must also serve bookworm-updates. http_proxy is honoured.
# --security  Debian security mirror (default http://deb.debian.org/debian-security)
# --label   added to every image (and so to every image built FROM them)
#
# Without image kinds it makes all four. On standard output it prints, for each image
# made, a line for the build (usable with `eval`, or as deploy/docker/.env for compose):
#
#   RUNTIME_IMAGE=portcullis-local/debian:bookworm-slim
#   RUST_IMAGE=portcullis-local/rust:1.95.0-slim-bookworm
#   MAIL_IMAGE=portcullis-local/mail:bookworm
#   SCANNER_IMAGE=portcullis-local/scanner:bookworm
#
# Each tree gets bookworm-updates and bookworm-security (apt sources like
# debian:bookworm-slim's) and is upgraded from them. The trees (and the downloaded
# .debs) are kept in --cache (default target/docker-base in this repository); a tree
# older than 7 days, or any with --refresh, is debootstrapped again, for Debian's
# updates.
#
# An image is made again only when what it is made of changed: each carries the label
# portcullis.base-images.inputs, a hash of this script, the suite, mirrors, packages
# asked for, --label values and (rust) the toolchain and the list of downloaded crates,
# together with the tree's installed package versions. A run that finds the image
# already carrying its hash, less than 7 days old (and no --refresh), touches nothing:
# no debootstrap, no import, the same image ID, so `docker build` and `compose up
# --build` FROM it keep their layer cache. A refreshed tree with the same package
# versions keeps the image too. Replacing an image deletes the one it replaces unless
# something still uses it (then `docker image prune` removes it once unused).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
prefix=portcullis-local
cache=$repo/target/docker-base
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=http://deb.debian.org/debian-security
suite=bookworm
refresh=0
labels=()
kinds=()

die() {
    echo "base-images: $*" >&2
    exit 1
}
log() { echo "base-images: $*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=${2:?--prefix needs a name}; shift 2 ;;
        --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
        --mirror) mirror=${2:?--mirror needs a URL}; shift 2 ;;
        --security) security=${2:?--security needs a URL}; shift 2 ;;
        --label) labels+=("${2:?--label needs KEY=VALUE}"); shift 2 ;;
        --refresh) refresh=1; shift ;;
        runtime | rust | mail | scanner) kinds+=("$1"); shift ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[ ${#kinds[@]} -gt 0 ] || kinds=(runtime rust mail scanner)

[ "$(id -u)" = 0 ] || die "debootstrap needs root"
for tool in debootstrap docker tar chroot mount flock; do
    command -v $tool >/dev/null || die "$tool is not installed"
done
mkdir -p "$cache"
cache=$(cd "$cache" && pwd) # debootstrap wants an absolute --cache-dir
# One run at a time per cache: another would delete a tree this one is reading.
exec 9>"$cache/.lock"
flock -n 9 || { log "waiting for another run using $cache"; flock 9; }

# Whatever is still mounted under DIR (proc in a tree, or what an interrupted
# debootstrap left): unmounted, deepest first, so the tree can be deleted.
unmount_under() {
    local m
    case $1 in "$cache"/?*) ;; *) die "unmount_under: $1 is not a tree under $cache" ;; esac
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" || true
    done
}

# tree NAME PACKAGES: a minbase tree with PACKAGES (comma-separated) in $cache/NAME,
# debootstrapped only if the cached one is missing, unfinished or made with other packages.
tree() {
    local name=$1 include=$2
    local dir=$cache/$name stamp=$cache/$name.done
    local key="debootstrap --variant=minbase --include=$include $suite $mirror + $security"
    if [ $refresh = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] &&
        [ -z "$(find "$stamp" -mtime +7)" ]; then
        log "$name: cached tree $dir"
        return
    fi
    unmount_under "$dir"
    rm -rf "$dir" "$stamp"
    # One package cache per tree: the trees are made at the same time.
    mkdir -p "$cache/debs-$name"
    log "$name: $key (log: $cache/$name.log)"
    local start=$SECONDS
    if ! debootstrap --variant=minbase ${include:+--include="$include"} --cache-dir="$cache/debs-$name" \
        "$suite" "$dir" "$mirror" >"$cache/$name.log" 2>&1; then
        tail -n 25 "$cache/$name.log" >&2
        die "debootstrap of $name failed (whole log: $cache/$name.log)"
    fi
    if ! upgrade "$dir" >>"$cache/$name.log" 2>&1; then
        tail -n 25 "$cache/$name.log" >&2
        die "upgrading $name from $suite-updates and $suite-security failed (whole log: $cache/$name.log)"
    fi
    slim "$dir"
    echo "$key" >"$stamp"
    log "$name: debootstrap took $((SECONDS - start)) s"
}

# The apt sources of debian:bookworm-slim, and the updates from them.
upgrade() {
    local dir=$1 status=0
    if [ -z "$dir" ] || [ ! -d "$dir/etc/apt" ]; then die "upgrade: $dir is not a tree"; fi
    # This runs in the tree's own subshell: if it is killed, proc is unmounted all the
    # same. ($dir is expanded now, on purpose: it is local to this function.)
    # shellcheck disable=SC2064
    trap "unmount_under '$dir'" EXIT
    rm -f "$dir/etc/apt/sources.list"
    cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    mount -t proc proc "$dir/proc"
    chroot "$dir" apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get dist-upgrade -y -q -o Dpkg::Options::=--force-confold ||
        status=$?
    umount "$dir/proc"
    return $status
}

# What debian:*-slim leaves out (its dpkg and apt settings, copied here): documentation,
# manual pages, translations, apt's caches and package lists.
slim() {
    local dir=$1
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$dir/etc/apt/apt.conf.d/docker-no-languages"
    echo 'APT::Install-Recommends "false";' >"$dir/etc/apt/apt.conf.d/docker-no-recommends"
    find "$dir/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
    find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$dir"/usr/share/{man,groff,info,lintian,linda}/*
    find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    rm -f "$dir"/var/log/bootstrap.log "$dir"/var/log/dpkg.log "$dir"/var/log/alternatives.log
    rm -f "$dir"/var/log/apt/*
    # The build machine's name and resolver are not the image's (Docker provides both).
    : >"$dir/etc/hostname"
    rm -f "$dir/etc/resolv.conf"
}

base_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
input_label=portcullis.base-images.inputs
# Any change to this script makes every image again.
script_sum=$(sha256sum "$0" | cut -d' ' -f1)

# Checked before anything is made.
if [[ " ${kinds[*]} " == *" rust "* ]]; then
    rustc=${RUSTC:-rustc}
    command -v "$rustc" >/dev/null || die "rustc is not installed (the rust image carries this machine's toolchain)"
    sysroot=$("$rustc" --print sysroot)
    version=$("$rustc" --version | awk '{print $2}')
    toolchain=$(basename "$sysroot")
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    if [ ! -d "$cargo_home/registry/index" ] || [ ! -d "$cargo_home/registry/cache" ]; then
        die "no cargo registry in $cargo_home/registry (run cargo fetch in the project first)"
    fi
    # What the rust image takes from this machine: the toolchain (its version, and its
    # files by name and size) and the registry (which crates are downloaded; the index
    # holds whatever they need).
    rust_inputs="$("$rustc" -vV)
sysroot $sysroot $(cd "$sysroot" && find bin lib -printf '%p %s\n' | LC_ALL=C sort | sha256sum)
registry $(cd "$cargo_home/registry" && { ls index; find cache -name '*.crate' -printf '%p %s\n'; } | LC_ALL=C sort | sha256sum)"
fi

# spec KIND: the image of KIND, in name, var (its line on standard output), changes
# (docker import --change), tar_extra (more for tar to put in) and extra (more inputs).
spec() {
    changes=('CMD ["bash"]')
    for l in "${labels[@]+"${labels[@]}"}"; do changes+=("LABEL $l"); done
    tar_extra=()
    extra=
    case $1 in
    runtime)
        name=$prefix/debian:$suite-slim var=RUNTIME_IMAGE
        changes+=("ENV PATH=$base_path")
        ;;
    rust)
        name=$prefix/rust:$version-slim-$suite var=RUST_IMAGE
        # The toolchain goes where rust:*-slim has it (RUSTUP_HOME=/usr/local/rustup), the
        # registry into CARGO_HOME=/usr/local/cargo; tar renames them on the way (the
        # tree's own members all start with "./", so the patterns cannot touch them).
        local tc=usr/local/rustup/toolchains/$toolchain
        changes+=("ENV RUSTUP_HOME=/usr/local/rustup" "ENV CARGO_HOME=/usr/local/cargo"
            "ENV PATH=/usr/local/cargo/bin:/$tc/bin:$base_path" "ENV RUST_VERSION=$version"
            "ENV CARGO_NET_OFFLINE=true")
        tar_extra=(--transform="s,^bin,$tc/bin,S" --transform="s,^lib,$tc/lib,S"
            --transform="s,^registry,usr/local/cargo/registry,S"
            -C "$sysroot" bin lib -C "$cargo_home" registry/index registry/cache)
        extra=$rust_inputs
        ;;
    mail)
        name=$prefix/mail:$suite var=MAIL_IMAGE
        changes+=("ENV PATH=$base_path")
        ;;
    scanner)
        name=$prefix/scanner:$suite var=SCANNER_IMAGE
        changes+=("ENV PATH=$base_path")
        ;;
    esac
}

# request KIND (after spec KIND): a hash of what the image is asked to be made of,
# known before its tree is made; the label is "REQUEST-TREE", TREE a hash of the
# tree's installed packages (dpkg's status: their names and versions).
request() {
    { echo "$script_sum $1 $suite $mirror $security ${packages[$1]} $name"
      printf '%s\n' "${changes[@]}" "$extra"; } | sha256sum | cut -c1-16
}

# The inputs label of image NAME ("" if there is no such image).
inputs_of() {
    docker image inspect -f "{{index .Config.Labels \"$input_label\"}}" "$1" 2>/dev/null || true
}

# up_to_date NAME REQUEST: the image exists, was made from REQUEST and less than 7
# days ago (after that, its tree is made again for Debian's updates).
up_to_date() {
    local have created
    have=$(inputs_of "$1")
    [ "${have%-*}" = "$2" ] || return 1
    created=$(docker image inspect -f '{{.Created}}' "$1") || return 1
    [ $(($(date +%s) - $(date -d "$created" +%s))) -lt $((7 * 86400)) ]
}

# import KIND REQUEST (after spec KIND): tar the tree of KIND (and tar_extra) into the
# image, unless the image there was made of the same inputs.
import() {
    local dir=$cache/$1 inputs
    inputs=$2-$(sha256sum <"$dir/var/lib/dpkg/status" | cut -c1-16)
    if [ "$(inputs_of "$name")" = "$inputs" ]; then
        log "$name: made of the same inputs ($inputs): kept"
        return
    fi
    local args=() c
    for c in "${changes[@]}" "LABEL $input_label=$inputs"; do args+=(--change "$c"); done
    local old
    old=$(docker image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)
    local start=$SECONDS
    # --exclude: the device nodes debootstrap may have made (Docker mounts its own /dev).
    # tar's status 1 is "a file changed as we read it" (cargo downloading into the
    # registry meanwhile): what was read is still whole.
    set +e +o pipefail
    tar -c --numeric-owner --warning=no-file-changed --exclude='./dev/*' -C "$dir" . "${tar_extra[@]+"${tar_extra[@]}"}" |
        docker import "${args[@]}" - "$name" >/dev/null
    local status=("${PIPESTATUS[@]}")
    set -e -o pipefail
    [ "${status[0]}" -le 1 ] || die "tar for $name failed (status ${status[0]})"
    [ "${status[1]}" = 0 ] || die "docker import of $name failed"
    if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$name")" ]; then
        docker rmi "$old" >/dev/null 2>&1 || log "$name: the image it replaces ($old) is still used: kept"
    fi
    log "$name: imported in $((SECONDS - start)) s (inputs $inputs)"
}

declare -A packages=([runtime]="" [rust]="ca-certificates,gcc,libc6-dev" [mail]="postfix,swaks,ca-certificates"
    [scanner]="clamsmtp,clamav-daemon,iproute2")

# Which images are to be made (or checked against their trees): those not up to date.
declare -A requests
todo=()
for kind in "${kinds[@]}"; do
    spec "$kind"
    requests[$kind]=$(request "$kind")
    if [ $refresh = 0 ] && up_to_date "$name" "${requests[$kind]}"; then
        log "$name: up to date (inputs $(inputs_of "$name")): kept, no tree needed"
    else
        todo+=("$kind")
    fi
done

# Their trees, all at once (each in a subshell of its own; its log says what went wrong).
pids=()
for kind in "${todo[@]+"${todo[@]}"}"; do
    tree "$kind" "${packages[$kind]}" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]+"${pids[@]}"}"; do
    wait "$pid" || failed=1
done
[ $failed = 0 ] || die "a tree could not be made (see above)"

for kind in "${kinds[@]}"; do
    spec "$kind"
    if [[ " ${todo[*]+"${todo[*]}"} " == *" $kind "* ]]; then
        import "$kind" "${requests[$kind]}"
    fi
    echo "$var=$name"
done
