# shellcheck shell=bash
# Shared helpers of the field lab (sourced by lab/field.sh): messages, loud skips, waits on observable events,
# cleanup registry, cached debootstrap roots, the host's pip configuration. Owns nothing outside $CACHE and the
# mounts, processes and binfmt entries it registers for cleanup.

say() { echo "[lab $(date -u +%H:%M:%S)] $*"; }
die() { echo "[lab] ERROR: $*" >&2; exit 1; }
# a part that cannot run on this machine: loud, and a failure under CI=true (main maps 77)
cannot() { echo "[lab] CANNOT RUN: $*" >&2; exit 77; }
result() { printf '%-10s %-34s %s\n' "$1" "$2" "$3" | tee -a "$LOGDIR/results"; }
check() { echo "[lab $(date -u +%H:%M:%S)]   ok: $*"; }
fail() { echo "[lab]   FAILED: $*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every second until it succeeds; fail naming what did not happen
wait_for() {
    local limit="$1" what="$2"; shift 2
    local t0; t0=$(date +%s)
    while ! "$@" >/dev/null 2>&1; do
        if [ $(( $(date +%s) - t0 )) -ge "$limit" ]; then
            fail "waited ${limit}s for: $what"
        fi
        sleep 1
    done
    echo "[lab $(date -u +%H:%M:%S)]   after $(( $(date +%s) - t0 ))s: $what"
}

# -- cleanup: every mount, process and binfmt entry is registered here the moment it exists ---------------------------
# each part has its own list (CLEANUP_LIST, set by field.sh), so parts can run side by side
on_cleanup() { echo "$*" >>"${CLEANUP_LIST:-$LOGDIR/cleanup}"; }
run_cleanups() {
    local list="${1:-${CLEANUP_LIST:-$LOGDIR/cleanup}}"
    [ -f "$list" ] || return 0
    local cmd
    # newest first
    tac "$list" | while IFS= read -r cmd; do
        eval "$cmd" >>"$LOGDIR/cleanup.log" 2>&1 || echo "[lab] cleanup step failed: $cmd" >&2
    done
    rm -f "$list"
}
cleanup_part() { run_cleanups; }
cleanup() {
    local rc=$? list
    for list in "$LOGDIR"/cleanup*; do
        case "$list" in *.log) continue ;; esac
        [ -f "$list" ] && run_cleanups "$list"
    done
    # belt and braces: nothing of ours may stay mounted under the cache
    local m
    for m in $(awk -v c="$CACHE/run/" 'index($2, c) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null && echo "[lab] unmounted leftover $m" >&2
    done
    return $rc
}
# kill_tree PID: the process and its descendants (by pid, never by name)
kill_tree() {
    local pid="$1" sig="${2:-TERM}" c
    for c in $(pgrep -P "$pid" 2>/dev/null); do kill_tree "$c" "$sig"; done
    kill "-$sig" "$pid" 2>/dev/null || true
}

# -- packages on the host ------------------------------------------------------------------------------------------
need_host_packages() {
    local need="" p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
    [ -z "$need" ] && return 0
    say "installing on the host:$need"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null; }; then
        cannot "apt-get install$need failed"
    fi
}

mirror() {
    if [ -n "${EDGE_AGENT_LAB_MIRROR:-}" ]; then echo "$EDGE_AGENT_LAB_MIRROR"; return; fi
    local m
    m=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | head -n 1 | awk '{print $2}')
    echo "${m:-http://deb.debian.org/debian}"
}

# cached_root DST KEY: prints DST and succeeds when the root there was built for KEY (its .lab-root)
cached_root() {
    [ -f "$1/.lab-root" ] && [ "$(cat "$1/.lab-root")" = "$2" ] || return 1
    echo "[lab] cached root $1" >&2
    echo "$1"
}

# build_root NAME ARCH PACKAGES [BUILDER]: a cached minbase root at $CACHE/roots/NAME (rebuilt when the package list
# changes); prints its path. BUILDER: debootstrap (default) or mmdebstrap (one apt/dpkg run: ~1 min instead of ~4)
build_root() {
    local name="$1" arch="$2" pkgs="$3" builder="${4:-debootstrap}"
    local dst="$CACHE/roots/$name" key="$SUITE $arch $pkgs"
    cached_root "$dst" "$key" && return 0
    local tmp="$dst.building"
    rm -rf "$tmp" "$dst"
    mkdir -p "$tmp"
    on_cleanup "for m in \$(awk -v c='$tmp/' 'index(\$2, c) == 1 {print \$2}' /proc/mounts | sort -r); do umount -l \$m; done"
    say "$builder $SUITE $arch into $tmp (minutes; log $LOGDIR/$builder-$name.log)" >&2
    local ok=0
    if [ "$builder" = mmdebstrap ]; then
        rmdir "$tmp"  # mmdebstrap wants to create it (or find it empty)
        mmdebstrap --variant=minbase --arch="$arch" --include="$pkgs" "$SUITE" "$tmp" "$(mirror)" \
            >"$LOGDIR/$builder-$name.log" 2>&1 || ok=$?
    else
        debootstrap --variant=minbase --arch="$arch" --include="$pkgs" "$SUITE" "$tmp" "$(mirror)" \
            >"$LOGDIR/$builder-$name.log" 2>&1 || ok=$?
    fi
    if [ "$ok" -ne 0 ]; then
        tail -n 20 "$LOGDIR/$builder-$name.log" >&2
        die "$builder of $name failed (log $LOGDIR/$builder-$name.log)"
    fi
    # a minbase root has no /etc/hosts: the agent could not resolve localhost
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tedge-lab\n' >"$tmp/etc/hosts"
    echo edge-lab >"$tmp/etc/hostname"
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    echo "$key" >"$tmp/.lab-root"
    mv "$tmp" "$dst"
    echo "$dst"
}

