//! reprise's built-in libvirt driver against real libvirt and QEMU (the set-up of `hv`): two
//! libvirt daemons reached over SSH, a tiny guest that writes a counter to its disk.

use std::time::Duration;

use crate::hv::{Firmware, Hv, blocks_changed, wait_for};

#[test]
fn a_running_guest_is_replicated_twice_the_second_time_only_what_changed() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 16);
    let (boot, _) = hv.wait_healthy(10, 2);
    assert_eq!(boot, 0, "a new disk holds no counter");

    let first = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(first.code, 0, "{first:?}");
    // 16 MiB of data (256 blocks of 64 KiB) and the counter's block.
    assert!(blocks_changed(&first.stdout) >= 257, "{}", first.stdout);
    // The snapshot overlay was merged back: the domain writes to its own disk again.
    let blocks = hv.main.virsh("domblklist app --details");
    assert!(
        blocks.contains("/var/lib/libvirt/images/app.qcow2")
            && !blocks.contains("reprise-replicate"),
        "{blocks}"
    );
    assert!(
        !hv.main
            .path("/var/lib/libvirt/images/app.reprise-replicate")
            .exists()
    );
    let copy = "/srv/replicas/app.qcow2";
    hv.pra.sh(&format!("qemu-img check -q {copy}"));
    let copied = hv.pra.counter_on_disk(copy);
    assert!(copied >= 1, "the copy holds a counter the guest wrote");

    // The guest goes on writing: the next replication sends the counter's block only.
    let (_, now) = hv.health(10).expect("the guest still answers");
    assert!(now >= copied, "{now} < {copied}");
    hv.wait_healthy(10, now + 2);
    let second = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(blocks_changed(&second.stdout), 1, "{}", second.stdout);
    assert!(hv.pra.counter_on_disk(copy) > copied);
    hv.main
        .sh("qemu-img check -q -U /var/lib/libvirt/images/app.qcow2");
    let points = hv.reprise(&["points", "app", "--json"]);
    assert_eq!(points.code, 0, "{points:?}");
    let points: serde_json::Value = serde_json::from_str(&points.stdout).unwrap();
    assert_eq!(points.as_array().map(Vec::len), Some(2), "{points}");
    wait_for("the guest writing on", Duration::from_secs(60), || {
        hv.health(10).is_some_and(|(_, n)| n > now + 2)
    });
}

/// The item of `reprise check --json` in `area` about `subject`, if there is one.
fn find_check_item(hv: &Hv, area: &str, subject: &str) -> Option<serde_json::Value> {
    let run = hv.reprise(&["check", "--json"]);
    let r: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("check --json: {e}: {run:?}"));
    r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["area"] == area && i["subject"] == subject)
        .cloned()
}

/// The item of `reprise check --json` in `area` about `subject`.
fn check_item(hv: &Hv, area: &str, subject: &str) -> serde_json::Value {
    find_check_item(hv, area, subject).unwrap_or_else(|| panic!("no {area} {subject} in check"))
}

