//! Proxmox VE's vm configuration (qm.conf(5), as `qm config <vmid> --current 1` prints it or
//! `/etc/pve/qemu-server/<vmid>.conf` holds it): `key: value` lines, `#` lines (the file's
//! description). Read strictly, as untrusted input: every line is one Proxmox documents for
//! a vm's current configuration, each key once; a `[snapshot]`, `[PENDING]` or other section,
//! a key not known, a control character, each is refused naming its line. Written back in a
//! canonical order (comments, then keys sorted), so two configurations compare line by line.

use indexmap::IndexMap;

use super::{DefinitionError, Fit, Fitted, Nics};

/// Keys of qm.conf(5) taken as they are (their values name nothing of the host).
const PLAIN: &[&str] = &[
    "acpi",
    "affinity",
    "agent",
    "amd-sev",
    "arch",
    "audio0",
    "autostart",
    "balloon",
    "bios",
    "boot",
    "bootdisk",
    "cicustom",
    "cipassword",
    "citype",
    "ciupgrade",
    "ciuser",
    "cores",
    "cpu",
    "cpulimit",
    "cpuunits",
    "description",
    "freeze",
    "hookscript",
    "hotplug",
    "hugepages",
    "keephugepages",
    "keyboard",
    "kvm",
    "localtime",
    "machine",
    "memory",
    "meta",
    "migrate_downtime",
    "migrate_speed",
    "name",
    "nameserver",
    "numa",
    "onboot",
    "ostype",
    "protection",
    "reboot",
    "rng0",
    "scsihw",
    "searchdomain",
    "shares",
    "smbios1",
    "smp",
    "sockets",
    "spice_enhancements",
    "sshkeys",
    "startdate",
    "startup",
    "tablet",
    "tags",
    "tdf",
    "template",
    "vcpus",
    "vga",
    "vmgenid",
    "vmstatestorage",
    "watchdog",
];

/// Keys that describe the state of the vm on its own node (a lock, a snapshot parent, the
/// CPU it runs with, the file's digest): left out of a configuration defined elsewhere.
const STATE: &[&str] = &[
    "digest",
    "lock",
    "parent",
    "snaptime",
    "vmstate",
    "runningcpu",
    "runningmachine",
];

/// Numbered keys (`net0`, `scsi12`…): the prefix and the largest number Proxmox accepts.
const NUMBERED: &[(&str, u32)] = &[
    ("ide", 3),
    ("sata", 5),
    ("scsi", 30),
    ("virtio", 15),
    ("efidisk", 0),
    ("tpmstate", 0),
    ("net", 31),
    ("ipconfig", 31),
    ("numa", 7),
    ("unused", 255),
    ("usb", 13),
    ("serial", 3),
    ("hostpci", 15),
    ("parallel", 2),
    ("virtiofs", 9),
];

fn numbered(key: &str) -> Option<(&'static str, u32)> {
    NUMBERED.iter().find_map(|(p, max)| {
        let n = key.strip_prefix(p)?;
        let ok = !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit());
        let n: u32 = n.parse().ok().filter(|_| ok)?;
        (n <= *max).then_some((*p, n))
    })
}

fn is_disk(key: &str) -> bool {
    key == "cdrom"
        || numbered(key).is_some_and(|(p, _)| {
            matches!(
                p,
                "ide" | "sata" | "scsi" | "virtio" | "efidisk" | "tpmstate"
            )
        })
}

fn known(key: &str) -> bool {
    PLAIN.contains(&key)
        || STATE.contains(&key)
        || matches!(key, "cdrom" | "args" | "ivshmem")
        || numbered(key).is_some()
}

/// A configuration: its `#` lines and its keys, each once, in the order read.
#[derive(Debug, Clone)]
pub(super) struct Conf {
    comments: Vec<String>,
    keys: IndexMap<String, String>,
}

