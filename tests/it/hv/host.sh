#!/bin/bash
# One test hypervisor host: run as `unshare -m --propagation private bash host.sh DIR CMD...`
# inside the host's network namespace. It gives this mount namespace its own /run, /var,
# /etc/libvirt, /root and /srv (folders under DIR; the machine's are never written), a
# passwd and group with the user libvirt's QEMU driver looks up first, starts libvirtd (the
# system instance, qemu:///system, private to this namespace), then execs CMD (the host's sshd),
# so that whatever the sshd runs sees the same host.
set -euo pipefail
H=$1
shift
for d in run var/lib/libvirt/images var/lib/libvirt/qemu var/lib/libvirt/dnsmasq var/log/libvirt/qemu \
    var/cache/libvirt \
    var/tmp etc-libvirt home srv; do
    mkdir -p "$H/$d"
done
ln -sfn /run "$H/var/run"
ln -sfn /run/lock "$H/var/lock"
cp /etc/passwd "$H/passwd"
cp /etc/group "$H/group"
grep -q '^libvirt-qemu:' "$H/passwd" ||
    echo 'libvirt-qemu:x:64055:64055:libvirt:/var/lib/libvirt:/usr/sbin/nologin' >>"$H/passwd"
grep -q '^libvirt-qemu:' "$H/group" || echo 'libvirt-qemu:x:64055:' >>"$H/group"
grep -q '^kvm:' "$H/group" || echo 'kvm:x:64056:' >>"$H/group"

mount --make-rprivate /
mount --bind "$H/run" /run
mount --bind "$H/var" /var
mount --bind "$H/etc-libvirt" /etc/libvirt
mount --bind "$H/home" /root
mount --bind "$H/srv" /srv
mount --bind "$H/passwd" /etc/passwd
mount --bind "$H/group" /etc/group
mkdir -p /run/sshd /run/lock

/usr/sbin/libvirtd --daemon --pid-file /run/libvirtd.pid
exec "$@"