/// The text of the first element `<tag …>` of `xml` that contains `needle` (a domain read
/// back with `virsh dumpxml`).
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag} "), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let end = rest[i..].find(&close).map_or(rest.len(), |e| i + e);
        out.push(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

fn sha256(host: &crate::hv::Host, path: &str) -> String {
    host.sh(&format!("sha256sum {path}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The standard error of the newest run's step `step` (all attempts).
fn step_stderr(hv: &Hv, step: &str) -> String {
    hv.journal()
        .iter()
        .filter(|e| e["event"] == "step_output" && e["step"] == step)
        .map(|e| e["stderr"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The standard output of the newest run's step `step` (all attempts).
fn step_stdout(hv: &Hv, step: &str) -> String {
    hv.journal()
        .iter()
        .filter(|e| e["event"] == "step_output" && e["step"] == step)
        .map(|e| e["stdout"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runs a drill of `vm` alone, which must succeed, and checks what it leaves: the copy's
/// content unchanged, no drill domain, no overlay, production untouched.
fn drill_and_check(hv: &Hv, vm: &str, ip: u8) {
    let copy = format!("/srv/replicas/{vm}.qcow2");
    let before = sha256(&hv.pra, &copy);
    let copied = hv.pra.counter_on_disk(&copy);
    let (_, production_before) = hv.health(ip).expect("production answers");
    let run = hv.reprise(&["drill", "--no-prompt", "--service", vm, "--only"]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    // The copy reprise defined, as libvirt had it while the drill ran: every NIC on the drill
    // network, every disk an overlay of this run, a new UUID.
    let copy_xml = step_stdout(hv, &format!("{vm}/show-copy"));
    assert!(
        copy_xml.contains(&format!("<name>drill-{vm}</name>"))
            && copy_xml.contains("<description>reprise-drill: "),
        "{copy_xml}"
    );
    let nics = elements(&copy_xml, "interface");
    assert!(!nics.is_empty(), "{copy_xml}");
    for nic in &nics {
        assert!(
            nic.contains("type='network'") && nic.contains("network='pra-drill'"),
            "a drill NIC not on the drill network: {nic}"
        );
    }
    // Its description says the format each overlay's copy has in the point's definition
    // (raw for a copy of the disk as the guest sees it, whose points say how it was read),
    // which its drill-start read through `virsh desc` to make the overlay.
    let points = std::fs::read_to_string(hv.pra.path(&format!("{copy}.reprise/points.json")))
        .unwrap_or_default();
    let format = match points.contains("\"read\":") {
        true => "raw",
        false => "qcow2",
    };
    assert!(
        copy_xml
            .lines()
            .any(|l| l.starts_with("disk /srv/overlays/")
                && l.contains(&format!("/{vm}/{vm}.qcow2: {format}"))),
        "{format}: {copy_xml}"
    );
    let disks = elements(&copy_xml, "disk");
    assert!(!disks.is_empty(), "{copy_xml}");
    for disk in &disks {
        assert!(
            disk.contains("/srv/overlays/") && disk.contains(&format!("/{vm}/{vm}.qcow2")),
            "a drill disk that is not an overlay: {disk}"
        );
    }
    let uuid = |xml: &str| {
        xml.split("<uuid>")
            .nth(1)
            .and_then(|u| u.split('<').next())
            .map(str::to_string)
    };
    let main_xml = hv.main.virsh(&format!("dumpxml --inactive {vm}"));
    assert_ne!(
        uuid(&copy_xml),
        uuid(&main_xml),
        "the drill copy kept production's UUID"
    );
    // The drill copy booted from the replica: the counter it found is the copy's.
    let answer = step_stdout(hv, &format!("{vm}/healthy"));
    assert!(
        answer.contains(&format!("boot {copied} now")),
        "the drill copy answered {answer:?}, the copy holds {copied}"
    );
    assert_eq!(
        sha256(&hv.pra, &copy),
        before,
        "a drill changed the replica"
    );
    // Nothing was defined on hv-pra beforehand, and the drill leaves nothing defined.
    assert_eq!(
        hv.pra.domains(),
        Vec::<String>::new(),
        "the drill copy is still defined on hv-pra"
    );
    let overlays = hv.pra.path("/srv/overlays");
    let left: Vec<_> = std::fs::read_dir(&overlays)
        .map(|d| {
            d.flatten()
                .flat_map(|run| {
                    std::fs::read_dir(run.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "overlays left: {left:?}");
    // Production went on all along.
    let (_, production_after) = hv.health(ip).expect("production still answers");
    assert!(production_after > production_before);
    assert_eq!(hv.main.domstate(vm), "running");
}

#[test]
fn a_drill_boots_a_throw_away_copy_of_the_replica_and_leaves_it_unchanged() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 4);
    hv.wait_healthy(10, 2);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    // hv-pra's drill network does not exist yet: the check says the drill creates it.
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "ok", "{net}");
    assert!(
        net["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist yet"),
        "{net}"
    );
    drill_and_check(&hv, "app", 10);
    // The drill made it: isolated (no forwarding), hv-pra's address on it, no DHCP.
    let xml = hv.pra.virsh("net-dumpxml pra-drill");
    assert!(
        !xml.contains("<forward") && !xml.contains("<dhcp") && xml.contains("10.126.0.1"),
        "{xml}"
    );
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "ok", "{net}");
    assert!(
        net["detail"].as_str().unwrap().contains("isolated"),
        "{net}"
    );
    let space = check_item(&hv, "space", "hv-pra (drill overlays)");
    assert_eq!(space["status"], "ok", "{space}");

    // A port added to its bridge by hand (a NIC, a bond, a VLAN: here a veth link) could
    // carry a copy to production: refused; gone, it passes again.
    let info = hv.pra.virsh("net-info pra-drill");
    let bridge = info
        .lines()
        .find_map(|l| l.strip_prefix("Bridge:"))
        .unwrap_or_else(|| panic!("{info}"))
        .trim()
        .to_string();
    hv.pra.sh(&format!(
        "ip link add drl-nic0 type veth peer name drl-nic1 && ip link set drl-nic0 master {bridge}"
    ));
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"].as_str().unwrap().contains(&format!(
            "bridge {bridge} has ports that are not vms' (drl-nic0)"
        )),
        "{net}"
    );
    hv.pra.sh("ip link del drl-nic0");
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "ok", "{net}");
    // Nor a port of a vm that is not a drill copy (one of the recovery host's own, put on
    // that network by hand): a drill copy could reach it. Refused while it runs there.
    std::fs::write(
        hv.pra.path("/var/tmp/intruder.xml"),
        "<domain type='qemu'><name>intruder</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices>\
         <interface type='network'><source network='pra-drill'/></interface>\
         </devices></domain>",
    )
    .unwrap();
    hv.pra.virsh("define /var/tmp/intruder.xml");
    hv.pra.virsh("start intruder");
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"].as_str().unwrap().contains(&format!(
            "bridge {bridge} has ports of vms that are not drill copies of reprise (vnet"
        )),
        "{net}"
    );
    hv.pra.virsh("destroy intruder");
    hv.pra.virsh("undefine intruder");
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "ok", "{net}");

    // A network of that name that reaches production is refused by the check and the drill.
    hv.pra.virsh("net-destroy pra-drill");
    hv.pra.virsh("net-undefine pra-drill");
    std::fs::write(
        hv.pra.path("/var/tmp/leaky.xml"),
        "<network><name>pra-drill</name><forward mode='bridge'/><bridge name='br-prod'/></network>",
    )
    .unwrap();
    hv.pra.virsh("net-define /var/tmp/leaky.xml");
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"].as_str().unwrap().contains("not isolated"),
        "{net}"
    );
    let run = hv.reprise(&["drill", "--no-prompt", "--service", "app", "--only"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        step_stderr(&hv, "app/start-copy").contains("not isolated"),
        "{:#?}",
        hv.journal()
    );
    // The copy reprise defined for it is gone with the drill's cleanup.
    assert!(hv.pra.domains().is_empty(), "{:?}", hv.pra.domains());

    // Started so, then redefined isolated while it runs: libvirt keeps what it was started
    // with (still bridged to production) until it is restarted. Refused as it runs.
    hv.pra.virsh("net-start pra-drill");
    let uuid = hv.pra.virsh("net-uuid pra-drill");
    std::fs::write(
        hv.pra.path("/var/tmp/isolated.xml"),
        format!(
            "<network><name>pra-drill</name><uuid>{}</uuid><bridge name='virbr-drl'/></network>",
            uuid.trim()
        ),
    )
    .unwrap();
    hv.pra.virsh("net-define /var/tmp/isolated.xml");
    assert!(
        !hv.pra
            .virsh("net-dumpxml --inactive pra-drill")
            .contains("<forward"),
        "the definition still forwards"
    );
    assert!(
        hv.pra.virsh("net-dumpxml pra-drill").contains("<forward"),
        "the running network no longer forwards"
    );
    let net = check_item(&hv, "network", "hv-pra (pra-drill)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"].as_str().unwrap().contains("as it runs"),
        "{net}"
    );
    let run = hv.reprise(&["drill", "--no-prompt", "--service", "app", "--only"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        step_stderr(&hv, "app/start-copy").contains("not isolated"),
        "{:#?}",
        hv.journal()
    );
    assert!(hv.pra.domains().is_empty(), "{:?}", hv.pra.domains());
}

#[test]
fn a_uefi_guest_drill_is_cleaned_up() {
    let hv = Hv::up();
    hv.start_guest_on_main("uefi", 11, Firmware::Uefi, 4);
    hv.wait_healthy(11, 2);
    let run = hv.reprise(&["replicate", "--service", "uefi"]);
    assert_eq!(run.code, 0, "{run:?}");
    drill_and_check(&hv, "uefi", 11);
    // The copy's UEFI variables went with it: nothing of it is in a next drill's way.
    let nvram = hv.pra.path("/var/lib/libvirt/qemu/nvram");
    let left: Vec<_> = std::fs::read_dir(&nvram)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().starts_with("drill-")),
        "{left:?}"
    );
}

#[test]
fn a_planned_failover_then_failback_lose_nothing() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 4);
    hv.wait_healthy(10, 2);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        hv.pra.domains().is_empty(),
        "nothing is defined on hv-pra beforehand"
    );
    // Prepared (replicated, nothing defined by hand, no drill network yet), an inventory of
    // this vm alone is READY on the real hypervisors; the check names what a drill will make.
    hv.write_vms(Some(&["app"]));
    let check = hv.reprise(&["check", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&check.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {check:?}"));
    let failed: Vec<_> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "failed")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(check.code, 0, "{check:?}");
    for mode in ["drill", "planned failover"] {
        let subject = format!("vm app ({mode})");
        assert!(
            report["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["area"] == "definitions"
                    && i["subject"] == subject.as_str()
                    && i["status"] == "ok"),
            "{report:#}"
        );
    }
    // The definition changes on the primary (more memory, from its next boot): the final
    // sync's point carries it to hv-pra.
    hv.main.virsh("setmaxmem app 192M --config");
    hv.main.virsh("setmem app 192M --config");
    hv.wait_healthy(10, 5);

    let run = hv.reprise(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    assert_eq!(hv.main.domstate("app"), "shut off");
    assert!(
        hv.main
            .virsh("dominfo app")
            .lines()
            .any(|l| l.starts_with("Autostart:") && l.ends_with("disable")),
        "{}",
        hv.main.virsh("dominfo app")
    );
    let last_on_main = hv.main.counter_on_disk("/var/lib/libvirt/images/app.qcow2");
    assert!(last_on_main >= 5);
    let (boot, _) = hv.wait_healthy(10, 0);
    assert_eq!(
        boot, last_on_main,
        "the recovery copy did not start from the primary's last write"
    );
    assert_eq!(hv.pra.domstate("app"), "running");
    // reprise defined it from the point's definition: the copy's disk, the same identity,
    // the NIC on hv-pra's network, the memory the primary had at its final sync.
    let pra_xml = hv.pra.virsh("dumpxml --inactive app");
    let main_xml = hv.main.virsh("dumpxml --inactive app");
    assert!(
        pra_xml.contains("file='/srv/replicas/app.qcow2'"),
        "{pra_xml}"
    );
    assert!(!pra_xml.contains("/var/lib/libvirt/images"), "{pra_xml}");
    assert!(
        pra_xml.contains("<memory unit='KiB'>196608</memory>"),
        "{pra_xml}"
    );
    let tag = |xml: &str, t: &str| {
        xml.split(&format!("<{t}"))
            .nth(1)
            .and_then(|u| u.split('>').nth(1))
            .and_then(|u| u.split('<').next())
            .map(str::to_string)
    };
    assert_eq!(tag(&pra_xml, "uuid"), tag(&main_xml, "uuid"));
    let mac = |xml: &str| {
        xml.split("<mac address='")
            .nth(1)
            .map(|m| m[..17].to_string())
    };
    assert_eq!(mac(&pra_xml), mac(&main_xml), "the MAC is kept by default");
    assert!(pra_xml.contains("network='prod'"), "{pra_xml}");

    // Back to hv-main the same way.
    hv.wait_healthy(10, last_on_main + 3);
    let run = hv.reprise(&[
        "failback",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    assert_eq!(hv.pra.domstate("app"), "shut off");
    let last_on_pra = hv.pra.counter_on_disk("/srv/replicas/app.qcow2");
    assert!(last_on_pra >= last_on_main + 3);
    let (boot, _) = hv.wait_healthy(10, 0);
    assert_eq!(
        boot, last_on_pra,
        "hv-main did not start from the recovery copy's last write"
    );
    assert_eq!(hv.main.domstate("app"), "running");
}

#[test]
fn an_emergency_failover_starts_from_the_newest_good_point() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 4);
    hv.wait_healthy(10, 2);
    for _ in 0..2 {
        let run = hv.reprise(&["replicate", "--service", "app"]);
        assert_eq!(run.code, 0, "{run:?}");
        hv.wait_healthy(10, hv.health(10).unwrap().1 + 2);
    }
    let points = hv.reprise(&["points", "app", "--json"]);
    let points: serde_json::Value = serde_json::from_str(&points.stdout).unwrap();
    let newest = points
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .max()
        .unwrap()
        .to_string();
    assert!(
        hv.pra.domains().is_empty(),
        "nothing is defined on hv-pra beforehand"
    );
    let in_copy = hv.pra.counter_on_disk("/srv/replicas/app.qcow2");
    // The main site is lost: its guest stops dead.
    hv.main.virsh("destroy app");

    let run = hv.reprise(&[
        "failover",
        "--emergency",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    let used: Vec<_> = hv
        .journal()
        .into_iter()
        .filter(|e| e["event"] == "replica_point_used")
        .collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["point"], newest.as_str(), "{used:?}");
    let (boot, _) = hv.wait_healthy(10, 0);
    assert_eq!(boot, in_copy);
}

/// `reprise replicate` of the running guest is stopped by `signal` between its snapshot hooks
/// (`replicate-begin` made the overlay, the copy is under way). Whatever it left, the next
/// replication copies what the guest had written when it started, a planned failover then
/// starts from the primary's last write and a failback loses nothing.
fn replication_stopped_between_its_hooks(signal: &str) {
    let hv = Hv::up();
    // 200 MiB of data: the first copy takes long enough to be stopped in the middle.
    hv.start_guest_on_main("app", 10, Firmware::Bios, 200);
    hv.wait_healthy(10, 2);
    let overlay = "/var/lib/libvirt/images/app.reprise-replicate";
    let mut child = hv
        .command(&["replicate", "--service", "app"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the snapshot overlay of replicate-begin",
        Duration::from_secs(60),
        || hv.main.virsh("domblklist app --details").contains(overlay),
    );
    // `ip netns exec` execs reprise: the signal is reprise's.
    crate::hv::run(
        std::process::Command::new("kill").args([format!("-{signal}"), child.id().to_string()]),
    );
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let (_, at_stop) = hv.health(10).expect("the guest answers");
    if signal == "KILL" {
        // Nothing merged the snapshot back: the guest writes into the overlay, its disk goes
        // stale. `check` fails on it, naming the overlay and what to run.
        assert!(hv.main.path(overlay).exists(), "{status} {stderr}");
        let item = check_item(&hv, "replicas", "vm app (snapshot)");
        assert_eq!(item["status"], "failed", "{item}");
        let detail = item["detail"].as_str().unwrap();
        assert!(
            detail.contains(overlay) && detail.contains("reprise replicate --service app"),
            "{item}"
        );
    } else {
        // A stop asked by a signal merges the snapshot back before reprise exits.
        assert_eq!(status.code(), Some(130), "{stderr}");
        assert!(!hv.main.path(overlay).exists(), "{stderr}");
        let blocks = hv.main.virsh("domblklist app --details");
        assert!(!blocks.contains("reprise-replicate"), "{blocks}");
        let item = find_check_item(&hv, "replicas", "vm app (snapshot)");
        assert_eq!(item, None, "no snapshot is left");
    }

    // The next replication settles what was left, then copies the disk as the guest had
    // written it when that replication began.
    let (_, before) = hv.wait_healthy(10, at_stop + 2);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (_, after) = hv.health(10).expect("the guest answers");
    assert!(!hv.main.path(overlay).exists(), "{run:?}");
    let blocks = hv.main.virsh("domblklist app --details");
    assert!(!blocks.contains("reprise-replicate"), "{blocks}");
    hv.main
        .sh("qemu-img check -q -U /var/lib/libvirt/images/app.qcow2");
    let copy = "/srv/replicas/app.qcow2";
    hv.pra.sh(&format!("qemu-img check -q {copy}"));
    let copied = hv.pra.counter_on_disk(copy);
    assert!(
        copied >= before && copied <= after,
        "the copy holds {copied}; the guest had written {before} when the replication began, {after} when it ended"
    );

    // A planned failover then starts from the primary's last write, and a failback brings
    // back all the recovery side wrote.
    let run = hv.reprise(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    let last_on_main = hv.main.counter_on_disk("/var/lib/libvirt/images/app.qcow2");
    assert!(last_on_main >= after, "{last_on_main} < {after}");
    let (boot, _) = hv.wait_healthy(10, 0);
    assert_eq!(
        boot, last_on_main,
        "the recovery copy did not start from the primary's last write"
    );
    hv.wait_healthy(10, last_on_main + 3);
    let run = hv.reprise(&[
        "failback",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    let last_on_pra = hv.pra.counter_on_disk(copy);
    assert!(last_on_pra >= last_on_main + 3);
    let (boot, _) = hv.wait_healthy(10, 0);
    assert_eq!(
        boot, last_on_pra,
        "hv-main did not start from the recovery copy's last write"
    );
}

#[test]
fn a_replication_killed_between_its_snapshot_hooks_is_settled_by_the_next_one() {
    replication_stopped_between_its_hooks("KILL");
}

#[test]
fn a_replication_stopped_by_sigterm_between_its_snapshot_hooks_merges_its_snapshot() {
    replication_stopped_between_its_hooks("TERM");
}

#[test]
fn a_planned_failover_that_cannot_start_the_recovery_copy_brings_production_back() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 4);
    hv.main.virsh("autostart app");
    hv.wait_healthy(10, 2);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    let (_, before) = hv.wait_healthy(10, 3);

    // hv-pra's network `prod` is down: the copy, defined by reprise, cannot start.
    hv.pra.virsh("net-destroy prod");
    let run = hv.reprise(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let journal = hv.journal();
    let failed = journal
        .iter()
        .find(|e| {
            e["event"] == "step_output"
                && e["step"] == "app/start"
                && e["stderr"].as_str().is_some_and(|s| !s.is_empty())
        })
        .expect("the start's output is journaled");
    assert!(
        failed["stderr"]
            .as_str()
            .unwrap()
            .contains("network 'prod' is not active"),
        "{failed}"
    );
    let undone: Vec<(&str, bool)> = journal
        .iter()
        .filter(|e| e["event"] == "undo_finished")
        .map(|e| (e["step"].as_str().unwrap(), e["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        undone,
        [
            ("app/no-autostart-primary", true),
            ("app/stop-primary", true)
        ],
        "{journal:#?}"
    );
    // Production is back, with all it had written, and comes back after a reboot as before.
    assert_eq!(hv.main.domstate("app"), "running");
    let info = hv.main.virsh("dominfo app");
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.ends_with("enable")),
        "{info}"
    );
    let (boot, _) = hv.wait_healthy(10, 0);
    assert!(
        boot >= before,
        "production restarted from {boot}, it had written {before}"
    );
    assert_ne!(hv.pra.domstate("app"), "running");
    // What reprise defined on hv-pra for the start that failed is undefined again, and said.
    let names = hv.pra.virsh("list --all --name");
    assert!(!names.lines().any(|l| l.trim() == "app"), "{names}");
    let finished = journal
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "app/start")
        .expect("the start's end is journaled");
    assert!(
        finished["message"].as_str().is_some_and(
            |m| m.contains("app, defined on hv-pra for this step, was undefined again")
        ),
        "{finished}"
    );
}

/// The `(read: …)` of the line a `reprise replicate` prints for the copy of `disk`.
fn read_mode(stdout: &str, disk: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.contains(&format!("/{disk} →")) && l.contains(" blocks changed"))
        .unwrap_or_else(|| panic!("no line for {disk} in {stdout}"));
    let at = line
        .find("(read: ")
        .unwrap_or_else(|| panic!("no read mode in {line}"));
    let end = line[at..].find("), ").map_or(line.len(), |e| at + e);
    // `MODE[: WHY][; checkpoint C]`
    line[at + 7..end].to_string()
}

/// The checkpoints of domain `dom` on hv-main.
fn checkpoints(hv: &Hv, dom: &str) -> Vec<String> {
    hv.main
        .virsh(&format!("checkpoint-list {dom} --name"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Replicates the vm `cbt`, which must succeed: its standard output.
fn replicate_cbt(hv: &Hv) -> String {
    let run = hv.reprise(&["replicate", "--service", "cbt"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
}

const CBT_COPY: &str = "/srv/replicas/cbt.qcow2";

/// The raw copy `copy` on hv-pra holds what the guest sees of the qcow2 disk `disk` on
/// hv-main (compared while it is stopped).
fn copy_is_disk(hv: &Hv, copy: &str, disk: &str) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2", "-U"])
        .arg(hv.pra.path(copy))
        .arg(hv.main.path(disk))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{copy} differs from {disk}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The copy of `cbt` holds what the guest sees of its disk (compared while it is stopped).
fn copy_equals_source(hv: &Hv) {
    copy_is_disk(hv, CBT_COPY, "/var/lib/libvirt/images/cbt.qcow2");
}

/// Presses the guest's power button and waits until the domain is off.
fn shut_down(hv: &Hv, dom: &str) {
    hv.main.virsh(&format!("shutdown {dom}"));
    wait_for("the guest powering off", Duration::from_secs(120), || {
        hv.main.domstate(dom) == "shut off"
    });
}

#[test]
fn a_running_guest_s_changed_blocks_are_all_that_is_read_and_a_killed_copy_recovers() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);

    // The first copy reads every block, through libvirt's export, and starts a checkpoint.
    let first = replicate_cbt(&hv);
    assert!(
        read_mode(&first, "cbt.qcow2").starts_with("scan: the first copy; checkpoint reprise-"),
        "{first}"
    );
    let cps = checkpoints(&hv, "cbt");
    assert_eq!(cps.len(), 1, "{cps:?}");
    assert!(first.contains(&format!("checkpoint {}", cps[0])), "{first}");
    // No overlay, no snapshot: the domain writes to its own disk throughout.
    assert!(
        !hv.main
            .virsh("domblklist cbt")
            .contains("reprise-replicate")
    );

    // The guest writes 3 blocks at 100 and 2 at 3000 (and its counter, in block 0): exactly
    // those 6 blocks are read and sent.
    hv.write_blocks(12, 100, 3, 'A');
    hv.write_blocks(12, 3000, 2, 'B');
    let second = replicate_cbt(&hv);
    assert!(
        read_mode(&second, "cbt.qcow2").starts_with("changed-blocks; checkpoint reprise-"),
        "{second}"
    );
    assert_eq!(blocks_changed(&second), 6, "{second}");
    // The source kept the manifest it sent: only its digest crossed.
    assert!(second.contains(", 64 of manifest)"), "{second}");
    let now = checkpoints(&hv, "cbt");
    assert_eq!(now.len(), 1, "the older checkpoint is deleted: {now:?}");
    assert_ne!(now, cps);
    // 8 blocks of random data written apart (one every 300) and the counter's: those 9.
    hv.write_spread(12, 500, 8, 300, Duration::from_secs(60));
    let spread = replicate_cbt(&hv);
    assert_eq!(blocks_changed(&spread), 9, "{spread}");

    // kill -9 in the middle of a transfer: the backup job and a new checkpoint are left.
    hv.write_blocks(12, 200, 1024, 'C');
    let mut child = hv
        .command(&["replicate", "--service", "cbt"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the backup export", Duration::from_secs(120), || {
        hv.main.path("/var/tmp/reprise-backup-cbt.sock").exists()
    });
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let points = hv.reprise(&["points", "cbt", "--json"]);
    let points: serde_json::Value = serde_json::from_str(&points.stdout).unwrap();
    assert_eq!(points.as_array().map(Vec::len), Some(3), "{points}");
    // The next run ends the job left, reads everything written since the copies' checkpoint
    // (the 1024 blocks and the counter), and leaves one checkpoint.
    let next = replicate_cbt(&hv);
    assert!(
        next.contains("a backup job left by an interrupted replication was ended"),
        "{next}"
    );
    assert!(
        read_mode(&next, "cbt.qcow2").starts_with("changed-blocks"),
        "{next}"
    );
    assert_eq!(blocks_changed(&next), 1025, "{next}");
    assert_eq!(checkpoints(&hv, "cbt").len(), 1);

    // A drill starts a throw-away copy on an overlay of the raw copy, which it leaves as it
    // was (nothing is defined on hv-pra by hand).
    drill_and_check(&hv, "cbt", 12);

    // Stopped, it is read by qemu-nbd through the checkpoint's bitmap in the qcow2 file:
    // only the counter's block changed; the copy equals the disk.
    shut_down(&hv, "cbt");
    let offline = replicate_cbt(&hv);
    assert!(
        read_mode(&offline, "cbt.qcow2").starts_with("changed-blocks"),
        "{offline}"
    );
    assert!(blocks_changed(&offline) <= 1, "{offline}");
    copy_equals_source(&hv);
    let verify = hv.reprise(&["verify", "cbt"]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // The main site is lost: an emergency failover defines the vm on hv-pra from the point's
    // definition, whose disk is the primary's qcow2, with its copy read as what it is, a raw
    // image of the disk as the guest saw it; the guest boots from it with nothing lost.
    assert!(hv.pra.domains().is_empty(), "{:?}", hv.pra.domains());
    let in_copy = hv.pra.counter_on_disk(CBT_COPY);
    let run = hv.reprise(&[
        "failover",
        "--emergency",
        "--yes",
        "--no-prompt",
        "--service",
        "cbt",
        "--only",
    ]);
    assert_eq!(run.code, 0, "{run:?}\n{:#?}", hv.journal());
    let defined = hv.pra.virsh("dumpxml --inactive cbt");
    let disk = elements(&defined, "disk")
        .into_iter()
        .find(|d| d.contains(CBT_COPY))
        .unwrap_or_else(|| panic!("no disk on {CBT_COPY}: {defined}"));
    assert!(disk.contains("type='raw'"), "{disk}");
    let (boot, _) = hv.wait_healthy(12, 0);
    assert_eq!(boot, in_copy);
}

#[test]
fn a_deleted_checkpoint_a_guest_killed_and_a_lost_bitmap_each_make_a_scan_that_says_why() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);
    replicate_cbt(&hv);

    // A checkpoint deleted outside reprise.
    let cp = checkpoints(&hv, "cbt").remove(0);
    hv.main.virsh(&format!("checkpoint-delete cbt {cp}"));
    let out = replicate_cbt(&hv);
    let mode = read_mode(&out, "cbt.qcow2");
    assert!(
        mode.starts_with("scan")
            && mode.contains(&format!("checkpoint {cp} is no longer on hv-main")),
        "{out}"
    );

    // A checkpoint deleted and made again under the same name outside reprise: its bitmap
    // begins then, and misses what the guest wrote before.
    let cp = checkpoints(&hv, "cbt").remove(0);
    hv.write_blocks(12, 500, 3, 'F');
    std::thread::sleep(Duration::from_millis(1100)); // libvirt's times are to the second
    hv.main.virsh(&format!("checkpoint-delete cbt {cp}"));
    hv.main.virsh(&format!(
        "checkpoint-create-as cbt --name {cp} --diskspec vda,checkpoint=bitmap"
    ));
    let out = replicate_cbt(&hv);
    let mode = read_mode(&out, "cbt.qcow2");
    assert!(
        mode.starts_with("scan")
            && mode.contains(&format!("checkpoint {cp} on hv-main was made at"))
            && mode.contains("made again under the same name"),
        "{out}"
    );
    assert!(blocks_changed(&out) >= 3, "{out}");

    // Stopped and started again outside reprise, cleanly: QEMU saved its bitmap, so what the
    // guest wrote before is still read (2 blocks and the counter's).
    replicate_cbt(&hv);
    hv.write_blocks(12, 700, 2, 'D');
    shut_down(&hv, "cbt");
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    let out = replicate_cbt(&hv);
    assert!(
        read_mode(&out, "cbt.qcow2").starts_with("changed-blocks"),
        "{out}"
    );
    assert_eq!(blocks_changed(&out), 3, "{out}");

    // Killed (as by a host crash) and started again outside reprise: its bitmap was not saved
    // and cannot be trusted, nor was the mark its copy's point (read while it ran) added
    // through QEMU.
    let kill = || {
        let pid: i32 = std::fs::read_to_string(hv.main.path("/run/libvirt/qemu/cbt.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: a signal to the guest's QEMU, which this test's libvirt started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_for("QEMU gone", Duration::from_secs(60), || {
            hv.main.domstate("cbt") == "shut off"
        });
        hv.main.virsh("start cbt");
        hv.wait_healthy(12, 1);
    };
    hv.write_blocks(12, 900, 2, 'E');
    kill();
    let out = replicate_cbt(&hv);
    let mode = read_mode(&out, "cbt.qcow2");
    assert!(mode.starts_with("scan"), "{out}");
    assert!(blocks_changed(&out) >= 3, "{out}");
    assert!(
        mode.contains("is gone from it") && mode.contains("killed"),
        "{out}"
    );

    // Read stopped (the mark is then in the file), started, written and killed: the mark is
    // there, the checkpoint's bitmap is broken, and libvirt refuses to read through it.
    shut_down(&hv, "cbt");
    replicate_cbt(&hv);
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    hv.write_blocks(12, 1100, 2, 'G');
    kill();
    let out = replicate_cbt(&hv);
    let mode = read_mode(&out, "cbt.qcow2");
    assert!(mode.starts_with("scan"), "{out}");
    assert!(blocks_changed(&out) >= 3, "{out}");
    assert!(
        mode.contains("libvirt refused") && mode.contains("broken bitmap"),
        "{out}"
    );
    // The broken checkpoint is gone with the others: one is left, the new one.
    assert_eq!(checkpoints(&hv, "cbt").len(), 1, "{out}");

    // A bitmap lost from the qcow2 file while the vm was stopped.
    shut_down(&hv, "cbt");
    let cp = checkpoints(&hv, "cbt").pop().unwrap();
    hv.main.sh(&format!(
        "qemu-img bitmap --remove /var/lib/libvirt/images/cbt.qcow2 {cp}"
    ));
    let out = replicate_cbt(&hv);
    let mode = read_mode(&out, "cbt.qcow2");
    assert!(
        mode.starts_with("scan") && mode.contains("missing"),
        "{out}"
    );

    // A bitmap disabled while the vm was stopped: it records no writes since, so it is never
    // read as what changed.
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    replicate_cbt(&hv);
    shut_down(&hv, "cbt");
    let cp = checkpoints(&hv, "cbt").pop().unwrap();
    hv.main.sh(&format!(
        "qemu-img bitmap --disable /var/lib/libvirt/images/cbt.qcow2 {cp}"
    ));
    let out = replicate_cbt(&hv);
    let mode = read_mode(&out, "cbt.qcow2");
    assert!(
        mode.starts_with("scan")
            && mode.contains(&format!("the bitmap {cp}"))
            && mode.contains("is disabled"),
        "{out}"
    );
    copy_equals_source(&hv);
}

/// The bitmaps reprise marks a stopped guest's disk file with, in that file.
fn markers(hv: &Hv) -> Vec<String> {
    let info = hv
        .main
        .sh("qemu-img info -U --output=json /var/lib/libvirt/images/cbt.qcow2");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str())
        .filter(|n| n.starts_with("reprise-mark-"))
        .map(String::from)
        .collect()
}

/// A stopped guest is read through the bitmap of the checkpoint its copies' point was read
/// at, older than the point when that point too was read while it was stopped. Its disk file
/// put back since to a copy kept by hand (`cp`) between the two has that bitmap as it was
/// then, which does not mark what the guest wrote after it and the copy holds: read through
/// it, the copy would be neither. It is read whole instead, saying why, whether the guest is
/// still stopped or started again, and the copy is the disk.
#[test]
fn a_disk_put_back_to_an_older_file_after_a_stopped_point_is_read_whole() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);
    replicate_cbt(&hv);
    let disk = "/var/lib/libvirt/images/cbt.qcow2";
    let kept = "/var/lib/libvirt/images/cbt.kept";
    for running in [false, true] {
        // Written, stopped, its file kept by hand; started again, written elsewhere, stopped
        // and replicated through the bitmap.
        hv.write_blocks(12, 100, 2, 'A');
        shut_down(&hv, "cbt");
        hv.main.sh(&format!("cp {disk} {kept}"));
        hv.main.virsh("start cbt");
        hv.wait_healthy(12, 1);
        hv.write_blocks(12, 300, 3, 'B');
        shut_down(&hv, "cbt");
        let stopped = replicate_cbt(&hv);
        assert!(
            read_mode(&stopped, "cbt.qcow2").starts_with("changed-blocks"),
            "{stopped}"
        );
        copy_equals_source(&hv);
        // One mark, the newest point's: the older ones are removed.
        assert_eq!(markers(&hv).len(), 1, "{:?}", markers(&hv));

        // Put back to the file kept.
        hv.main.sh(&format!("cp {kept} {disk}"));
        if running {
            hv.main.virsh("start cbt");
            hv.wait_healthy(12, 1);
        }
        let out = replicate_cbt(&hv);
        let mode = read_mode(&out, "cbt.qcow2");
        assert!(
            mode.starts_with("scan") && mode.contains("put back"),
            "{out}"
        );
        // The 3 blocks written after the file was kept are read back to what it holds.
        assert!(blocks_changed(&out) >= 3, "{out}");
        if running {
            shut_down(&hv, "cbt");
            replicate_cbt(&hv);
        }
        copy_equals_source(&hv);
        if !running {
            hv.main.virsh("start cbt");
            hv.wait_healthy(12, 1);
        }
    }
}

/// The ids of the points of `cbt`'s copy, each with whether it is marked unusable.
fn cbt_points(hv: &Hv) -> Vec<(String, bool)> {
    points_of(hv, "cbt")
}

/// The ids of the points of `vm`'s copies, each with whether it is marked unusable.
fn points_of(hv: &Hv, vm: &str) -> Vec<(String, bool)> {
    let run = hv.reprise(&["points", vm, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let points: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p.get("unusable").is_some_and(|u| !u.is_null()),
            )
        })
        .collect()
}

/// A scan asked for is checked against the bitmap it replaces. Running, through libvirt's
/// incremental export read whole, every changed block is one the bitmap marks: nothing is
/// said. A block written into the stopped vm's disk while its bitmap did not record (a tool
/// run on the image file outside QEMU) is missed by the replication through the bitmap,
/// which cannot tell; the next scan asked for copies it, says so (exit 1, what to do), and
/// the points read through that bitmap are marked bad, the copy equal to the disk. The bitmap
/// is then checked again by every replication, asked or not, which finds the next such write
/// (exit 1), and through reads that make no check (its bitmap lost, a new checkpoint begun),
/// until one check finds none: the next is read through the bitmap again.
#[test]
fn a_scan_asked_for_finds_a_write_the_bitmap_missed_and_marks_the_points_read_through_it() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);
    replicate_cbt(&hv);
    hv.write_blocks(12, 100, 2, 'A');
    let run = hv.reprise(&["replicate", "--service", "cbt", "--scan"]);
    assert_eq!(run.code, 0, "{run:?}");
    let mode = read_mode(&run.stdout, "cbt.qcow2");
    assert!(
        mode.starts_with("scan: asked (--scan); checked against checkpoint reprise-"),
        "{run:?}"
    );
    assert!((2..=3).contains(&blocks_changed(&run.stdout)), "{run:?}");
    assert!(!run.stderr.contains("did not mark"), "{run:?}");
    hv.write_blocks(12, 200, 1, 'B');
    let through = replicate_cbt(&hv);
    assert!(
        read_mode(&through, "cbt.qcow2").starts_with("changed-blocks"),
        "{through}"
    );

    shut_down(&hv, "cbt");
    // A block written into the stopped vm's disk with its newest bitmap disabled: QEMU never
    // sees it.
    let outside_qemu = |pattern: &str, at: &str| {
        let cp = checkpoints(&hv, "cbt").pop().unwrap();
        let disk = "/var/lib/libvirt/images/cbt.qcow2";
        hv.main
            .sh(&format!("qemu-img bitmap --disable {disk} {cp}"));
        hv.main.sh(&format!(
            "qemu-io -c 'write -q -P {pattern} {at} 64k' {disk} >/dev/null"
        ));
        hv.main.sh(&format!("qemu-img bitmap --enable {disk} {cp}"));
    };
    outside_qemu("0x6b", "200M");
    let missed = replicate_cbt(&hv);
    assert!(
        read_mode(&missed, "cbt.qcow2").starts_with("changed-blocks"),
        "{missed}"
    );
    // The write is not in the copy (what the guest wrote as it shut down may be).
    let at_200m = || {
        use std::io::{Read as _, Seek as _};
        let mut f = std::fs::File::open(hv.pra.path(CBT_COPY)).unwrap();
        f.seek(std::io::SeekFrom::Start(200 << 20)).unwrap();
        let mut block = vec![0u8; 64 << 10];
        f.read_exact(&mut block).unwrap();
        block.iter().all(|b| *b == 0x6b)
    };
    assert!(!at_200m(), "the bitmap path carried the write: {missed}");

    let run = hv.reprise(&["replicate", "--service", "cbt", "--scan"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "1 blocks differ from the copy that the dirty bitmap did not mark as written (the first block 3200)"
        ) && run.stderr.contains("changed_blocks = false"),
        "{run:?}"
    );
    assert_eq!(blocks_changed(&run.stdout), 1, "{run:?}");
    copy_equals_source(&hv);
    assert!(at_200m());
    let points = cbt_points(&hv);
    let bad: Vec<bool> = points.iter().map(|(_, bad)| *bad).collect();
    // The first copy and the scan asked for while it ran stay good; the two read through
    // the bitmap since are bad; the scan that found the write is good.
    assert_eq!(bad, [false, false, true, true, false], "{points:?}");
    assert!(
        run.stderr
            .contains(&format!("marked bad: {}, {}", points[2].0, points[3].0)),
        "{run:?}"
    );

    // The bitmap is not trusted again until a check finds it missed nothing: the next
    // replication, not asked to scan, reads every block and checks it, and finds the next
    // write made outside QEMU.
    outside_qemu("0x6c", "150M");
    let again = hv.reprise(&["replicate", "--service", "cbt"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        read_mode(&again.stdout, "cbt.qcow2").starts_with(&format!(
            "scan: a check found 1 blocks its dirty bitmap missed, and none since found it whole (point {})",
            points[4].0
        )),
        "{again:?}"
    );
    assert!(
        again.stderr.contains("(the first block 2400)")
            && again
                .stderr
                .contains("no earlier point was read through that bitmap"),
        "{again:?}"
    );
    copy_equals_source(&hv);
    // Reads that make no check prove nothing of the bitmap: its bitmap lost while the vm is
    // stopped, every block is read unchecked; the vm started again, its disk is read whole
    // as its new checkpoint begins; the bitmap of that checkpoint is still checked after.
    let cp = checkpoints(&hv, "cbt").pop().unwrap();
    hv.main.sh(&format!(
        "qemu-img bitmap --remove /var/lib/libvirt/images/cbt.qcow2 {cp}"
    ));
    let lost = replicate_cbt(&hv);
    let mode = read_mode(&lost, "cbt.qcow2");
    assert!(
        mode.starts_with("scan: read whole, as a check found writes its bitmap missed; its bitmap cannot be checked")
            && mode.contains("it stays distrusted"),
        "{lost}"
    );
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    let begun = replicate_cbt(&hv);
    assert!(
        read_mode(&begun, "cbt.qcow2").starts_with("scan"),
        "{begun}"
    );
    // A check that finds none: the bitmap is read again after it.
    let clean = replicate_cbt(&hv);
    assert!(
        read_mode(&clean, "cbt.qcow2").starts_with("scan: a check found 1 blocks"),
        "{clean}"
    );
    let trusted = replicate_cbt(&hv);
    assert!(
        read_mode(&trusted, "cbt.qcow2").starts_with("changed-blocks"),
        "{trusted}"
    );
    let bad: Vec<bool> = cbt_points(&hv).iter().map(|(_, bad)| *bad).collect();
    assert!(!bad[bad.len() - 3..].contains(&true), "{bad:?}");
}

