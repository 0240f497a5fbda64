#!/usr/bin/env bash
# Checks the Debian package built by dist/package.sh as a distribution would, on this
# machine (as root: CI): its contents, lintian (no errors), that it is reproducible,
# that it installs (binaries answer --version with this commit, the units pass
# systemd-analyze verify, the completions load in bash, the man pages render, the
# system user exists), and that purging it leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "test-deb: $*" >&2; exit 1; }

deb=$(ls target/debian/letstalk_*.deb)
[ "$(echo "$deb" | wc -l)" -eq 1 ] || fail "expected one package in target/debian, found: $deb"

echo "== contents"
dpkg-deb -c "$deb"
files=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' | grep -v '/$')
for want in /usr/bin/letstalkd /usr/bin/letstalk /usr/bin/letstalk-relay \
    /usr/bin/letstalk-tui /usr/bin/letstalk-notify \
    /usr/lib/systemd/user/letstalkd.service /usr/lib/systemd/user/letstalkd.socket \
    /usr/lib/systemd/user/letstalk-notify.service /usr/share/man/man1/letstalk-tui.1.gz \
    /usr/share/man/man1/letstalk-notify.1.gz \
    /usr/lib/systemd/system/letstalkd-system.service /usr/lib/systemd/system/letstalk-relay.service \
    /usr/lib/sysusers.d/letstalk.conf /usr/lib/tmpfiles.d/letstalk.conf \
    /usr/share/man/man1/letstalk.1.gz /usr/share/man/man1/letstalkd.1.gz \
    /usr/share/bash-completion/completions/letstalk /usr/share/zsh/vendor-completions/_letstalk \
    /usr/share/fish/vendor_completions.d/letstalk.fish \
    /usr/share/doc/letstalk/copyright /usr/share/doc/letstalk/changelog.Debian.gz; do
    echo "$files" | grep -qx "$want" || fail "$want is not in the package"
done

echo "== lintian"
lintian --fail-on error --tag-display-limit 0 "$deb"

echo "== reproducible"
first=$(sha256sum < "$deb")
mv "$deb" "$deb.first"
./dist/package.sh >/dev/null
again=$(sha256sum < "$deb")
rm "$deb.first"
[ "$first" = "$again" ] || fail "two builds of the same source differ"

echo "== install"
dpkg -i "$deb"
commit=$(git rev-parse --short=12 HEAD)
for p in letstalkd letstalk letstalk-relay letstalk-tui letstalk-notify; do
    v=$("$p" --version)
    echo "$v"
    echo "$v" | grep -qx "$p [0-9.]* ($commit)" || fail "$p --version does not name $commit: $v"
done
getent passwd letstalk >/dev/null || fail "systemd-sysusers did not create the letstalk user"
runtime=$(mktemp -d)
chmod 700 "$runtime"
check_verify() {
    local out
    out=$(XDG_RUNTIME_DIR="$runtime" SYSTEMD_LOG_COLOR=0 systemd-analyze "$@" 2>&1) \
        || fail "systemd-analyze $* failed: $out"
    if echo "$out" | grep -q "letstalk"; then fail "systemd-analyze $* complained: $out"; fi
}
check_verify verify /usr/lib/systemd/system/letstalkd-system.service \
    /usr/lib/systemd/system/letstalkd-system.socket /usr/lib/systemd/system/letstalk-relay.service
check_verify --user verify /usr/lib/systemd/user/letstalkd.service /usr/lib/systemd/user/letstalkd.socket \
    /usr/lib/systemd/user/letstalk-notify.service
rm -rf "$runtime"
for f in /usr/share/bash-completion/completions/letstalk*; do
    bash -n "$f" || fail "$f is not valid bash"
done
bash -c 'source /usr/share/bash-completion/completions/letstalk && complete -p letstalk' >/dev/null \
    || fail "the bash completion does not register for letstalk"
for page in letstalk letstalkd letstalk-relay letstalk-tui letstalk-notify; do
    out=$(MANWIDTH=80 man -l "/usr/share/man/man1/$page.1.gz" 2>&1 | col -b)
    echo "$out" | grep -q "$page" || fail "man $page did not render: $out"
done

echo "== purge"
dpkg --purge letstalk
for f in $files; do
    [ ! -e "$f" ] || fail "$f is left after purge"
done
left=$(find /etc/systemd -name 'letstalk*' 2>/dev/null)
[ -z "$left" ] || fail "left after purge: $left"
echo "test-deb: the package builds, installs, works and purges cleanly"