impl Conf {
    pub(super) fn parse(text: &str) -> Result<Conf, DefinitionError> {
        let mut conf = Conf {
            comments: Vec::new(),
            keys: IndexMap::new(),
        };
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let bad = |why: &str| DefinitionError::Line {
                line: n,
                text: super::one_line(line),
                why: why.to_string(),
            };
            if line.chars().any(|c| c.is_control() && c != '\t') {
                return Err(bad("it has a control character"));
            }
            if line.trim().is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                conf.comments.push(c.to_string());
                continue;
            }
            if line.starts_with('[') {
                return Err(bad(
                    "a section (a snapshot, [PENDING] changes, cloud-init's): only a vm's current configuration is read; capture it with `qm config VMID --current 1`",
                ));
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(bad("not a `key: value` line"));
            };
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(bad("not a `key: value` line"));
            }
            if !known(key) {
                return Err(bad(&format!(
                    "`{key}` is not a key of a Proxmox VE vm configuration (qm.conf(5)) that reprise knows"
                )));
            }
            let value = value.trim();
            if conf
                .keys
                .insert(key.to_string(), value.to_string())
                .is_some()
            {
                return Err(bad(&format!("`{key}` is given twice")));
            }
        }
        if conf.keys.is_empty() {
            return Err(DefinitionError::Empty);
        }
        Ok(conf)
    }

    pub(super) fn name(&self) -> Option<String> {
        self.keys.get("name").cloned()
    }

    /// Comments, then every key but the file's digest, sorted.
    pub(super) fn canonical(&self) -> String {
        let mut out = String::new();
        for c in &self.comments {
            out.push_str(&format!("#{c}\n"));
        }
        let mut keys: Vec<(&String, &String)> =
            self.keys.iter().filter(|(k, _)| *k != "digest").collect();
        keys.sort_by_key(|(k, _)| order(k));
        for (k, v) in keys {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out
    }
}

/// Keys sorted by name, numbered keys by their number (`net2` before `net10`).
fn order(key: &str) -> (String, u32) {
    match numbered(key) {
        Some((p, n)) => (p.to_string(), n),
        None => (key.to_string(), 0),
    }
}

/// `a,b=c,d` split into its options.
fn options(value: &str) -> Vec<String> {
    value.split(',').map(str::to_string).collect()
}

fn option<'v>(opts: &'v [String], name: &str) -> Option<&'v str> {
    opts.iter()
        .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
}