/// Where the debug log of a replication says the stream of `disk` begins or ends.
fn logged(stderr: &str, disk: &str, what: &str) -> Option<usize> {
    stderr
        .lines()
        .position(|l| l.contains(what) && l.contains(&format!("\"{disk}\"")))
}

/// A running guest with two disks: its backup job exports both at once, and both are read at
/// once, each through its own NBD connection: the second disk's stream begins before the
/// first's ends, both copies are the disks as the guest sees them, the changed blocks of each
/// are read the next time, and the copies equal the disks once the guest is stopped. Each
/// disk's file is marked as its own: the other disk's file put at its path is read whole.
#[test]
fn a_running_guest_s_two_disks_are_read_at_once_from_one_backup_job() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);
    let data = "/var/lib/libvirt/images/cbt-data.qcow2";
    hv.main.sh(&format!(
        "qemu-img create -q -f qcow2 {data} 256M && qemu-io -c 'write -q -P 0x77 0 32M' {data} >/dev/null"
    ));
    hv.main.virsh(&format!(
        "attach-disk cbt {data} vdb --driver qemu --subdriver qcow2 --targetbus virtio --live --config"
    ));
    hv.set_disks("cbt", &["cbt.qcow2", "cbt-data.qcow2"]);
    let replicate = || {
        let out = hv
            .command(&["replicate", "--service", "cbt"])
            .env("REPRISE_LOG", "reprise=debug")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        (stdout, stderr)
    };
    let (first, log) = replicate();
    for disk in ["cbt.qcow2", "cbt-data.qcow2"] {
        assert!(
            read_mode(&first, disk).starts_with("scan: the first copy; checkpoint reprise-"),
            "{first}"
        );
    }
    // Printed in disk order, streamed at once.
    let (a, b) = (
        first.find("/cbt.qcow2 →").unwrap(),
        first.find("/cbt-data.qcow2 →").unwrap(),
    );
    assert!(a < b, "{first}");
    let began = logged(&log, "cbt-data.qcow2", "disk stream begins");
    let ended = logged(&log, "cbt.qcow2", "disk stream ends");
    assert!(began.is_some() && began < ended, "{log}");

    hv.write_blocks(12, 100, 3, 'A');
    hv.main.virsh(
        "qemu-monitor-command cbt --hmp 'qemu-io -d virtio-disk1 \"write -P 0x55 1M 128k\"'",
    );
    let (second, _) = replicate();
    for disk in ["cbt.qcow2", "cbt-data.qcow2"] {
        assert!(
            read_mode(&second, disk).starts_with("changed-blocks; checkpoint reprise-"),
            "{second}"
        );
    }

    // Stopped, each disk is read by a qemu-nbd of its own through its bitmap, at once too.
    shut_down(&hv, "cbt");
    let (offline, _) = replicate();
    for disk in ["cbt.qcow2", "cbt-data.qcow2"] {
        assert!(
            read_mode(&offline, disk).starts_with("changed-blocks"),
            "{offline}"
        );
    }
    for (copy, disk) in [
        (CBT_COPY, "/var/lib/libvirt/images/cbt.qcow2"),
        ("/srv/replicas/cbt-data.qcow2", data),
    ] {
        copy_is_disk(&hv, copy, disk);
    }

    // The data disk's file put at the system disk's path (of the same size, the wrong one
    // restored there): it holds the checkpoint's bitmap and a mark of this replication, but
    // the data disk's, not the system disk's. Read whole, saying why; the copy is that file.
    let system = "/var/lib/libvirt/images/cbt.qcow2";
    hv.main.sh(&format!("cp {data} {system}"));
    let (swapped, _) = replicate();
    let mode = read_mode(&swapped, "cbt.qcow2");
    assert!(
        mode.starts_with("scan") && mode.contains("is gone from it"),
        "{swapped}"
    );
    copy_is_disk(&hv, CBT_COPY, system);
}

