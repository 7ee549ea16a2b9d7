# Installs what the real-hypervisor tests (tests/it/hv) need on a fresh Debian machine (as root),
# skipping what is there: libvirt's daemon and clients, QEMU, virt-xml (replicate-end), a static
# busybox and OVMF for the tiny guests, iptables and dnsmasq for libvirt's networks (they run
# only inside the tests' network namespaces), and a stock kernel for the guests, unpacked into
# /var/cache/reprise-it/guest-kernel (no kernel is installed on the machine). Sourced by test.sh
# after prereqs.sh (whose apt_install it uses). No daemon is started here: the tests start their
# own, in namespaces of their own.

# QEMU's system emulator must come from the suite the machine's qemu-utils comes from (mixed
# versions do not install together): when that is the backports suite, it is added for that one
# install, through a sources file and package lists of our own; the machine's sources are left
# as they are.
hv_install_qemu() {
    local version codename uri dir
    version=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || true)
    if [[ "$version" != *~bpo* ]]; then
        apt_install qemu-system-x86
        return
    fi
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    uri=$(apt-cache policy | awk -v s="$codename/main" '$3 == s && !n++ {print $2}')
    if [ -z "$uri" ]; then
        echo "error: qemu-utils $version comes from $codename-backports, but apt knows no $codename/main archive to take qemu-system-x86 from there" >&2
        return 1
    fi
    dir=/var/lib/reprise-it/apt
    mkdir -p "$dir/lists/partial"
    echo "deb $uri $codename-backports main" > "$dir/backports.list"
    local opts=(-o "Dir::Etc::sourcelist=$dir/backports.list" -o "Dir::State::Lists=$dir/lists")
    echo "installing qemu-system-x86 from $codename-backports (as qemu-utils $version)"
    apt-get -q "${opts[@]}" update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${opts[@]}" \
        -t "$codename-backports" qemu-system-x86
}

hv_prereqs() {
    local pkgs=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || hv_install_qemu
    [ -x /usr/sbin/libvirtd ] || pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu)
    command -v virsh >/dev/null 2>&1 || pkgs+=(libvirt-clients)
    command -v virt-xml >/dev/null 2>&1 || pkgs+=(virtinst)
    # The guest's initramfs carries /bin/busybox: it must be the static one.
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || pkgs+=(busybox-static)
    [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || pkgs+=(ovmf)
    [ -x /usr/sbin/iptables ] || pkgs+=(iptables)
    [ -x /usr/sbin/dnsmasq ] || pkgs+=(dnsmasq-base)
    command -v xz >/dev/null 2>&1 || pkgs+=(xz-utils)
    if [ ${#pkgs[@]} -gt 0 ]; then
        echo "installing ${pkgs[*]} (for the real-hypervisor tests)"
        apt_install "${pkgs[@]}"
    fi
    hv_guest_kernel
}

# The guest's kernel: the vmlinuz of Debian's linux-image-amd64 and the few modules the tiny
# guest loads, taken out of the package (downloaded with apt-get download, not installed).
hv_guest_kernel() {
    local dir=/var/cache/reprise-it/guest-kernel
    local modules=(drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
        drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/block/virtio_blk
        net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/acpi/button
        drivers/input/evdev)
    local ok=1 m
    [ -s "$dir/vmlinuz" ] && [ -s "$dir/vmlinux" ] || ok=
    for m in "${modules[@]}"; do [ -s "$dir/modules/${m##*/}.ko" ] || ok=; done
    [ -n "$ok" ] && return 0
    if [ -z "${REPRISE_APT_UPDATED:-}" ]; then
        apt-get update -q
        REPRISE_APT_UPDATED=1
    fi
    local image tmp
    image=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ && !n++ {print $2}')
    if [ -z "$image" ]; then
        echo "error: apt knows no kernel package behind linux-image-amd64 (for the real-hypervisor tests' guest)" >&2
        return 1
    fi
    echo "downloading $image (the real-hypervisor tests' guest kernel; not installed)"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q "$image" 2>&1 | grep -v unsandboxed) || true
    local deb
    deb=$(find "$tmp" -maxdepth 1 -name '*.deb' -print -quit)
    if [ -z "$deb" ]; then
        rm -rf "$tmp"
        echo "error: apt-get download $image failed" >&2
        return 1
    fi
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*' \
        $(for m in "${modules[@]}"; do echo "./lib/modules/*/kernel/$m.ko"; done)
    rm -rf "$dir"
    mkdir -p "$dir/modules"
    cp "$tmp"/boot/vmlinuz-* "$dir/vmlinuz"
    for m in "${modules[@]}"; do cp "$tmp"/lib/modules/*/kernel/"$m".ko "$dir/modules/"; done
    # The kernel uncompressed (its ELF, booted through its PVH entry point): under QEMU's TCG,
    # decompressing the xz bzImage takes most of a BIOS guest's boot.
    local offset
    offset=$(LC_ALL=C grep -obUa $'\xfd''7zXZ' "$dir/vmlinuz" | cut -d: -f1 | sed -n 1p)
    if [ -z "$offset" ]; then
        echo "error: $dir/vmlinuz holds no xz stream (for its uncompressed kernel)" >&2
        return 1
    fi
    # xz stops at the end of its stream: what follows it in the file is not read, so the
    # reader is fed from a file, not a pipe (a writer cut off by SIGPIPE would fail the script
    # under pipefail, or not, as the timing goes).
    tail -c +$((offset + 1)) "$dir/vmlinuz" > "$tmp/kernel.xz"
    xz -dc --single-stream < "$tmp/kernel.xz" > "$dir/vmlinux"
    if [ "$(head -c 4 "$dir/vmlinux" | od -An -c | tr -d ' ')" != '177ELF' ]; then
        echo "error: $dir/vmlinux is not an ELF kernel (unpacked from $deb)" >&2
        return 1
    fi
    echo "$image" > "$dir/package"
    rm -rf "$tmp"
}

hv_prereqs
