#!/bin/busybox sh
# The tiny guest's init (PID 1 of its initramfs): loads the virtio and ACPI button modules,
# takes its address from `reprise.ip=` on the kernel command line, reads the counter left on
# its disk (the first sector of /dev/vda), then writes counter+1, +2, ... there every second
# (synced), answers on TCP port 7000 with `boot B now N` (B: the counter found at boot, N: the
# last one written), writes known blocks when asked on port 7001 (a line `FIRST COUNT CHAR`:
# COUNT 64 KiB blocks of CHAR from block FIRST, synced; answers `wrote COUNT at FIRST`; with a
# fourth word STRIDE: COUNT blocks of random data, one every STRIDE blocks from FIRST), and on
# an ACPI power button press stops writing, syncs and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
    failover net_failover virtio_net button evdev; do
    insmod "/lib/modules/$m.ko" || echo "guest: cannot load $m"
done
arg() { sed -n "s/.*reprise\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done; }
ip link set lo up
addr=$(arg ip)
if [ -n "$addr" ]; then
    wait_for /sys/class/net/eth0
    ip link set eth0 up && ip addr add "$addr" dev eth0
fi
wait_for /dev/vda
boot=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' | sed -n 's/^counter \([0-9][0-9]*\)$/\1/p')
boot=${boot:-0}
echo "$boot" >/tmp/boot
echo "$boot" >/tmp/now
printf '#!/bin/sh\necho "boot $(cat /tmp/boot) now $(cat /tmp/now)"\n' >/bin/health
chmod +x /bin/health
echo "guest: boot counter $boot"
(
    n=$boot
    while :; do
        n=$((n + 1))
        printf 'counter %d\n' "$n" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null &&
            echo "$n" >/tmp/now
        sleep 1
    done
) &
writer=$!
nc -ll -p 7000 -e /bin/health &
cat >/bin/write-blocks <<'EOF'
#!/bin/sh
read -r first count char stride
if [ -z "$stride" ]; then
    dd if=/dev/zero bs=65536 count="$count" 2>/dev/null | tr '\000' "$char" |
        dd of=/dev/vda bs=65536 seek="$first" conv=fsync 2>/dev/null && echo "wrote $count at $first"
    exit
fi
i=0
while [ "$i" -lt "$count" ]; do
    dd if=/dev/urandom of=/dev/vda bs=65536 count=1 seek=$((first + i * stride)) conv=notrunc \
        2>/dev/null || exit 1
    i=$((i + 1))
done
sync && echo "wrote $count at $first"
EOF
chmod +x /bin/write-blocks
nc -ll -p 7001 -e /bin/write-blocks &
mkfifo /tmp/power
for d in /sys/class/input/input*; do
    grep -q "Power Button" "$d/name" 2>/dev/null || continue
    for e in "$d"/event*; do
        [ -e "$e" ] && (head -c 1 "/dev/input/${e##*/}" >/dev/null; echo x >/tmp/power) &
    done
done
echo "guest: ready"
read -r _ </tmp/power
echo "guest: power button"
kill "$writer"
sleep 0.3
sync
echo "guest: powering off at $(cat /tmp/now)"
poweroff -f