/// Every disk of a domain holds the bitmap of each checkpoint under the checkpoint's name, the
/// same for all. Two data disks' files swapped while their guest is stopped each hold that
/// bitmap, of the other disk: read through it, each copy would be its own disk's old blocks
/// with the other's changes on them, recorded good. Each disk's file also holds a mark of its
/// own copy, added through QEMU when the guest ran (written into the file when it stopped
/// cleanly) or into the file when it was stopped: swapped, whether the guest runs again or
/// not, each is read whole, saying why, and each copy is its file.
#[test]
fn two_disks_swapped_after_a_running_or_a_stopped_read_are_read_whole() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);
    let dir = "/var/lib/libvirt/images";
    let (one, two) = (
        format!("{dir}/cbt-one.qcow2"),
        format!("{dir}/cbt-two.qcow2"),
    );
    for (file, target, byte) in [(&one, "vdb", "0x11"), (&two, "vdc", "0x22")] {
        hv.main.sh(&format!(
            "qemu-img create -q -f qcow2 {file} 64M && qemu-io -c 'write -q -P {byte} 0 16M' {file} >/dev/null"
        ));
        hv.main.virsh(&format!(
            "attach-disk cbt {file} {target} --driver qemu --subdriver qcow2 --targetbus virtio --live --config"
        ));
    }
    hv.set_disks("cbt", &["cbt.qcow2", "cbt-one.qcow2", "cbt-two.qcow2"]);
    let replicate = || {
        let out = hv
            .command(&["replicate", "--service", "cbt"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    // Each disk written where the other is not, through QEMU (its bitmaps record it).
    let write = |dev: &str, at: &str, byte: &str| {
        hv.main.virsh(&format!(
            "qemu-monitor-command cbt --hmp 'qemu-io -d {dev} \"write -P {byte} {at} 256k\"'"
        ));
    };
    let copies_are_files = || {
        for (copy, file) in [
            ("/srv/replicas/cbt-one.qcow2", &one),
            ("/srv/replicas/cbt-two.qcow2", &two),
        ] {
            copy_is_disk(&hv, copy, file);
        }
    };
    let swap = || {
        hv.main.sh(&format!(
            "mv {one} {dir}/swap && mv {two} {one} && mv {dir}/swap {two}"
        ));
    };
    replicate();
    write("virtio-disk1", "32M", "0x33");
    write("virtio-disk2", "40M", "0x44");
    let running = replicate();
    for disk in ["cbt-one.qcow2", "cbt-two.qcow2"] {
        assert!(
            read_mode(&running, disk).starts_with("changed-blocks"),
            "{running}"
        );
    }

    // Read running, then stopped cleanly (QEMU writes the marks into the files), swapped and
    // started again.
    write("virtio-disk1", "48M", "0x55");
    write("virtio-disk2", "8M", "0x66");
    shut_down(&hv, "cbt");
    swap();
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    let out = replicate();
    for disk in ["cbt-one.qcow2", "cbt-two.qcow2"] {
        let mode = read_mode(&out, disk);
        assert!(
            mode.starts_with("scan") && mode.contains("is gone from it"),
            "{out}"
        );
    }
    // The system disk was not swapped: its own mark is there.
    assert!(
        read_mode(&out, "cbt.qcow2").starts_with("scan"),
        "every disk of one domain is read one way: {out}"
    );
    shut_down(&hv, "cbt");
    copies_are_files();

    // Read running, stopped cleanly and read stopped through its bitmap (the marks QEMU
    // wrote into the files are found), then swapped while stopped.
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    write("virtio-disk1", "24M", "0x77");
    replicate();
    write("virtio-disk2", "56M", "0x78");
    shut_down(&hv, "cbt");
    let stopped = replicate();
    for disk in ["cbt-one.qcow2", "cbt-two.qcow2"] {
        assert!(
            read_mode(&stopped, disk).starts_with("changed-blocks"),
            "{stopped}"
        );
    }
    copies_are_files();
    swap();
    let out = replicate();
    for disk in ["cbt-one.qcow2", "cbt-two.qcow2"] {
        let mode = read_mode(&out, disk);
        assert!(
            mode.starts_with("scan") && mode.contains("is gone from it"),
            "{out}"
        );
    }
    copies_are_files();
}

/// A stopped vm's disks are read as they are, each between two looks at its file that find it
/// unwritten. Started (or written by another program) after its first disk was read and
/// before its second was, the vm's disks would be copies of two moments, each found
/// unwritten while it was read: reprise's read window finds them written since the reads
/// began, and the points are marked unusable (exit 1), saying why.
#[test]
fn a_stopped_vm_written_between_the_reads_of_its_disks_makes_no_usable_point() {
    stopped_vm_written_between_its_disks_reads(
        "app",
        10,
        "/var/lib/libvirt/images/app.qcow2 /var/lib/libvirt/images/app-data.raw changed while the disks of app were read",
    );
}

/// The same through changed-block tracking (`changed_blocks`), whose copies of a stopped
/// domain are read through `qemu-nbd`.
#[test]
fn a_stopped_changed_blocks_vm_written_between_the_reads_of_its_disks_makes_no_usable_point() {
    stopped_vm_written_between_its_disks_reads(
        "cbt",
        12,
        "/var/lib/libvirt/images/cbt.qcow2 /var/lib/libvirt/images/cbt-data.raw changed while the disks of cbt were read",
    );
}

/// The vm `name` (at 10.126.0.`ip`) stopped, with a qcow2 system disk and a raw data disk,
/// written between the reads of its two disks: `said`, and its point unusable.
fn stopped_vm_written_between_its_disks_reads(name: &str, ip: u8, said: &str) {
    let hv = Hv::up();
    let images = "/var/lib/libvirt/images";
    let (system, data) = (
        format!("{images}/{name}.qcow2"),
        format!("{images}/{name}-data.raw"),
    );
    hv.main.sh(&format!(
        "qemu-img create -q -f qcow2 {system} 64M && qemu-io -c 'write -q -P 0x11 0 8M' {system} >/dev/null \
         && qemu-img create -q -f raw {data} 8M && qemu-io -f raw -c 'write -q -P 0x22 0 8M' {data} >/dev/null"
    ));
    let xml = hv.domain_xml(name, &system, ip, Firmware::Bios).replace(
        "<interface type='network'>",
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{data}'/><target dev='vdb' bus='virtio'/></disk>\n    <interface type='network'>"
        ),
    );
    std::fs::write(hv.main.path(&format!("/var/tmp/{name}.xml")), xml).unwrap();
    hv.main.virsh(&format!("define /var/tmp/{name}.xml"));
    let (system_disk, data_disk) = (format!("{name}.qcow2"), format!("{name}-data.raw"));
    hv.set_disks(name, &[&system_disk, &data_disk]);
    let first = hv.reprise(&["replicate", "--service", name]);
    assert_eq!(first.code, 0, "{first:?}");
    let points = |hv: &Hv| points_of(hv, name);
    assert_eq!(points(&hv).len(), 1);

    // The data disk's opening for its read waits until the system disk's copy has recorded
    // its point (its read over); then both disks are written, as a vm started then would.
    let recorded = hv
        .pra
        .path(&format!("/srv/replicas/{name}.qcow2.reprise/points.json"));
    let before = std::fs::read(&recorded).unwrap();
    let main = (hv.main.path(&system), hv.main.path(&data));
    // Opened now: an opening of it from the gate's own thread would wait for itself.
    let data_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&main.1)
        .unwrap();
    let gate = crate::common::OpenGate::start(&main.1.clone(), move || {
        wait_for("the system disk's point", Duration::from_secs(120), || {
            std::fs::read(&recorded).is_ok_and(|now| now != before)
        });
        let wrote = std::process::Command::new("qemu-io")
            .args(["-c", "write -q -P 0x33 0 64k"])
            .arg(&main.0)
            .output()
            .unwrap();
        assert!(wrote.status.success(), "{wrote:?}");
        use std::os::unix::fs::FileExt as _;
        data_file.write_all_at(&[0x33; 4096], 0).unwrap();
    });
    std::thread::sleep(Duration::from_millis(1100)); // point ids are per second
    let second = hv.reprise(&["replicate", "--service", name]);
    assert!(gate.stop(), "the data disk was opened: {second:?}");
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains(said) && second.stderr.contains("marked unusable"),
        "{}",
        second.stderr
    );
    let now = points(&hv);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        !now[0].1 && now[1].1,
        "the second point is unusable: {now:?}"
    );

    // Nothing writes it now: the next replication makes a good point, of one moment.
    std::thread::sleep(Duration::from_millis(1100));
    let third = hv.reprise(&["replicate", "--service", name]);
    assert_eq!(third.code, 0, "{third:?}");
    assert!(!points(&hv).last().unwrap().1);
}