/// NIC models of qm.conf(5): `net0: virtio=BC:24:11:…` gives the model and its MAC.
const NIC_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// 16 bytes for a new identifier, the same for the same seed and purpose (pure: the run's id
/// makes them new for each drill).
fn derived(seed: &str, what: &str) -> [u8; 16] {
    let h = blake3::hash(format!("reprise vm identifier\0{seed}\0{what}").as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// A locally administered unicast MAC address.
fn new_mac(seed: &str, nic: &str) -> String {
    let b = derived(seed, nic);
    let first = (b[0] & 0xfc) | 0x02;
    format!(
        "{first:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        b[1], b[2], b[3], b[4], b[5]
    )
}

/// A random-looking (version 4, RFC 4122 variant) UUID.
fn new_uuid(seed: &str, what: &str) -> String {
    let mut b = derived(seed, what);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(super) fn rewrite(conf: &Conf, fit: &Fit) -> Result<Fitted, DefinitionError> {
    let mut notes = Vec::new();
    let mut out = Conf {
        comments: conf.comments.clone(),
        keys: IndexMap::new(),
    };
    let mut found = vec![false; fit.disks.len()];
    let tagged_drill = |v: &str| v.split([';', ',', ' ']).any(|t| t == "reprise-drill");
    for (key, value) in &conf.keys {
        let key = key.as_str();
        if STATE.contains(&key) {
            continue;
        }
        let refuse = || DefinitionError::HostKey {
            key: key.to_string(),
            value: super::one_line(value),
        };
        let prefix = numbered(key).map(|(p, _)| p);
        match (key, prefix) {
            ("template", _) if value.trim() != "0" => {
                return Err(DefinitionError::Template);
            }
            ("tags", _) if tagged_drill(value) => return Err(DefinitionError::DrillCopy),
            // What passes anything to QEMU, or hands the vm a device or folder of the host.
            ("args" | "ivshmem", _) | (_, Some("hostpci" | "parallel" | "virtiofs")) => {
                return Err(refuse());
            }
            (_, Some("usb")) if option(&options(value), "host").is_some() => {
                return Err(refuse());
            }
            (_, Some("serial")) if value.starts_with('/') => return Err(refuse()),
            (_, Some("unused")) => {
                notes.push(format!(
                    "{key} ({value}) was left out: a volume the vm does not use is not replicated"
                ));
                continue;
            }
            // `qm config` prints the description as one line, URI-encoded (a newline is
            // `%0A`); the file keeps it as `#` lines, each encoded the same way.
            ("description", _) => {
                let mut rest = value.as_str();
                while !rest.is_empty() {
                    let cut = rest
                        .char_indices()
                        .find(|(i, _)| {
                            rest[*i..]
                                .get(..3)
                                .is_some_and(|p| p.eq_ignore_ascii_case("%0a"))
                        })
                        .map(|(i, _)| i);
                    let (line, next) = match cut {
                        Some(i) => (&rest[..i], &rest[i + 3..]),
                        None => (rest, ""),
                    };
                    out.comments.push(line.to_string());
                    rest = next;
                }
                continue;
            }
            ("onboot", _) => {
                if !fit.drill && value.trim() != "0" {
                    notes.push(
                        "onboot was left out: whether the vm starts with the node is for the runbook's autostart steps".into(),
                    );
                }
                continue;
            }
            _ if is_disk(key) => {
                let v = disk(key, value, fit, &mut found, &mut notes)?;
                out.keys.insert(key.to_string(), v);
                continue;
            }
            (_, Some("net")) => {
                let v = nic(key, value, fit)?;
                out.keys.insert(key.to_string(), v);
                continue;
            }
            _ => {}
        }
        if fit.drill {
            match key {
                "name" | "tags" | "hookscript" | "vmgenid" => continue,
                "smbios1" => {
                    let mut opts: Vec<String> = options(value)
                        .into_iter()
                        .filter(|o| !o.starts_with("uuid="))
                        .collect();
                    opts.insert(0, format!("uuid={}", new_uuid(&fit.seed, "smbios1")));
                    out.keys.insert(key.into(), opts.join(","));
                    continue;
                }
                _ => {}
            }
        }
        out.keys.insert(key.to_string(), value.clone());
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(DefinitionError::MissingDisk(fit.disks[i].0.join(" or ")));
    }
    if fit.drill {
        out.keys.insert("name".into(), fit.name.clone());
        out.keys.insert("tags".into(), "reprise-drill".into());
        out.keys
            .insert("vmgenid".into(), new_uuid(&fit.seed, "vmgenid"));
        if !out.keys.contains_key("smbios1") {
            out.keys.insert(
                "smbios1".into(),
                format!("uuid={}", new_uuid(&fit.seed, "smbios1")),
            );
        }
    }
    Ok(Fitted {
        text: out.canonical(),
        notes,
    })
}

/// A disk (`scsi0: local:120/vm-120-disk-0.qcow2,iothread=1,size=32G`) moved to its copy's
/// volume; a CD-ROM emptied.
fn disk(
    key: &str,
    value: &str,
    fit: &Fit,
    found: &mut [bool],
    notes: &mut Vec<String>,
) -> Result<String, DefinitionError> {
    let mut opts = options(value);
    if key == "cdrom" || opts.iter().any(|o| o == "media=cdrom") {
        let volume = opts[0].trim_start_matches("file=");
        if volume != "none" && !volume.is_empty() {
            notes.push(format!(
                "the CD-ROM {key} was emptied (its media {volume} is not replicated)"
            ));
        }
        return Ok(if key == "cdrom" {
            "none".into()
        } else {
            "none,media=cdrom".into()
        });
    }
    let volume = opts[0].trim_start_matches("file=").to_string();
    if volume == "none" {
        return Ok(value.to_string());
    }
    let known = || {
        fit.disks
            .iter()
            .flat_map(|(from, _)| from.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let foreign = || DefinitionError::ForeignVolume {
        key: key.to_string(),
        volume: super::one_line(&volume),
        known: known(),
    };
    // STORAGE:REL of a storage (a path, `/dev/sdb`, is the host's own disk).
    let Some((storage, rel)) = volume.split_once(':') else {
        return Err(foreign());
    };
    let plain_storage = storage
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && storage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !plain_storage {
        return Err(foreign());
    }
    let Some(i) = fit
        .disks
        .iter()
        .position(|(from, _)| from.iter().any(|f| f == rel))
    else {
        return Err(foreign());
    };
    if found[i] {
        return Err(DefinitionError::DiskTwice {
            target: key.to_string(),
            path: super::one_line(&volume),
        });
    }
    found[i] = true;
    opts[0] = format!("{storage}:{}", fit.disks[i].1);
    Ok(opts.join(","))
}

/// A NIC (`net0: virtio=BC:24:11:00:65:01,bridge=vmbr0,tag=20,firewall=1`) on the bridge the
/// fit gives, with its MAC kept or a new one.
fn nic(key: &str, value: &str, fit: &Fit) -> Result<String, DefinitionError> {
    let mut opts = options(value);
    let mac_at = opts.iter().position(|o| {
        o.split_once('=')
            .is_some_and(|(k, _)| NIC_MODELS.contains(&k) || k == "macaddr")
    });
    let mac = mac_at.and_then(|i| opts[i].split_once('=').map(|(_, m)| m.to_string()));
    let nic = match &mac {
        Some(m) => format!("{key} ({m})"),
        None => key.to_string(),
    };
    if !fit.keep_macs {
        let new = new_mac(&fit.seed, key);
        match mac_at {
            Some(i) => {
                let k = opts[i]
                    .split_once('=')
                    .map(|(k, _)| k.to_string())
                    .unwrap_or_default();
                opts[i] = format!("{k}={new}");
            }
            None => opts.push(format!("macaddr={new}")),
        }
    }
    match &fit.nics {
        Nics::All(bridge) => {
            opts.retain(|o| {
                !(o.starts_with("bridge=") || o.starts_with("tag=") || o.starts_with("trunks="))
            });
            opts.push(format!("bridge={bridge}"));
        }
        Nics::Map(map) => {
            let Some(bridge) = option(&opts, "bridge").map(str::to_string) else {
                return Err(DefinitionError::NicType {
                    nic,
                    kind: "user (no bridge)".into(),
                });
            };
            let Some(to) = map.get(&bridge) else {
                return Err(DefinitionError::Unmapped {
                    nic,
                    kind: "bridge".into(),
                    name: bridge,
                    host: fit.host.clone(),
                });
            };
            for o in opts.iter_mut().filter(|o| o.starts_with("bridge=")) {
                *o = format!("bridge={to}");
            }
        }
    }
    Ok(opts.join(","))
}

#[cfg(test)]
mod tests {
    use super::super::{Definition, Fit, Format, MAX_BYTES, Nics, diff, rewrite};

    /// As `qm config 120 --current 1` prints it.
    const CONF: &str = "agent: 1
description: ERP database%0A%0ASee the wiki%3A erp
boot: order=scsi0;ide2;net0
cores: 2
ide2: local:iso/debian-12.iso,media=cdrom,size=628M
memory: 4096
meta: creation-qemu=9.0.2,ctime=1764547200
name: erp-db
net0: virtio=BC:24:11:AA:BB:01,bridge=vmbr0,firewall=1
net1: virtio=BC:24:11:AA:BB:02,bridge=vmbr1,tag=20
onboot: 1
ostype: l26
efidisk0: local:120/vm-120-disk-2.qcow2,efitype=4m,pre-enrolled-keys=1,size=528K
scsi0: local:120/vm-120-disk-0.qcow2,iothread=1,size=32G
scsi1: local:120/vm-120-disk-1.raw,iothread=1,size=100G
scsihw: virtio-scsi-single
smbios1: uuid=4dea22b3-1d52-d8f3-2516-782e98ab3fa0
hookscript: local:snippets/erp.pl
tags: erp;prod
unused0: local:120/vm-120-disk-9.qcow2
vmgenid: 0f9d1d4e-6a51-4f7e-9a43-1d2b3c4d5e6f
";

    fn fit(nics: Nics) -> Fit {
        let disks = ["disk-0.qcow2", "disk-1.raw", "disk-2.qcow2"];
        Fit {
            host: "pve-pra".into(),
            name: "erp-db".into(),
            disks: disks
                .iter()
                .map(|d| (vec![format!("120/vm-120-{d}")], format!("120/vm-120-{d}")))
                .collect(),
            disk_format: None,
            copies_raw: false,
            nics,
            keep_macs: true,
            keep_uuid: true,
            drill: false,
            seed: "run1/erp-db".into(),
            boot_folders: crate::inventory::BOOT_FOLDERS.map(String::from).to_vec(),
        }
    }

    fn map() -> Nics {
        Nics::Map(
            [("vmbr0", "vmbr10"), ("vmbr1", "vmbr11")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    fn parse(text: &str) -> Result<Definition, super::DefinitionError> {
        Definition::parse(Format::ProxmoxConf, text.as_bytes())
    }

    #[test]
    fn a_failover_keeps_the_volumes_and_identity_and_maps_every_bridge() {
        let def = parse(CONF).unwrap();
        assert_eq!(def.name().as_deref(), Some("erp-db"));
        let got = rewrite(&def, &fit(map())).unwrap();
        insta::assert_snapshot!(got.text);
        assert_eq!(
            got.notes,
            [
                "the CD-ROM ide2 was emptied (its media local:iso/debian-12.iso is not replicated)",
                "onboot was left out: whether the vm starts with the node is for the runbook's autostart steps",
                "unused0 (local:120/vm-120-disk-9.qcow2) was left out: a volume the vm does not use is not replicated",
            ]
        );
        // What it defines reads back as a definition, the same.
        let again = parse(&got.text).unwrap();
        assert_eq!(again.canonical(), got.text);
    }

    /// Two volumes of the configuration on one copy: refused.
    #[test]
    fn a_configuration_with_one_copy_behind_two_disks_is_refused() {
        let twice = CONF.replace(
            "scsi1: local:120/vm-120-disk-1.raw",
            "scsi1: local:120/vm-120-disk-0.qcow2",
        );
        let e = rewrite(&parse(&twice).unwrap(), &fit(map())).unwrap_err();
        assert!(
            matches!(&e, super::super::DefinitionError::DiskTwice { target, .. } if target == "scsi1"),
            "{e}"
        );
    }

    #[test]
    fn a_drill_copy_is_on_overlays_and_the_drill_bridge_with_new_identifiers() {
        let def = parse(CONF).unwrap();
        let mut f = fit(Nics::All("vmbr-drill".into()));
        f.name = "drill-erp-db".into();
        f.keep_macs = false;
        f.keep_uuid = false;
        f.drill = true;
        for (from, to) in &mut f.disks {
            let d = from[0].trim_start_matches("120/vm-120-");
            let stem = d.rsplit_once('.').unwrap().0;
            *to = format!("900120/vm-900120-{stem}.qcow2");
        }
        let got = rewrite(&def, &f).unwrap();
        insta::assert_snapshot!(got.text);
        for line in got.text.lines().filter(|l| l.starts_with("net")) {
            assert!(line.ends_with(",bridge=vmbr-drill"), "{line}");
            assert!(
                !line.contains("tag=") && !line.contains("BC:24:11:AA"),
                "{line}"
            );
            // A locally administered unicast address: no vendor's, never a group's.
            let mac = line.split(['=', ',']).nth(1).unwrap();
            let first = u8::from_str_radix(&mac[..2], 16).unwrap();
            assert_eq!(first & 0x03, 0x02, "{line}");
        }
        for gone in ["hookscript", "onboot", "4dea22b3", "0f9d1d4e", "erp;prod"] {
            assert!(!got.text.contains(gone), "{gone} in\n{}", got.text);
        }
        // Another run, other identifiers; the same run, the same.
        f.seed = "run2/erp-db".into();
        let other = rewrite(&def, &f).unwrap();
        assert_ne!(other.text, got.text);
        f.seed = "run1/erp-db".into();
        assert_eq!(rewrite(&def, &f).unwrap().text, got.text);
    }

    #[test]
    fn what_cannot_be_read_or_made_safe_is_refused_naming_it() {
        let check = |text: &str| -> String {
            match parse(text).and_then(|d| rewrite(&d, &fit(map()))) {
                Ok(f) => panic!("accepted: {}", f.text),
                Err(e) => e.to_string(),
            }
        };
        let errors = [
            check(&format!("{CONF}\n[before-upgrade]\ncores: 1\n")),
            check(&format!("{CONF}[PENDING]\nmemory: 8192\n")),
            check(&CONF.replace("ostype: l26", "evil: 1")),
            check(&CONF.replace("ostype: l26", "this is not a line")),
            check(&CONF.replace("cores: 2", "cores: 2\ncores: 4")),
            check(&CONF.replace("local:120/vm-120-disk-1.raw", "local:130/vm-130-disk-0.raw")),
            check(&CONF.replace("local:120/vm-120-disk-1.raw", "/dev/sdb")),
            check(&CONF.replace("ostype: l26", "args: -device evil")),
            check(&CONF.replace("ostype: l26", "hostpci0: 0000:01:00.0")),
            check(&CONF.replace("ostype: l26", "usb0: host=1234:5678")),
            check(&CONF.replace("tags: erp;prod", "tags: reprise-drill")),
            check(&CONF.replace("bridge=vmbr1", "bridge=vmbr7")),
            check(&CONF.replace("name: erp-db", "name: erp-db\u{1b}[2J")),
            check(&CONF.replace(
                "scsi1: local:120/vm-120-disk-1.raw,iothread=1,size=100G\n",
                "",
            )),
            check(&format!("description: {}\n{CONF}", "x".repeat(MAX_BYTES))),
        ];
        insta::assert_snapshot!(errors.join("\n"));
    }

    #[test]
    fn a_changed_configuration_shows_a_short_diff() {
        let old = parse(CONF).unwrap().canonical();
        let new = parse(
            &CONF
                .replace("memory: 4096", "memory: 8192")
                .replace("cores: 2", "cores: 4"),
        )
        .unwrap()
        .canonical();
        assert_eq!(diff(&old, &old, 20), None);
        insta::assert_snapshot!(diff(&old, &new, 20).unwrap());
    }
}