# extract_root NAME ARCH PACKAGES: a cached root at $CACHE/roots/NAME holding PACKAGES and their dependencies, only
# unpacked (mmdebstrap --variant=extract: no maintainer script runs, so a foreign architecture needs no emulation to
# build it: ~30 s instead of ~20 min of debootstrap's second stage under qemu-user); prints its path. Enough to run
# programs in it, not to boot it: the accounts, hosts and CA bundle that postinst scripts would make are written here.
extract_root() {
    local name="$1" arch="$2" pkgs="$3"
    local dst="$CACHE/roots/$name" key="extract $SUITE $arch $pkgs"
    cached_root "$dst" "$key" && return 0
    local tmp="$dst.building"
    rm -rf "$tmp" "$dst"
    say "mmdebstrap --variant=extract $SUITE $arch into $tmp (log $LOGDIR/mmdebstrap-$name.log)" >&2
    if ! mmdebstrap --variant=extract --arch="$arch" --include="$pkgs" "$SUITE" "$tmp" "$(mirror)" \
            >"$LOGDIR/mmdebstrap-$name.log" 2>&1; then
        tail -n 20 "$LOGDIR/mmdebstrap-$name.log" >&2
        die "mmdebstrap of $name failed (log $LOGDIR/mmdebstrap-$name.log)"
    fi
    printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$tmp/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
    mkdir -p "$tmp/root" "$tmp/tmp" "$tmp/etc/ssl/certs"
    chmod 1777 "$tmp/tmp"
    cp -L /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/" 2>/dev/null || true
    echo "$key" >"$tmp/.lab-root"
    mv "$tmp" "$dst"
    echo "$dst"
}

# host_pip: a pip of the lab's own on the host ($CACHE/hostpip, current pip), for wheels of another architecture
host_pip() {
    local v="$CACHE/hostpip"
    if [ ! -x "$v/bin/pip" ]; then
        python3 -m venv "$v" >&2 || cannot "python3 -m venv failed on the host (apt-get install python3-venv)"
        "$v/bin/python" -m pip install -q --upgrade pip >&2 || cannot "cannot upgrade pip in $v"
    fi
    echo "$v/bin/python -m pip"
}

# fresh_clone DST: a clone of this repository at its current commit (what install.sh installs from)
fresh_clone() {
    local dst="$1"
    rm -rf "$dst"
    git clone -q --no-checkout "$REPO" "$dst"
    git -C "$dst" checkout -q "$(git -C "$REPO" rev-parse HEAD)"
    if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
        echo "[lab] note: $REPO has uncommitted changes; the lab installs the last commit $(git -C "$REPO" rev-parse --short HEAD)" >&2
    fi
}

# copy_pip_config ROOT: pip inside ROOT as the host's pip: CA bundle, pip.conf files, PIP_* variables; prints the
# directories the configuration refers to (find-links, file:// indexes) that must be bind-mounted read-only
copy_pip_config() {
    local root="$1" f d
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt \
             "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [ -f "$f" ] || continue
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
    done
    [ "$HOME" = /root ] || { mkdir -p "$root/root/.config/pip"; [ -f "$HOME/.config/pip/pip.conf" ] && cp "$HOME/.config/pip/pip.conf" "$root/root/.config/pip/"; }
    # PIP_* variables as a config file, so every pip inside the root (install.sh's too) sees them
    {
        echo "[global]"
        env | grep -E '^PIP_[A-Z_]+=' | while IFS='=' read -r k v; do
            k="${k#PIP_}"; k="${k,,}"; echo "${k//_/-} = $v"
        done
    } >"$root/etc/pip-lab.conf"
    # referenced local directories
    cat /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$root/etc/pip-lab.conf" 2>/dev/null \
        | grep -oE '(file://)?/[^ ]+' | sed 's|^file://||' | while read -r d; do
            d="${d%/simple}"
            [ -d "$d" ] && echo "$d"
        done | sort -u
}