/// libvirt names a running disk's snapshot overlay after the disk's file name without its
/// extension: `v1.d/app` makes `v1.d/app.reprise-replicate`. The driver's hooks find, merge
/// and remove that file, in the running and the defined domain, and never touch
/// `v1.reprise-replicate`, another disk's overlay (a `v1.qcow2`'s) that the extension of the
/// whole path would name.
#[test]
fn a_disk_in_a_folder_with_a_dot_has_its_own_overlay_merged_and_no_other_touched() {
    let hv = Hv::up();
    let images = "/var/lib/libvirt/images";
    let disk = format!("{images}/v1.d/app");
    hv.main.sh(&format!(
        "mkdir -p {images}/v1.d && qemu-img create -q -f qcow2 {disk} 256M"
    ));
    let other = format!("{images}/v1.reprise-replicate");
    hv.main
        .sh(&format!("echo another vm\\'s overlay > {other}"));
    let xml = hv.domain_xml("app", &disk, 10, Firmware::Bios);
    std::fs::write(hv.main.path("/var/tmp/app.xml"), xml).unwrap();
    hv.main.virsh("define /var/tmp/app.xml");
    hv.main.virsh("start app");
    hv.set_disks("app", &["v1.d/app"]);
    hv.wait_healthy(10, 2);

    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        hv.main.sh(&format!("cat {other}")).trim(),
        "another vm's overlay",
        "{run:?}"
    );
    let own = format!("{disk}.reprise-replicate");
    assert!(!hv.main.path(&own).exists(), "{own} is left: {run:?}");
    for defined in ["", " --inactive"] {
        let blocks = hv.main.virsh(&format!("domblklist app --details{defined}"));
        assert!(
            blocks.contains(&disk) && !blocks.contains("reprise-replicate"),
            "{defined}: {blocks}"
        );
    }
    // The guest goes on writing to its disk, and the copy holds what it had written.
    let (_, now) = hv.wait_healthy(10, 0);
    hv.wait_healthy(10, now + 2);
    assert!(hv.pra.counter_on_disk("/srv/replicas/v1.d/app") >= 2);
}

