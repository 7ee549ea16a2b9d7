# Installs what reprise's lab and tests need on a fresh Debian machine (as root), skipping
# what is already there. Sourced by demo.sh and test.sh.
apt_install() {
    if [ -z "${REPRISE_APT_UPDATED:-}" ]; then
        apt-get update -q
        REPRISE_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
need() {
    # need CMD PACKAGE: install PACKAGE when CMD is missing.
    local cmd=$1 pkg=$2
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        if [ -z "${REPRISE_APT_UPDATED:-}" ]; then
            apt-get update -q
            REPRISE_APT_UPDATED=1
        fi
        echo "installing $pkg (for $cmd)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg"
    fi
}
need_lib() {
    # need_lib PKGCONFIG-NAME PACKAGE: install a -dev package the build needs.
    local name=$1 pkg=$2
    if ! pkg-config --exists "$name" 2>/dev/null; then
        need pkg-config pkg-config
        if [ -z "${REPRISE_APT_UPDATED:-}" ]; then
            apt-get update -q
            REPRISE_APT_UPDATED=1
        fi
        echo "installing $pkg (for the build)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg"
    fi
}
need pkg-config pkg-config
need_lib openssl libssl-dev
need qemu-img qemu-utils
need sshd openssh-server
need ssh-keygen openssh-client
need ssh openssh-client
need rsync rsync
# A recovery helper is killed at exact writes by strace (its syscall fault injection).
need strace strace
# The https health-check tests make a certificate authority and serve TLS with openssl.
need openssl openssl
# The schedule tests check the generated units with systemd-analyze (nothing is started).
need systemd-analyze systemd
# The metrics test parses `status --format prometheus` with Prometheus's own Python parser
# (Debian's python3 and its package).
if ! /usr/bin/python3 -c 'import prometheus_client.parser' 2>/dev/null; then
    echo "installing python3-prometheus-client (for the metrics test)"
    apt_install python3 python3-prometheus-client
fi
# The report's PDF and its rendering test: headless Chromium, pdftotext, and a font.
need chromium chromium
need pdftotext poppler-utils
if [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    echo "installing fonts-dejavu-core (for the report's PDF)"
    apt_install fonts-dejavu-core
fi