/// A disk that is a template's linked clone (a qcow2 file backed by another): its snapshot
/// overlay is merged back into that disk alone (`--shallow`), never down the chain into the
/// template, which other clones share. The template is left byte for byte, the disk keeps
/// its backing file, and the domain runs on the disk again.
#[test]
fn a_linked_clone_s_snapshot_is_merged_into_the_clone_never_into_its_template() {
    let hv = Hv::up();
    let images = "/var/lib/libvirt/images";
    let (template, disk) = (
        format!("{images}/debian-template.qcow2"),
        format!("{images}/app.qcow2"),
    );
    hv.main.sh(&format!(
        "qemu-img create -q -f qcow2 {template} 256M && qemu-io -c 'write -q -P 0x5a 1M 8M' {template} >/dev/null && qemu-img create -q -f qcow2 -F qcow2 -b {template} {disk}"
    ));
    let template_before = sha256(&hv.main, &template);
    let xml = hv.domain_xml("app", &disk, 10, Firmware::Bios);
    std::fs::write(hv.main.path("/var/tmp/app.xml"), xml).unwrap();
    hv.main.virsh("define /var/tmp/app.xml");
    hv.main.virsh("start app");
    hv.wait_healthy(10, 2);

    // Its copy would not hold all its data: refused, and the snapshot merged back.
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_ne!(run.code, 0, "{run:?}");
    hv.wait_healthy(10, 0);
    assert_eq!(sha256(&hv.main, &template), template_before, "{run:?}");
    let info = hv.main.sh(&format!("qemu-img info -U {disk}"));
    assert!(
        info.contains(&format!("backing file: {template}")),
        "{info}"
    );
    for defined in ["", " --inactive"] {
        let blocks = hv.main.virsh(&format!("domblklist app --details{defined}"));
        assert!(
            blocks.contains(&disk) && !blocks.contains("reprise-replicate"),
            "{defined}: {blocks}"
        );
    }
    assert!(
        !hv.main
            .path(&format!("{images}/app.reprise-replicate"))
            .exists()
    );
}

/// A domain named `drill-app` on the recovery host that is not a drill copy of reprise (an
/// administrator's): a drill of app neither replaces its definition (libvirt refuses the
/// copy, of a new UUID) nor destroys it (its cleanup removes only a copy marked
/// `reprise-drill` in its description); the drill fails, saying why.
#[test]
fn a_drill_never_replaces_or_removes_a_domain_of_its_copy_s_name_that_is_not_its_own() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 0);
    hv.wait_healthy(10, 2);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    let disk = "/srv/replicas/admins-own.qcow2";
    hv.pra
        .sh(&format!("qemu-img create -q -f qcow2 {disk} 64M"));
    let xml = hv.domain_xml("drill-app", disk, 20, Firmware::Bios);
    std::fs::write(hv.pra.path("/var/tmp/drill-app.xml"), xml).unwrap();
    hv.pra.virsh("define /var/tmp/drill-app.xml");
    let before = hv.pra.virsh("dumpxml --inactive drill-app");

    let run = hv.reprise(&["drill", "--no-prompt", "--service", "app", "--only"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(
        hv.pra.virsh("dumpxml --inactive drill-app"),
        before,
        "{run:?}"
    );
    assert!(
        hv.pra.domains().contains(&"drill-app".to_string()),
        "{run:?}"
    );
    let said = hv.journal().iter().any(|e| {
        e.to_string()
            .contains("drill-app is defined here but is not a drill copy of reprise")
    });
    assert!(said, "{run:?}\n{:#?}", hv.journal());

    // Its own copy, marked, is what a drill defines and removes.
    hv.pra.virsh("undefine drill-app");
    drill_and_check(&hv, "app", 10);
}

/// app on hv-main is shut off with a saved memory image (`virsh managedsave`, as
/// libvirt-guests leaves guests at a host's shutdown): its disks lack what that memory holds,
/// and `virsh start` would resume it over whatever its disks are then. Its driver's status
/// says so (not `shut off`), and a planned failover never takes it as cleanly stopped: the
/// run fails before app starts on hv-pra, naming the image and what to do; the image is left.
#[test]
fn a_vm_with_a_saved_memory_image_is_never_taken_as_cleanly_stopped() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 4);
    hv.wait_healthy(10, 2);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    hv.main.virsh("managedsave app");
    assert_eq!(hv.main.domstate("app"), "shut off");
    let saved = || {
        hv.main
            .virsh("dominfo app")
            .lines()
            .any(|l| l.starts_with("Managed save:") && l.ends_with("yes"))
    };
    assert!(saved(), "{}", hv.main.virsh("dominfo app"));
    let run = hv.reprise(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "app",
        "--only",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    let said = format!("{}\n{:?}", run.stderr, hv.journal());
    assert!(
        said.contains("with a saved memory image (virsh managedsave)"),
        "{said}"
    );
    assert!(
        !hv.pra
            .domains()
            .iter()
            .any(|d| hv.pra.domstate(d) == "running"),
        "something runs on hv-pra: {:?}",
        hv.pra.domains()
    );
    assert!(saved(), "the saved memory image was not left as it was");
    assert_eq!(hv.main.domstate("app"), "shut off");
}

/// A stopped vm's disk that QEMU opens as another format than qcow2 or raw (here a VMDK) is
/// never copied as its file's bytes, recorded as the guest's disk and started as raw:
/// refused, saying why and what to do, its copy kept as it was. Read while the vm runs, it
/// is the disk the guest sees.
#[test]
fn a_stopped_vm_s_disk_of_another_format_is_refused_and_read_as_the_guest_sees_it_while_it_runs() {
    let hv = Hv::up();
    hv.start_guest_on_main("cbt", 12, Firmware::Bios, 4);
    hv.wait_healthy(12, 2);
    replicate_cbt(&hv);
    shut_down(&hv, "cbt");
    let disk = "/var/lib/libvirt/images/cbt.qcow2";
    hv.main.sh(&format!(
        "qemu-img convert -O vmdk {disk} {disk}.vmdk && mv {disk}.vmdk {disk} && virt-xml cbt --edit target=vda --disk driver.type=vmdk"
    ));
    let before = cbt_points(&hv);
    let copy = std::fs::read(hv.pra.path(CBT_COPY)).unwrap();
    let run = hv.reprise(&["replicate", "--service", "cbt"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("disk vda (/var/lib/libvirt/images/cbt.qcow2) is of format `vmdk`")
            && run.stderr.contains("Replicate it while the vm runs"),
        "{run:?}"
    );
    assert_eq!(cbt_points(&hv), before);
    assert!(std::fs::read(hv.pra.path(CBT_COPY)).unwrap() == copy);
    hv.main.virsh("start cbt");
    hv.wait_healthy(12, 1);
    hv.write_blocks(12, 100, 2, 'V');
    let out = replicate_cbt(&hv);
    assert!(
        read_mode(&out, "cbt.qcow2").contains("disk vda is vmdk"),
        "{out}"
    );
    // What the guest saw once it stopped, but for the counter it writes in its first sector
    // every second (a stopped vmdk is not read to compare after its last writes).
    shut_down(&hv, "cbt");
    hv.main.sh(&format!(
        "qemu-img convert -U -f vmdk -O raw {disk} /var/tmp/cbt-seen.raw"
    ));
    let (copy, seen) = (
        std::fs::read(hv.pra.path(CBT_COPY)).unwrap(),
        std::fs::read(hv.main.path("/var/tmp/cbt-seen.raw")).unwrap(),
    );
    assert_eq!(copy.len(), seen.len());
    assert!(copy.starts_with(b"counter "), "{:?}", &copy[..16]);
    let differ = (512..copy.len()).find(|&i| copy[i] != seen[i]);
    assert_eq!(differ, None, "the copy differs from the guest's disk");
}

/// The snapshot hooks of a running domain with a disk reprise does not replicate (added after
/// the inventory was written): `replicate-begin` makes no overlay of it, so no overlay of it
/// is left in the live or the defined domain, merged and stale, for a later boot to read.
#[test]
fn a_disk_the_inventory_does_not_name_gets_no_snapshot_overlay() {
    let hv = Hv::up();
    hv.start_guest_on_main("app", 10, Firmware::Bios, 4);
    hv.wait_healthy(10, 2);
    let extra = "/var/lib/libvirt/images/extra.qcow2";
    hv.main.sh(&format!(
        "qemu-img create -q -f qcow2 {extra} 16M && virsh attach-disk app {extra} vdb --driver qemu --subdriver qcow2 --config >/dev/null && virsh destroy app >/dev/null && virsh start app >/dev/null"
    ));
    hv.wait_healthy(10, 1);
    let run = hv.reprise(&["replicate", "--service", "app"]);
    assert_eq!(run.code, 0, "{run:?}");
    for flags in ["", "--inactive"] {
        let blocks = hv.main.virsh(&format!("domblklist app --details {flags}"));
        assert!(
            blocks.contains(extra) && !blocks.contains("reprise-replicate"),
            "{flags}: {blocks}"
        );
    }
    assert!(
        !hv.main
            .path("/var/lib/libvirt/images/extra.reprise-replicate")
            .exists()
    );
}
