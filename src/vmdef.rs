//! A vm's definition: what a hypervisor needs besides the disks to run it (libvirt's domain
//! XML: CPU, memory, firmware, disks by path, NICs by network and MAC). `replicate` captures it
//! from the primary with each replica point (the driver's `definition` action); drill,
//! failover and failback define the vm on the host they start it on from the definition of
//! the point they start from (the driver's `define` action), made to fit that host by
//! [`rewrite`]: its name, its disks moved to the copies (or a drill's overlays), its NICs
//! mapped through the inventory's `networks`, its MAC addresses kept or left to the
//! hypervisor to choose.
//!
//! A definition comes from a host and is untrusted: it is at most [`MAX_BYTES`], UTF-8, one
//! well-formed `<domain>` element without a document type, and [`rewrite`] refuses what it
//! cannot make safe: a disk that is not one of the vm's copies, a NIC whose network has no
//! mapping, an element of another XML namespace outside `<metadata>` (libvirt's
//! `qemu:commandline` passes arbitrary arguments to QEMU). XML is read and written with
//! `xmltree`; nothing here edits text.
//!
//! Proxmox VE's configuration ([`Format::ProxmoxConf`], `qm config --current`) is read by
//! [`proxmox`], as strictly: a section (`[snapshot]`, `[PENDING]`), a key it does not know, a
//! line it cannot read, each refused naming the line; disks are volumes of a storage
//! (`local:120/vm-120-disk-0.qcow2`), NICs are on bridges.
//!
//! Pure: no IO, no clock. The format is the driver's (`definition_format`); each format has
//! its own reader and `rewrite` here.

use indexmap::IndexMap;
use xmltree::{Element, XMLNode};

mod proxmox;

/// The largest definition accepted from a host: a libvirt domain is a few KiB.
pub const MAX_BYTES: usize = 1 << 20;

/// The formats of definitions drivers capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// libvirt's domain XML (`virsh dumpxml --inactive`).
    LibvirtXml,
    /// Proxmox VE's vm configuration (`qm config VMID --current 1`, qm.conf(5)).
    ProxmoxConf,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["libvirt-xml", "proxmox-conf"];

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "libvirt-xml" => Some(Format::LibvirtXml),
            "proxmox-conf" => Some(Format::ProxmoxConf),
            _ => None,
        }
    }

    /// The extension of a file holding a definition of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::LibvirtXml => "xml",
            Format::ProxmoxConf => "conf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("the definition is {0} bytes, more than the {MAX_BYTES} a definition may be")]
    TooLarge(usize),
    #[error("the definition is empty")]
    Empty,
    #[error("the definition is not UTF-8 text")]
    NotText,
    #[error("the definition is not well-formed XML: {0}")]
    Malformed(String),
    #[error("the definition has a document type declaration, which a domain never has")]
    Doctype,
    #[error("the definition is a <{0}>, not a <domain>")]
    NotDomain(String),
    #[error(
        "the definition nests elements more than {MAX_DEPTH} deep, which a domain never does: refused"
    )]
    TooDeep,
    #[error(
        "the definition has {count} <{child}> in <{parent}>, where libvirt reads one: refused (what it checks in the first, libvirt could take from another)"
    )]
    Twice {
        parent: String,
        child: String,
        count: usize,
    },
    #[error(
        "the definition's disk {target} uses {path}, which is not a copy of one of the vm's disks ({known}): refused"
    )]
    ForeignDisk {
        target: String,
        path: String,
        known: String,
    },
    #[error("the definition's disk {target} is of type `{kind}`: only file disks are replicated")]
    DiskType { target: String, kind: String },
    #[error(
        "the definition's disk {target} has <{what}>: its copy is of the file's own bytes, which a drill's overlay over the copy cannot read through it: refused (replicate the vm while it runs, so that its copies are its disks as the guest sees them)"
    )]
    Layered { target: String, what: String },
    #[error("the definition has no disk for {0}")]
    MissingDisk(String),
    #[error(
        "the definition's disk {target} uses {path}, which another of its disks uses too: started so, the guest would write one copy through two devices and corrupt it; refused"
    )]
    DiskTwice { target: String, path: String },
    #[error(
        "NIC {nic} is on {kind} `{name}`, which has no mapping for host {host}: add `{name} = \"...\"` to the `networks` of host {host} or of its site"
    )]
    Unmapped {
        nic: String,
        kind: String,
        name: String,
        host: String,
    },
    #[error("NIC {nic} is of type `{kind}`, which a network mapping cannot move")]
    NicType { nic: String, kind: String },
    #[error(
        "the definition has a <{0}>, which gives the vm a resource of the host itself: refused (remove it from the vm's definition, or add it by hand where the vm is recovered)"
    )]
    HostResource(String),
    #[error(
        "the definition has an element <{0}> of another XML namespace: refused (it could pass anything to the hypervisor)"
    )]
    Namespace(String),
    #[error("line {line} of the definition (`{text}`): {why}: refused")]
    Line {
        line: usize,
        text: String,
        why: String,
    },
    #[error(
        "the definition's disk {key} is the volume {volume}, which is not one of the vm's disks ({known}): refused (add it to the vm's `disks` in the inventory so that it is replicated, or detach it from the vm)"
    )]
    ForeignVolume {
        key: String,
        volume: String,
        known: String,
    },
    #[error(
        "the definition's `{key}: {value}` gives the vm a resource of the host itself (or passes arguments to QEMU): refused (remove it from the vm's configuration, or add it by hand where the vm is recovered)"
    )]
    HostKey { key: String, value: String },
    #[error("the definition is a template's (`template: 1`), not a vm's that can run: refused")]
    Template,
    #[error(
        "the definition is tagged reprise-drill: it is a drill copy's, not the vm's own: refused"
    )]
    DrillCopy,
}

/// A definition read and checked (not yet fitted to a host).
#[derive(Debug, Clone)]
pub struct Definition {
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Xml(Element),
    Conf(proxmox::Conf),
}

impl Definition {
    /// Reads a definition of `format` as a host sent it.
    pub fn parse(format: Format, bytes: &[u8]) -> Result<Definition, DefinitionError> {
        if bytes.len() > MAX_BYTES {
            return Err(DefinitionError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| DefinitionError::NotText)?;
        if text.trim().is_empty() {
            return Err(DefinitionError::Empty);
        }
        let body = match format {
            Format::LibvirtXml => {
                let root = parse_xml(text)?;
                if is_drill_copy(&root) {
                    return Err(DefinitionError::DrillCopy);
                }
                Body::Xml(root)
            }
            Format::ProxmoxConf => Body::Conf(proxmox::Conf::parse(text)?),
        };
        Ok(Definition { body })
    }

    pub fn format(&self) -> Format {
        match self.body {
            Body::Xml(_) => Format::LibvirtXml,
            Body::Conf(_) => Format::ProxmoxConf,
        }
    }

    /// The vm's name in the definition.
    pub fn name(&self) -> Option<String> {
        match &self.body {
            Body::Xml(root) => root
                .get_child("name")
                .and_then(|n| n.get_text())
                .map(|t| t.into_owned()),
            Body::Conf(c) => c.name(),
        }
    }

    /// The definition written out in a canonical form (XML indented, one element a line; a
    /// Proxmox configuration's keys sorted): the same for the same definition, so that two
    /// can be compared line by line.
    pub fn canonical(&self) -> String {
        match &self.body {
            Body::Xml(root) => canonical_xml(root),
            Body::Conf(c) => c.canonical(),
        }
    }
}

fn parse_xml(text: &str) -> Result<Element, DefinitionError> {
    // A document type could declare entities: a domain never has one.
    if text.contains("<!DOCTYPE") || text.contains("<!ENTITY") {
        return Err(DefinitionError::Doctype);
    }
    // Read by recursion, one call a level: a deeper one would overflow the stack.
    if depth(text) > MAX_DEPTH {
        return Err(DefinitionError::TooDeep);
    }
    let config = xmltree::ParserConfig::new()
        .trim_whitespace(true)
        .ignore_comments(true);
    let root = Element::parse_with_config(text.as_bytes(), config)
        .map_err(|e| DefinitionError::Malformed(one_line(&e.to_string())))?;
    if root.name != "domain" || root.namespace.is_some() {
        return Err(DefinitionError::NotDomain(root.name.clone()));
    }
    foreign_namespace(&root, false)?;
    read_once(&root)?;
    Ok(root)
}

/// How deep a domain's elements may nest (libvirt's go 6 or 7 deep; an application's
/// `<metadata>` a little more).
pub const MAX_DEPTH: usize = 64;

/// How deep the elements of the XML text `text` nest, at most: every `<` that opens a tag
/// not closed by `/>` counts one level down, every `</` one up (comments, CDATA, declarations
/// and quoted attribute values skipped). Text that is not XML is refused by the parser after.
fn depth(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut i, mut level, mut deepest) = (0, 0usize, 0);
    let skip_to = |from: usize, end: &[u8]| {
        b[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(b.len(), |p| from + p + end.len())
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_to(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(i + 2, b"?>");
        } else if rest.starts_with(b"</") {
            level = level.saturating_sub(1);
            i = skip_to(i + 2, b">");
        } else {
            // A start tag: to its `>`, outside quoted values.
            let (mut j, mut quote) = (i + 1, None);
            while j < b.len() {
                match (quote, b[j]) {
                    (None, b'"' | b'\'') => quote = Some(b[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if !(j > i + 1 && b[j - 1] == b'/') {
                level += 1;
                deepest = deepest.max(level);
            }
            i = j + 1;
        }
    }
    deepest
}

/// The elements libvirt reads once, where reprise checks and rewrites the first: the
/// domain's own (all but `<seclabel>` and `<sysinfo>`, which may repeat), and a disk's or a
/// NIC's `<source>`, `<target>` and `<driver>`.
fn read_once(root: &Element) -> Result<(), DefinitionError> {
    fn once(
        parent: &Element,
        only: Option<&[&str]>,
        repeats: &[&str],
    ) -> Result<(), DefinitionError> {
        let mut counts: IndexMap<&str, usize> = IndexMap::new();
        for child in parent.children.iter().filter_map(XMLNode::as_element) {
            let name = child.name.as_str();
            if only.is_none_or(|o| o.contains(&name)) && !repeats.contains(&name) {
                *counts.entry(name).or_default() += 1;
            }
        }
        match counts.into_iter().find(|&(_, n)| n > 1) {
            Some((child, count)) => Err(DefinitionError::Twice {
                parent: parent.name.clone(),
                child: child.into(),
                count,
            }),
            None => Ok(()),
        }
    }
    once(root, None, &["seclabel", "sysinfo"])?;
    let devices = root.children.iter().filter_map(XMLNode::as_element);
    for dev in devices
        .filter(|d| d.name == "devices")
        .flat_map(|d| d.children.iter().filter_map(XMLNode::as_element))
        .filter(|d| d.name == "disk" || d.name == "interface")
    {
        once(dev, Some(&["source", "target", "driver"]), &[])?;
    }
    Ok(())
}

fn canonical_xml(root: &Element) -> String {
    let mut out = Vec::new();
    let config = xmltree::EmitterConfig::new()
        .perform_indent(true)
        .write_document_declaration(false);
    root.write_with_config(&mut out, config)
        .expect("writing to memory");
    let mut s = String::from_utf8(out).expect("xmltree writes UTF-8");
    s.push('\n');
    s
}

fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 200 {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    } else {
        s
    }
}

/// Refuses an element of a namespace outside `<metadata>` (where applications keep theirs).
fn foreign_namespace(e: &Element, in_metadata: bool) -> Result<(), DefinitionError> {
    for child in e.children.iter().filter_map(XMLNode::as_element) {
        if child.namespace.is_some() && !in_metadata {
            let name = match &child.prefix {
                Some(p) => format!("{p}:{}", child.name),
                None => child.name.clone(),
            };
            return Err(DefinitionError::Namespace(name));
        }
        foreign_namespace(
            child,
            in_metadata || (child.name == "metadata" && e.name == "domain"),
        )?;
    }
    Ok(())
}

/// Where a NIC goes on the target host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nics {
    /// Each NIC's network or bridge through this mapping (the target host's, or its site's).
    Map(IndexMap<String, String>),
    /// Every NIC on this libvirt network (a drill's isolated network).
    All(String),
}

/// What the definition becomes on its target host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    /// The host it is defined on (for messages).
    pub host: String,
    /// The domain's name there (`drill-NAME` for a drill's copy).
    pub name: String,
    /// Per disk of the vm: the paths it may have in the definition (on the primary and on
    /// the recovery host), and its path on the target host.
    pub disks: Vec<(Vec<String>, String)>,
    /// The format of the disk files on the target (a drill's overlays are qcow2); `None`:
    /// as defined.
    pub disk_format: Option<String>,
    /// The copies are raw whatever the definition says (read as the guest sees its disks):
    /// what a drill's copy says its overlays are backed by ([`DRILL_FORMAT`]).
    pub copies_raw: bool,
    pub nics: Nics,
    /// Keep each NIC's MAC address; else the hypervisor chooses new ones.
    pub keep_macs: bool,
    /// Keep the domain's UUID; else the hypervisor chooses a new one (a drill's copy runs
    /// beside the vm it copies).
    pub keep_uuid: bool,
    /// A drill's throw-away copy (a Proxmox copy is renamed `drill-NAME`, tagged
    /// `reprise-drill`, with no hookscript and a new vmgenid and SMBIOS UUID).
    pub drill: bool,
    /// What the identifiers a format must write itself are derived from (a Proxmox
    /// configuration's new MACs and UUIDs: the hypervisor chooses none when its file is
    /// written): the run's id and the vm's, so each run has its own.
    pub seed: String,
    /// The folders of the target host a direct kernel boot may load its files from (the
    /// host's `boot_folders`): any other file named would be given to the guest to read, and
    /// relabelled for QEMU by libvirt.
    pub boot_folders: Vec<String>,
}

impl Fit {
    /// The fit a definition the target host already holds must pass as it is (a vm started
    /// on its copy as it is, not redefined): each disk on its copy's own path there (a disk
    /// at its primary's path is another file on this host, or the primary's own through a
    /// share), each NIC on one of this host's networks.
    pub fn as_held(&self) -> Fit {
        let mut fit = self.clone();
        for (from, to) in &mut fit.disks {
            *from = vec![to.clone()];
        }
        if let Nics::Map(map) = &fit.nics {
            fit.nics = Nics::Map(map.values().map(|v| (v.clone(), v.clone())).collect());
        }
        fit
    }
}

/// What [`rewrite`] made, and what it did that the operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub text: String,
    pub notes: Vec<String>,
}

/// Fits a definition to its target host (see [`Fit`]); every problem is an error.
pub fn rewrite(def: &Definition, fit: &Fit) -> Result<Fitted, DefinitionError> {
    match &def.body {
        Body::Xml(root) => rewrite_xml(root, fit),
        Body::Conf(c) => proxmox::rewrite(c, fit),
    }
}

/// What begins the `<description>` of a drill's copy (libvirt): its `drill-stop` removes
/// only a domain whose description begins so, and no definition that does is taken for a
/// vm's own.
pub const DRILL_MARK: &str = "reprise-drill";

/// The name of a libvirt domain definition read as XML only (a drill copy's too, which
/// [`Definition::parse`] refuses to take for a vm's own).
pub fn libvirt_name(bytes: &[u8]) -> Result<String, DefinitionError> {
    libvirt_text(bytes, "name")
}

/// The text of the top element `child` of a libvirt domain definition read as XML only;
/// empty when it has none.
fn libvirt_text(bytes: &[u8], child: &str) -> Result<String, DefinitionError> {
    if bytes.len() > MAX_BYTES {
        return Err(DefinitionError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DefinitionError::NotText)?;
    let root = parse_xml(text)?;
    Ok(root
        .get_child(child)
        .and_then(|n| n.get_text())
        .map(|t| t.into_owned())
        .unwrap_or_default())
}

/// The `<description>` of a libvirt domain definition (as `virsh desc` prints it), read as
/// XML only; empty when it has none.
pub fn libvirt_description(bytes: &[u8]) -> Result<String, DefinitionError> {
    libvirt_text(bytes, "description")
}

/// What a drill copy's `<description>` says of each overlay, one line a disk: `disk PATH:
/// FORMAT`, the format of the copy it is backed by, as the point's definition gives it
/// (`raw` when it gives none, as libvirt takes it; `raw` for copies read as the guest sees
/// its disks). The driver's `drill-start` makes each overlay over that format, never over
/// one read from the copy's own first bytes: a raw disk's bytes are the guest's, and a guest
/// can write an image header there.
pub const DRILL_FORMAT: &str = "disk";

/// Whether a libvirt domain is a drill's copy ([`DRILL_MARK`]).
fn is_drill_copy(root: &Element) -> bool {
    root.get_child("description")
        .and_then(|d| d.get_text())
        .is_some_and(|t| t.trim_start().starts_with(DRILL_MARK))
}

fn rewrite_xml(root: &Element, fit: &Fit) -> Result<Fitted, DefinitionError> {
    let mut root = root.clone();
    let mut notes = Vec::new();
    set_text(child_or_new(&mut root, "name"), &fit.name);
    if fit.drill {
        set_text(
            child_or_new(&mut root, "description"),
            &format!(
                "{DRILL_MARK}: a throw-away copy of a replica point, made by reprise ({}); its drill-stop removes it",
                fit.seed
            ),
        );
    }
    if !fit.keep_uuid {
        remove_children(&mut root, "uuid");
        // Nor under another name: the SMBIOS UUID (which libvirt takes for the domain's when
        // <uuid> is missing) and the generation id the guest sees.
        remove_children(&mut root, "genid");
        // Every <sysinfo> (there may be several), every <system> in it.
        for sysinfo in root
            .children
            .iter_mut()
            .filter_map(XMLNode::as_mut_element)
            .filter(|e| e.name == "sysinfo")
        {
            for system in sysinfo
                .children
                .iter_mut()
                .filter_map(XMLNode::as_mut_element)
                .filter(|e| e.name == "system")
            {
                system.children.retain(|c| {
                    c.as_element().is_none_or(|e| {
                        !(e.name == "entry"
                            && e.attributes.get("name").map(String::as_str) == Some("uuid"))
                    })
                });
            }
        }
    }
    // A drill's copy runs under the host's own security labels (libvirt's dynamic ones), not
    // those the primary gave the vm (a static label shared with production, none at all).
    if fit.drill && root.get_child("seclabel").is_some() {
        remove_children(&mut root, "seclabel");
        notes.push("its security labels are the host's own".into());
    }
    // UEFI variables are the target host's own: libvirt chooses the file (by the domain's
    // name) and fills it from the template; a path from another host is never written to.
    if let Some(os) = root.get_mut_child("os") {
        for nv in os
            .children
            .iter_mut()
            .filter_map(XMLNode::as_mut_element)
            .filter(|c| c.name == "nvram")
        {
            nv.children.clear();
        }
        // Firmware QEMU may write to is a file of the host, named by another host (a pflash
        // loader is written unless it says it is read only).
        if let Some(l) = os.get_child("loader")
            && l.get_text().is_some_and(|t| !t.trim().is_empty())
        {
            let readonly = l.attributes.get("readonly").map(String::as_str);
            let pflash = l.attributes.get("type").map(String::as_str) == Some("pflash");
            if readonly == Some("no") || (pflash && readonly != Some("yes")) {
                return Err(DefinitionError::HostResource(format!(
                    "loader readonly='{}'",
                    readonly.unwrap_or("")
                )));
            }
        }
        // A kernel, an initrd, a device tree or ACPI tables loaded from files of the host
        // (a direct kernel boot): given to the guest to read (and relabelled for QEMU by
        // libvirt), so only from the host's boot folders, never from where the disks and
        // copies are (another vm's copy), nor by a path that cannot be judged (relative, or
        // climbing with `..`). The definition is another host's: a file of this host it names
        // (`/etc/shadow` as an initrd) is not its to give.
        use std::path::Path;
        let folders: Vec<&Path> = fit
            .disks
            .iter()
            .flat_map(|(from, to)| from.iter().chain(std::iter::once(to)))
            .filter_map(|p| Path::new(p).parent())
            .filter(|d| d.components().count() > 1)
            .collect();
        let mut files: Vec<(String, String)> = ["kernel", "initrd", "dtb"]
            .into_iter()
            .filter_map(|name| {
                let text = os.get_child(name)?.get_text()?.trim().to_string();
                (!text.is_empty()).then(|| (format!("os/{name}"), text))
            })
            .collect();
        if let Some(acpi) = os.get_child("acpi") {
            for table in acpi
                .children
                .iter()
                .filter_map(XMLNode::as_element)
                .filter(|e| e.name == "table")
            {
                let text = table.get_text().map(|t| t.trim().to_string());
                files.push(("os/acpi/table".into(), text.unwrap_or_default()));
            }
        }
        for (what, path) in files {
            let p = Path::new(&path);
            let unjudged =
                !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir);
            if unjudged {
                return Err(DefinitionError::HostResource(format!(
                    "{what} at `{path}`, a path that cannot be judged"
                )));
            }
            if folders.iter().any(|d| p.starts_with(d)) {
                return Err(DefinitionError::HostResource(format!(
                    "{what} at {path}, where the disks and their copies are"
                )));
            }
            if !fit
                .boot_folders
                .iter()
                .any(|d| p.starts_with(d) && p != Path::new(d))
            {
                return Err(DefinitionError::HostResource(format!(
                    "{what} at {path}, outside the boot folders of {} ({}; its `boot_folders` in the inventory)",
                    fit.host,
                    if fit.boot_folders.is_empty() {
                        "none".to_string()
                    } else {
                        fit.boot_folders.join(", ")
                    }
                )));
            }
        }
    }
    // Firmware configuration entries read from files of the host (`<sysinfo type='fwcfg'>`).
    for sysinfo in root
        .children
        .iter()
        .filter_map(XMLNode::as_element)
        .filter(|e| e.name == "sysinfo")
    {
        if sysinfo
            .children
            .iter()
            .filter_map(XMLNode::as_element)
            .any(|e| e.name == "entry" && e.attributes.contains_key("file"))
        {
            return Err(DefinitionError::HostResource(
                "sysinfo entry read from a file".into(),
            ));
        }
    }
    let Some(devices) = root.get_mut_child("devices") else {
        if let Some((_, to)) = fit.disks.first() {
            return Err(DefinitionError::MissingDisk(to.clone()));
        }
        return Ok(Fitted {
            text: canonical_xml(&root),
            notes,
        });
    };
    // The hypervisor the primary ran it with is a program of that host: this one's own is
    // taken (libvirt's default for the machine).
    if devices.get_child("emulator").is_some() {
        remove_children(devices, "emulator");
        notes.push("the emulator is this host's default".into());
    }
    // USB redirection reaches out of the host, around the drill's isolated network.
    if fit.drill && devices.get_child("redirdev").is_some() {
        remove_children(devices, "redirdev");
        notes.push("its USB redirections were removed (a drill's copy reaches nothing outside its network)".into());
    }
    let mut found: Vec<Option<String>> = vec![None; fit.disks.len()];
    let mut nic = 0;
    for dev in devices
        .children
        .iter_mut()
        .filter_map(XMLNode::as_mut_element)
    {
        match dev.name.as_str() {
            "disk" => disk(dev, fit, &mut found, &mut notes)?,
            "interface" => {
                nic += 1;
                interface(dev, nic, fit)?;
            }
            // A folder, a device, a certificate store, memory or a file of the host: what the
            // definition names there is another host's (and may be written: a lease, a
            // persistent store, a memory backed by a file).
            name @ ("filesystem" | "hostdev" | "smartcard" | "shmem" | "lease" | "pstore") => {
                return Err(DefinitionError::HostResource(name.to_string()));
            }
            "memory" if has_path(dev) => {
                return Err(DefinitionError::HostResource(
                    "memory backed by a file".into(),
                ));
            }
            "tpm"
                if dev.get_child("backend").is_some_and(|b| {
                    b.attributes.get("type").map(String::as_str) != Some("emulator")
                }) =>
            {
                return Err(DefinitionError::HostResource("tpm of the host".into()));
            }
            "input"
                if matches!(
                    dev.attributes.get("type").map(String::as_str),
                    Some("evdev" | "passthrough")
                ) =>
            {
                return Err(DefinitionError::HostResource(
                    "input device of the host".into(),
                ));
            }
            "serial" | "console" | "parallel" | "channel" => char_device(dev, fit, &mut notes),
            "graphics" => graphics(dev, fit, &mut notes),
            // Entropy from another host's daemon, file or socket: the host's own here.
            "rng"
                if dev
                    .get_child("backend")
                    .is_some_and(|b| b.attributes.get("model").map(String::as_str) == Some("egd")) =>
            {
                remove_children(dev, "backend");
                let mut b = Element::new("backend");
                b.attributes.insert("model".into(), "random".into());
                b.children.push(XMLNode::Text("/dev/urandom".into()));
                dev.children.push(XMLNode::Element(b));
                notes.push("its entropy source is this host's /dev/urandom".into());
            }
            "tpm" => notes.push(
                "its TPM's state is the primary host's own and is not replicated: it has a new, empty TPM here (keys sealed to the old one, BitLocker or LUKS, need their recovery keys)".into(),
            ),
            "audio" if dev.attributes.get("type").map(String::as_str) == Some("file") => {
                dev.attributes.insert("type".into(), "none".into());
                dev.attributes.shift_remove("path");
                notes.push("its audio to a file of the host is none here".into());
            }
            _ => {}
        }
    }
    if let Some(i) = found.iter().position(Option::is_none) {
        return Err(DefinitionError::MissingDisk(fit.disks[i].0.join(" or ")));
    }
    if fit.drill {
        let description = child_or_new(&mut root, "description");
        let mut text = description.get_text().unwrap_or_default().into_owned();
        for ((_, to), format) in fit.disks.iter().zip(&found) {
            // A word, or nothing the driver takes: a format is the primary's text.
            let format = format
                .as_deref()
                .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or("unknown");
            text.push_str(&format!("\n{DRILL_FORMAT} {to}: {format}"));
        }
        set_text(description, &text);
    }
    Ok(Fitted {
        text: canonical_xml(&root),
        notes,
    })
}

/// A disk of the definition moved to its file on the target; `found[i]` takes the format
/// the definition gave the copy of disk `i` (before a drill's overlay format replaces it).
fn disk(
    dev: &mut Element,
    fit: &Fit,
    found: &mut [Option<String>],
    notes: &mut Vec<String>,
) -> Result<(), DefinitionError> {
    let target = dev
        .get_child("target")
        .and_then(|t| t.attributes.get("dev").cloned())
        .unwrap_or_else(|| "?".into());
    let device = dev
        .attributes
        .get("device")
        .cloned()
        .unwrap_or_else(|| "disk".into());
    let kind = dev
        .attributes
        .get("type")
        .cloned()
        .unwrap_or_else(|| "file".into());
    if device == "cdrom" || device == "floppy" {
        // Removable media: the host's file is not replicated; the drive stays, empty.
        if dev.get_child("source").is_some() {
            remove_children(dev, "source");
            notes.push(format!(
                "the {device} {target} was emptied (its media is not replicated)"
            ));
        }
        return Ok(());
    }
    if kind != "file" {
        return Err(DefinitionError::DiskType { target, kind });
    }
    let path = dev
        .get_child("source")
        .and_then(|s| s.attributes.get("file").cloned())
        .unwrap_or_default();
    let Some(i) = fit.disks.iter().position(|(from, _)| from.contains(&path)) else {
        let known: Vec<&str> = fit
            .disks
            .iter()
            .flat_map(|(from, _)| from.iter().map(String::as_str))
            .collect();
        return Err(DefinitionError::ForeignDisk {
            target,
            path,
            known: known.join(", "),
        });
    };
    if found[i].is_some() {
        return Err(DefinitionError::DiskTwice { target, path });
    }
    // What libvirt opens the file as: the driver's type, raw when none is given.
    found[i] = Some(match fit.copies_raw {
        true => "raw".to_string(),
        false => dev
            .get_child("driver")
            .and_then(|d| d.attributes.get("type").cloned())
            .unwrap_or_else(|| "raw".into()),
    });
    // Only the copy: no backing chain, no block copy under way, no data file (children of
    // <source>). A copy of the file's own bytes is read as the primary read the file: its
    // encryption and its slices are kept (a copy without them would give the guest the
    // file's raw bytes). A copy read as the guest sees the disk holds the guest's bytes:
    // read through them again, it would be another disk.
    remove_children(dev, "backingStore");
    remove_children(dev, "mirror");
    let layered = ["encryption", "slices"].into_iter().find(|name| {
        dev.get_child(*name).is_some()
            || dev
                .get_child("source")
                .is_some_and(|s| s.get_child(*name).is_some())
    });
    let kept: &[&str] = match (fit.copies_raw, fit.drill, layered) {
        (true, _, _) => {
            remove_children(dev, "encryption");
            &[]
        }
        // A drill boots an overlay over the copy: what reads the file's bytes would read the
        // overlay's.
        (false, true, Some(what)) => {
            return Err(DefinitionError::Layered {
                target,
                what: what.to_string(),
            });
        }
        (false, _, _) => &["encryption", "slices"],
    };
    let source = dev.get_mut_child("source").expect("read above");
    source.attributes.clear();
    source.children.retain(|c| {
        c.as_element()
            .is_some_and(|e| e.namespace.is_none() && kept.contains(&e.name.as_str()))
    });
    source
        .attributes
        .insert("file".into(), fit.disks[i].1.clone());
    if let Some(format) = &fit.disk_format {
        child_or_new(dev, "driver")
            .attributes
            .insert("type".into(), format.clone());
    }
    Ok(())
}

/// A console's graphics: a socket path of the host's is never named (QEMU would remove what
/// is there to bind it); in a drill, no fixed port (production's copy may need it) and no
/// address of the host's: the hypervisor chooses.
fn graphics(dev: &mut Element, fit: &Fit, notes: &mut Vec<String>) {
    let mut changed = dev.attributes.shift_remove("socket").is_some();
    let before = dev.children.len();
    dev.children.retain(|c| {
        c.as_element().is_none_or(|e| {
            !(e.name == "listen"
                && (e.attributes.get("type").map(String::as_str) == Some("socket")
                    || e.attributes.contains_key("socket")))
        })
    });
    changed |= dev.children.len() != before;
    if fit.drill {
        for a in ["port", "tlsPort", "websocket", "listen"] {
            changed |= dev.attributes.shift_remove(a).is_some();
        }
        let before = dev.children.len();
        remove_children(dev, "listen");
        changed |= dev.children.len() != before;
        if dev.attributes.contains_key("autoport") || changed {
            dev.attributes.insert("autoport".into(), "yes".into());
        }
    }
    if changed {
        notes.push("its console's port, address or socket are the hypervisor's choice here".into());
    }
}

/// Whether `dev` names a path of the host (`<source><path>`, or a `path` attribute).
fn has_path(dev: &Element) -> bool {
    dev.get_child("source").is_some_and(|s| {
        s.attributes.contains_key("path")
            || s.get_child("path").is_some()
            || s.attributes.contains_key("file")
    })
}

/// A serial port, console, parallel port or channel backed by a file, a pipe, a device or a
/// socket path of the host: the path is another host's (and QEMU would write to it), so it
/// becomes a pty (a channel's socket path is left to libvirt). Its log file, whatever its
/// type, is another host's path too (libvirt would write it, truncating what is there):
/// removed. In a drill, one over the network (tcp, udp) becomes a pty too: a drill's copy
/// reaches nothing outside its isolated network.
fn char_device(dev: &mut Element, fit: &Fit, notes: &mut Vec<String>) {
    let kind = dev.attributes.get("type").cloned().unwrap_or_default();
    let path = dev
        .get_child("source")
        .and_then(|s| s.attributes.get("path").cloned());
    let what = dev.name.clone();
    if let Some(log) = dev
        .get_child("log")
        .and_then(|l| l.attributes.get("file").cloned())
    {
        remove_children(dev, "log");
        notes.push(format!(
            "the {what}'s log to the host's file {log} was removed"
        ));
    }
    if fit.drill && matches!(kind.as_str(), "tcp" | "udp") {
        dev.attributes.insert("type".into(), "pty".into());
        remove_children(dev, "source");
        remove_children(dev, "protocol");
        notes.push(format!(
            "the {what} over the network ({kind}) is a pty here (a drill's copy reaches nothing outside its network)"
        ));
        return;
    }
    match kind.as_str() {
        "unix" if what == "channel" => {
            if let Some(path) = path
                && let Some(source) = dev.get_mut_child("source")
            {
                source.attributes.shift_remove("path");
                notes.push(format!(
                    "the {what}'s socket {path} was left to the hypervisor to name"
                ));
            }
        }
        "file" | "pipe" | "dev" | "unix" => {
            dev.attributes.insert("type".into(), "pty".into());
            remove_children(dev, "source");
            remove_children(dev, "log");
            notes.push(format!(
                "the {what} on the host's {kind} {} is a pty here",
                path.unwrap_or_else(|| "?".into())
            ));
        }
        _ => {}
    }
}

fn interface(dev: &mut Element, n: usize, fit: &Fit) -> Result<(), DefinitionError> {
    let kind = dev
        .attributes
        .get("type")
        .cloned()
        .unwrap_or_else(|| "?".into());
    let mac = dev
        .get_child("mac")
        .and_then(|m| m.attributes.get("address").cloned());
    let nic = match &mac {
        Some(m) => format!("#{n} ({m})"),
        None => format!("#{n}"),
    };
    if !fit.keep_macs {
        remove_children(dev, "mac");
    }
    // Names the hypervisor gave the NIC on the primary mean nothing here.
    remove_children(dev, "target");
    match &fit.nics {
        Nics::All(network) => {
            dev.attributes.insert("type".into(), "network".into());
            let source = child_or_new(dev, "source");
            source.attributes.clear();
            source.attributes.insert("network".into(), network.clone());
            Ok(())
        }
        Nics::Map(map) => {
            let attr = match kind.as_str() {
                "network" => "network",
                "bridge" => "bridge",
                _ => return Err(DefinitionError::NicType { nic, kind }),
            };
            let name = dev
                .get_child("source")
                .and_then(|s| s.attributes.get(attr).cloned())
                .unwrap_or_default();
            let Some(to) = map.get(&name) else {
                return Err(DefinitionError::Unmapped {
                    nic,
                    kind,
                    name,
                    host: fit.host.clone(),
                });
            };
            child_or_new(dev, "source")
                .attributes
                .insert(attr.into(), to.clone());
            Ok(())
        }
    }
}

fn child_or_new<'e>(e: &'e mut Element, name: &str) -> &'e mut Element {
    if e.get_child(name).is_none() {
        e.children.push(XMLNode::Element(Element::new(name)));
    }
    e.get_mut_child(name).expect("present")
}

fn set_text(e: &mut Element, text: &str) {
    e.children.clear();
    e.children.push(XMLNode::Text(text.to_string()));
}

fn remove_children(e: &mut Element, name: &str) {
    e.children
        .retain(|c| c.as_element().is_none_or(|c| c.name != name));
}

/// The lines that differ between two definitions (canonical forms), with one line of
/// context, at most `max` lines; `None` when they are the same.
pub fn diff(old: &str, new: &str, max: usize) -> Option<String> {
    if old == new {
        return None;
    }
    let d = similar::TextDiff::from_lines(old, new);
    let mut out = Vec::new();
    for group in d.grouped_ops(1) {
        if !out.is_empty() {
            out.push("  ...".to_string());
        }
        for op in group {
            for change in d.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                    similar::ChangeTag::Equal => ' ',
                };
                out.push(format!("{sign} {}", change.value().trim_end()));
            }
        }
    }
    let total = out.len();
    if total > max {
        out.truncate(max);
        out.push(format!("  ... ({} more lines)", total - max));
    }
    Some(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "<domain type='kvm'>
  <name>erp-db</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <metadata><libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'><libosinfo:os id='http://debian.org/debian/12'/></libosinfo:libosinfo></metadata>
  <memory unit='KiB'>4194304</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/erp-db_VARS.fd</nvram>
  </os>
  <devices>
    <!-- the system disk -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/erp-db-system.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/erp-db-data.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/srv/iso/debian-12.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:01'/>
      <source bridge='br-prod'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:02'/>
      <source network='backup'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/erp-db.console'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/erp-db.agent'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
  </devices>
</domain>";

    fn fit(nics: Nics) -> Fit {
        Fit {
            host: "hv-pra".into(),
            name: "erp-db".into(),
            disks: vec![
                (
                    vec![
                        "/var/lib/libvirt/images/erp-db-system.qcow2".into(),
                        "/srv/replicas/erp-db-system.qcow2".into(),
                    ],
                    "/srv/replicas/erp-db-system.qcow2".into(),
                ),
                (
                    vec!["/var/lib/libvirt/images/erp-db-data.raw".into()],
                    "/srv/replicas/erp-db-data.raw".into(),
                ),
            ],
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

    fn map(pairs: &[(&str, &str)]) -> Nics {
        Nics::Map(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_failover_moves_disks_to_the_copies_and_maps_every_nic() {
        let def = Definition::parse(Format::LibvirtXml, DOMAIN.as_bytes()).unwrap();
        let got = rewrite(
            &def,
            &fit(map(&[("br-prod", "br-pra"), ("backup", "backup-pra")])),
        )
        .unwrap();
        insta::assert_snapshot!(got.text);
        assert_eq!(
            got.notes,
            [
                "the cdrom sda was emptied (its media is not replicated)",
                "the serial on the host's file /var/log/libvirt/qemu/erp-db.console is a pty here",
                "the channel's socket /var/lib/libvirt/qemu/channel/target/erp-db.agent was left to the hypervisor to name",
            ]
        );
    }

    /// Two disks of the definition on one copy (the data disk's device pointing at the
    /// system disk's file, in the definition a point captured): refused, never started with
    /// one copy behind two devices.
    #[test]
    fn a_definition_with_one_copy_behind_two_disks_is_refused() {
        let twice = DOMAIN.replace(
            "/var/lib/libvirt/images/erp-db-data.raw",
            "/var/lib/libvirt/images/erp-db-system.qcow2",
        );
        let def = Definition::parse(Format::LibvirtXml, twice.as_bytes()).unwrap();
        let e = rewrite(&def, &fit(Nics::All("br-pra".into()))).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::DiskTwice { target, .. } if target == "vdb"),
            "{e}"
        );
    }

    /// A vm started on its copy as it is keeps the definition its recovery host holds: one
    /// whose disks are the copies passes; one whose disk is at its primary's path (another
    /// file on that host, or the primary's own through a share) is refused, naming it.
    #[test]
    fn a_definition_held_on_the_recovery_host_passes_only_on_the_copies() {
        let held = fit(map(&[("br-prod", "br-pra"), ("backup", "backup-pra")])).as_held();
        let on_copies = DOMAIN
            .replace(
                "/var/lib/libvirt/images/erp-db-system.qcow2",
                "/srv/replicas/erp-db-system.qcow2",
            )
            .replace(
                "/var/lib/libvirt/images/erp-db-data.raw",
                "/srv/replicas/erp-db-data.raw",
            )
            .replace("br-prod", "br-pra")
            .replace("'backup'", "'backup-pra'");
        let def = Definition::parse(Format::LibvirtXml, on_copies.as_bytes()).unwrap();
        rewrite(&def, &held).unwrap();
        let on_primary_path = on_copies.replace(
            "/srv/replicas/erp-db-data.raw",
            "/var/lib/libvirt/images/erp-db-data.raw",
        );
        let def = Definition::parse(Format::LibvirtXml, on_primary_path.as_bytes()).unwrap();
        let e = rewrite(&def, &held).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::ForeignDisk { target, path, .. }
                if target == "vdb" && path == "/var/lib/libvirt/images/erp-db-data.raw"),
            "{e}"
        );
        // On the primary's networks: not this host's.
        let on_prod = on_copies.replace("br-pra", "br-prod");
        let def = Definition::parse(Format::LibvirtXml, on_prod.as_bytes()).unwrap();
        assert!(rewrite(&def, &held).is_err());
    }

    #[test]
    fn a_drill_copy_is_renamed_on_the_drill_network_with_new_identifiers() {
        let def = Definition::parse(Format::LibvirtXml, DOMAIN.as_bytes()).unwrap();
        let mut f = fit(Nics::All("reprise-drill".into()));
        f.name = "drill-erp-db".into();
        f.keep_macs = false;
        f.keep_uuid = false;
        f.disk_format = Some("qcow2".into());
        f.disks[0].1 = "/srv/overlays/run1/erp-db/erp-db-system.qcow2".into();
        f.disks[1].1 = "/srv/overlays/run1/erp-db/erp-db-data.raw".into();
        let got = rewrite(&def, &f).unwrap();
        insta::assert_snapshot!(got.text);
    }

    /// A copy of a disk file's own bytes is read as the primary read the file: its
    /// encryption and its slices go with it (without them the guest would get the file's
    /// raw bytes, ciphertext or the whole file); a copy read as the guest sees the disk holds
    /// the guest's bytes, read through nothing again. A drill, which boots an overlay over a
    /// copy of the file's bytes, cannot carry them: refused, never booted on other data.
    #[test]
    fn a_disk_s_encryption_and_slices_go_with_a_copy_of_its_file_only() {
        let layered = DOMAIN.replace(
            "<source file='/var/lib/libvirt/images/erp-db-data.raw'/>",
            "<source file='/var/lib/libvirt/images/erp-db-data.raw'><slices><slice type='storage' offset='1048576' size='8388608'/></slices><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption><dataStore type='file'><source file='/x'/></dataStore></source>",
        );
        assert_ne!(layered, DOMAIN);
        let def = Definition::parse(Format::LibvirtXml, layered.as_bytes()).unwrap();
        let data_source = |text: &str| -> Element {
            let root = parse_xml(text).unwrap();
            root.get_child("devices")
                .unwrap()
                .children
                .iter()
                .filter_map(XMLNode::as_element)
                .filter(|d| d.name == "disk")
                .find_map(|d| {
                    d.get_child("source").filter(|s| {
                        s.attributes.get("file").map(String::as_str)
                            == Some("/srv/replicas/erp-db-data.raw")
                    })
                })
                .cloned()
                .expect("the data disk's copy")
        };
        let names = |e: &Element| -> Vec<String> {
            e.children
                .iter()
                .filter_map(XMLNode::as_element)
                .map(|c| c.name.clone())
                .collect()
        };
        let mut f = fit(Nics::All("lan".into()));
        let got = rewrite(&def, &f).unwrap();
        assert_eq!(names(&data_source(&got.text)), ["slices", "encryption"]);
        f.copies_raw = true;
        let got = rewrite(&def, &f).unwrap();
        assert!(names(&data_source(&got.text)).is_empty(), "{}", got.text);
        // Written under the disk itself, as older libvirt does: the same.
        let legacy = DOMAIN.replace(
            "<source file='/var/lib/libvirt/images/erp-db-data.raw'/>",
            "<encryption format='luks'/><source file='/var/lib/libvirt/images/erp-db-data.raw'/>",
        );
        let def = Definition::parse(Format::LibvirtXml, legacy.as_bytes()).unwrap();
        let got = rewrite(&def, &f).unwrap();
        assert!(!got.text.contains("<encryption"), "{}", got.text);
        f.copies_raw = false;
        let got = rewrite(&def, &f).unwrap();
        assert!(got.text.contains("<encryption"), "{}", got.text);
        f.drill = true;
        let e = rewrite(&def, &f).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Layered { what, .. } if what == "encryption"),
            "{e}"
        );
        assert!(
            e.to_string().contains("replicate the vm while it runs"),
            "{e}"
        );
    }

    /// A drill copy's description says, for each overlay, the format of the copy it is
    /// backed by as the point's definition gives it (its `drill-start` makes the overlay over
    /// that format, never one read from the copy's first bytes): raw when the definition gives
    /// none, raw for copies read as the guest sees its disks, and nothing the driver takes
    /// when the definition's text is not a word (a line of its own smuggled in).
    #[test]
    fn a_drill_copy_says_the_format_of_each_copy_its_overlays_are_backed_by() {
        let described = |text: &str, copies_raw: bool| {
            let def = Definition::parse(Format::LibvirtXml, text.as_bytes()).unwrap();
            let mut f = fit(Nics::All("reprise-drill".into()));
            f.name = "drill-erp-db".into();
            (f.keep_macs, f.keep_uuid, f.drill, f.copies_raw) = (false, false, true, copies_raw);
            f.disk_format = Some("qcow2".into());
            f.disks[0].1 = "/srv/overlays/run1/erp-db/erp-db-system.qcow2".into();
            f.disks[1].1 = "/srv/overlays/run1/erp-db/erp-db-data.raw".into();
            let got = rewrite(&def, &f).unwrap();
            let root = parse_xml(&got.text).unwrap();
            let overlays: Vec<String> = root
                .get_child("devices")
                .unwrap()
                .children
                .iter()
                .filter_map(XMLNode::as_element)
                .filter(|d| {
                    d.name == "disk"
                        && d.attributes.get("device").map(String::as_str) == Some("disk")
                })
                .map(|d| d.get_child("driver").unwrap().attributes["type"].clone())
                .collect();
            assert_eq!(overlays, ["qcow2", "qcow2"]);
            let text = libvirt_description(got.text.as_bytes()).unwrap();
            assert!(text.starts_with(DRILL_MARK), "{text}");
            text.lines().skip(1).map(str::to_string).collect::<Vec<_>>()
        };
        assert_eq!(
            described(DOMAIN, false),
            [
                "disk /srv/overlays/run1/erp-db/erp-db-system.qcow2: qcow2",
                "disk /srv/overlays/run1/erp-db/erp-db-data.raw: raw",
            ]
        );
        assert_eq!(
            described(DOMAIN, true),
            [
                "disk /srv/overlays/run1/erp-db/erp-db-system.qcow2: raw",
                "disk /srv/overlays/run1/erp-db/erp-db-data.raw: raw",
            ]
        );
        let untyped = DOMAIN.replace("<driver name='qemu' type='raw'/>", "<driver name='qemu'/>");
        assert_eq!(
            described(&untyped, false)[1],
            "disk /srv/overlays/run1/erp-db/erp-db-data.raw: raw"
        );
        let smuggled = DOMAIN.replace(
            "type='qcow2'/>",
            "type='vmdk&#10;disk /srv/overlays/run1/erp-db/erp-db-data.raw: qcow2'/>",
        );
        assert_eq!(
            described(&smuggled, false),
            [
                "disk /srv/overlays/run1/erp-db/erp-db-system.qcow2: unknown",
                "disk /srv/overlays/run1/erp-db/erp-db-data.raw: raw",
            ]
        );
    }

    /// Files of the host a definition names, which libvirt or QEMU would write on the host
    /// it is defined on (a console's log, a memory backed by a file, a writable firmware,
    /// audio to a file), are never named there: removed, or the definition refused; in a
    /// drill, nothing reaches outside the isolated network (a serial port over tcp, USB
    /// redirection).
    #[test]
    fn a_definition_names_no_file_of_the_host_that_would_be_written() {
        let mapped = fit(map(&[("br-prod", "br-pra"), ("backup", "backup-pra")]));
        let extra = "<serial type='pty'><log file='/srv/replicas/erp-db-data.raw' append='off'/><target port='1'/></serial>\
            <console type='tcp'><source mode='connect' host='192.0.2.9' service='4555'/><log file='/var/log/x.log'/><target type='serial'/></console>\
            <audio id='1' type='file' path='/srv/replicas/erp-db-system.qcow2'/>\
            <redirdev bus='usb' type='tcp'><source mode='connect' host='192.0.2.9' service='4000'/></redirdev>";
        let text = DOMAIN.replace(
            "<devices>",
            &format!(
                "<devices><emulator>/usr/local/bin/qemu-evil</emulator>{extra}\
                 <graphics type='vnc' socket='/srv/replicas/socket-of-the-copy'/>\
                 <rng model='virtio'><backend model='egd' type='file'><source path='/srv/replicas/rng-of-the-copy'/></backend></rng>\
                 <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"
            ),
        );
        let def = Definition::parse(Format::LibvirtXml, text.as_bytes()).unwrap();
        let got = rewrite(&def, &mapped).unwrap();
        for gone in [
            "/srv/replicas/erp-db-data.raw' append",
            "/var/log/x.log",
            "qemu-evil",
            "path='/srv/replicas/erp-db-system.qcow2'",
        ] {
            assert!(!got.text.contains(gone), "{gone}: {}", got.text);
        }
        assert!(
            got.text.contains("<audio id=\"1\" type=\"none\""),
            "{}",
            got.text
        );
        for gone in ["socket-of-the-copy", "rng-of-the-copy"] {
            assert!(!got.text.contains(gone), "{gone}: {}", got.text);
        }
        assert!(got.text.contains(">/dev/urandom</backend>"), "{}", got.text);
        assert!(
            got.notes
                .iter()
                .any(|n| n.contains("a new, empty TPM here")),
            "{:?}",
            got.notes
        );
        // A failover keeps what reaches the network as the primary had it.
        assert!(got.text.contains("192.0.2.9"), "{}", got.text);
        assert!(
            got.notes
                .iter()
                .any(|n| n
                    .contains("log to the host's file /srv/replicas/erp-db-data.raw was removed")),
            "{:?}",
            got.notes
        );
        // A drill's copy reaches nothing outside its network, and has no identity of the vm's.
        let text = text
            .replace(
                "</os>",
                "</os><genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid><sysinfo type='fwcfg'><entry name='opt/x'>y</entry></sysinfo><sysinfo type='smbios'><system><entry name='manufacturer'>School</entry><entry name='uuid'>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</entry></system></sysinfo>",
            )
            .replace(
                "</devices>",
                "<graphics type='vnc' port='5901' autoport='no' listen='10.0.0.5'><listen type='address' address='10.0.0.5'/></graphics></devices><seclabel type='static' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel>",
            );
        let def = Definition::parse(Format::LibvirtXml, text.as_bytes()).unwrap();
        let mut drill = fit(Nics::All("reprise-drill".into()));
        drill.drill = true;
        drill.keep_uuid = false;
        drill.keep_macs = false;
        let got = rewrite(&def, &drill).unwrap();
        for gone in [
            "4dea22b3", "43dc0cf8", "<genid", "5901", "10.0.0.5", "seclabel", "c1,c2",
        ] {
            assert!(!got.text.contains(gone), "{gone}: {}", got.text);
        }
        assert!(got.text.contains("autoport=\"yes\""), "{}", got.text);
        assert!(got.text.contains("School"), "{}", got.text);
        assert!(!got.text.contains("192.0.2.9"), "{}", got.text);
        assert!(!got.text.contains("redirdev"), "{}", got.text);
        // What cannot be made safe is refused.
        for (add, what) in [
            (
                "<memory model='nvdimm'><source><path>/srv/replicas/erp-db-data.raw</path></source><target><size unit='KiB'>524288</size></target></memory>",
                "memory backed by a file",
            ),
            (
                "<lease><lockspace>x</lockspace><key>k</key><target path='/srv/replicas/erp-db-data.raw'/></lease>",
                "<lease>",
            ),
            (
                "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>",
                "tpm of the host",
            ),
            (
                "<input type='evdev'><source dev='/dev/input/event1'/></input>",
                "input device of the host",
            ),
            (
                "<pstore backend='acpi-erst'><path>/srv/replicas/erp-db-data.raw</path><size unit='KiB'>8</size></pstore>",
                "<pstore>",
            ),
        ] {
            let text = DOMAIN.replace("<devices>", &format!("<devices>{add}"));
            let e = Definition::parse(Format::LibvirtXml, text.as_bytes())
                .and_then(|d| rewrite(&d, &mapped))
                .map(|f| f.text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what) && e.contains("refused"), "{what}: {e}");
        }
        let text = DOMAIN.replace("<loader readonly='yes'", "<loader readonly='no'");
        let e = Definition::parse(Format::LibvirtXml, text.as_bytes())
            .and_then(|d| rewrite(&d, &mapped))
            .map(|f| f.text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loader readonly='no'"), "{e}");
        // Files of the host the guest would be given to read: another vm's copy, a secret.
        for (what, text) in [
            (
                "loader readonly=''",
                DOMAIN.replace(
                    "<loader readonly='yes' type='pflash'>",
                    "<loader type='pflash'>",
                ),
            ),
            (
                "os/kernel at /srv/replicas/payroll-db.qcow2, where the disks",
                DOMAIN.replace(
                    "</os>",
                    "<kernel>/srv/replicas/payroll-db.qcow2</kernel></os>",
                ),
            ),
            (
                "os/initrd at /var/lib/libvirt/images/payroll-db.qcow2, where the disks",
                DOMAIN.replace(
                    "</os>",
                    "<kernel>/boot/vmlinuz</kernel><initrd>/var/lib/libvirt/images/payroll-db.qcow2</initrd></os>",
                ),
            ),
            (
                "os/dtb at `/boot/../srv/replicas/x`, a path that cannot be judged",
                DOMAIN.replace("</os>", "<dtb>/boot/../srv/replicas/x</dtb></os>"),
            ),
            (
                "os/acpi/table at `slic.bin`, a path that cannot be judged",
                DOMAIN.replace(
                    "</os>",
                    "<acpi><table type='slic'>slic.bin</table></acpi></os>",
                ),
            ),
            (
                "sysinfo entry read from a file",
                DOMAIN.replace(
                    "</os>",
                    "</os><sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>",
                ),
            ),
            (
                "os/initrd at /etc/shadow, outside the boot folders of hv-pra (/boot, /var/lib/libvirt/boot;",
                DOMAIN.replace(
                    "</os>",
                    "<kernel>/boot/vmlinuz</kernel><initrd>/etc/shadow</initrd></os>",
                ),
            ),
            (
                "os/kernel at /var/lib/reprise-boot/vmlinuz, outside the boot folders",
                DOMAIN.replace(
                    "</os>",
                    "<kernel>/var/lib/reprise-boot/vmlinuz</kernel></os>",
                ),
            ),
            (
                "os/kernel at /boot/, outside the boot folders",
                DOMAIN.replace("</os>", "<kernel>/boot/</kernel></os>"),
            ),
            (
                "os/kernel at /bootleg/vmlinuz, outside the boot folders",
                DOMAIN.replace("</os>", "<kernel>/bootleg/vmlinuz</kernel></os>"),
            ),
        ] {
            assert!(text != DOMAIN, "{what}: the sample changed");
            let e = Definition::parse(Format::LibvirtXml, text.as_bytes())
                .and_then(|d| rewrite(&d, &mapped))
                .map(|f| f.text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what) && e.contains("refused"), "{what}: {e}");
        }
        // A firmware read only, as `virsh dumpxml` writes it, passes; and so does a direct
        // kernel boot from the host's boot folders, the default ones or those it is given.
        let given = Fit {
            boot_folders: vec!["/var/lib/reprise-boot".into()],
            ..mapped.clone()
        };
        for (fit, text) in [
            (&mapped, DOMAIN.to_string()),
            (
                &mapped,
                DOMAIN.replace(
                    "</os>",
                    "<kernel>/boot/vmlinuz-6.1.0-27-amd64</kernel><initrd>/var/lib/libvirt/boot/initrd.img</initrd></os>",
                ),
            ),
            (
                &given,
                DOMAIN.replace(
                    "</os>",
                    "<kernel>/var/lib/reprise-boot/vmlinuz</kernel><initrd>/var/lib/reprise-boot/initrd.img</initrd></os>",
                ),
            ),
        ] {
            assert!(
                Definition::parse(Format::LibvirtXml, text.as_bytes())
                    .and_then(|d| rewrite(&d, fit))
                    .is_ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn what_cannot_be_made_safe_is_refused() {
        let check = |text: &str, fit: &Fit| -> String {
            match Definition::parse(Format::LibvirtXml, text.as_bytes())
                .and_then(|d| rewrite(&d, fit))
            {
                Ok(f) => panic!("accepted: {}", f.text),
                Err(e) => e.to_string(),
            }
        };
        let mapped = fit(map(&[("br-prod", "br-pra"), ("backup", "backup-pra")]));
        let errors = [
            check(&DOMAIN.replace("'backup'", "'storage'"), &mapped),
            check(&DOMAIN.replace("/var/lib/libvirt/images/erp-db-data.raw", "/etc/shadow"), &mapped),
            check(&DOMAIN.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu"), &mapped),
            check("<network><name>x</name></network>", &mapped),
            check(
                &DOMAIN.replace(
                    "<domain type='kvm'>",
                    "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:commandline><qemu:arg value='-evil'/></qemu:commandline>",
                ),
                &mapped,
            ),
            check(&format!("<!DOCTYPE d [<!ENTITY a 'aaaa'>]>{DOMAIN}"), &mapped),
            check(&"x".repeat(MAX_BYTES + 1), &mapped),
            check(
                &DOMAIN.replace(
                    "<interface type='network'>",
                    "<interface type='direct'>",
                ),
                &mapped,
            ),
            check(
                &DOMAIN.replace(
                    "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>",
                    "<disk type='block' device='disk'>\n      <driver name='qemu' type='raw'/>",
                ),
                &mapped,
            ),
            check(
                &DOMAIN.replace(
                    "</devices>",
                    "<filesystem type='mount'><source dir='/'/><target dir='host'/></filesystem></devices>",
                ),
                &mapped,
            ),
        ];
        insta::assert_snapshot!(errors.join("\n"));
    }

    /// An element libvirt reads once, given twice, and a nesting that would overflow the
    /// reader's stack, are refused when the definition is read: what reprise checks in the
    /// first, libvirt could take from another.
    #[test]
    fn an_element_libvirt_reads_once_given_twice_or_a_nesting_too_deep_is_refused() {
        let said = |text: &str| match Definition::parse(Format::LibvirtXml, text.as_bytes()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        // A second <devices> with the host's own disk in it.
        let e = said(&DOMAIN.replace(
            "</devices>",
            "</devices><devices><disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdz'/></disk></devices>",
        ));
        assert!(e.contains("2 <devices> in <domain>"), "{e}");
        let e = said(&DOMAIN.replace("</os>", "</os><os><nvram>/etc/shadow</nvram></os>"));
        assert!(e.contains("2 <os> in <domain>"), "{e}");
        // A second <source> in a disk.
        let e = said(&DOMAIN.replace(
            "<source file='/var/lib/libvirt/images/erp-db-data.raw'/>",
            "<source file='/var/lib/libvirt/images/erp-db-data.raw'/><source file='/etc/shadow'/>",
        ));
        assert!(e.contains("2 <source> in <disk>"), "{e}");
        // Well within what a domain may hold (1 MiB), far deeper than the stack allows.
        let deep = DOMAIN.replace(
            "<metadata>",
            &format!(
                "<metadata>{}{}",
                "<a>".repeat(140_000),
                "</a>".repeat(140_000)
            ),
        );
        assert!(deep.len() < MAX_BYTES);
        assert!(said(&deep).contains("more than 64 deep"));
        // Repeated where libvirt takes several; nested as deep as allowed.
        let twice = DOMAIN.replace(
            "</devices>",
            "</devices><seclabel type='dynamic' model='selinux'/><seclabel type='dynamic' model='dac'/>",
        );
        Definition::parse(Format::LibvirtXml, twice.as_bytes()).unwrap();
        let level = DOMAIN.matches("<metadata>").count() + 1;
        let deepest = DOMAIN.replace(
            "<metadata>",
            &format!(
                "<metadata>{}<!-- <b> --><c x='d>e'/>{}",
                "<a>".repeat(MAX_DEPTH - level),
                "</a>".repeat(MAX_DEPTH - level)
            ),
        );
        Definition::parse(Format::LibvirtXml, deepest.as_bytes()).unwrap();
        assert_eq!(super::depth(&deepest), MAX_DEPTH);
    }

    #[test]
    fn a_changed_definition_shows_a_short_diff() {
        let old = Definition::parse(Format::LibvirtXml, DOMAIN.as_bytes())
            .unwrap()
            .canonical();
        let new = Definition::parse(
            Format::LibvirtXml,
            DOMAIN
                .replace("4194304", "8388608")
                .replace("<vcpu>2</vcpu>", "<vcpu>4</vcpu>")
                .as_bytes(),
        )
        .unwrap()
        .canonical();
        assert_eq!(diff(&old, &old, 20), None);
        insta::assert_snapshot!(diff(&old, &new, 20).unwrap());
        let short = diff(&old, &new, 3).unwrap();
        assert!(short.ends_with("more lines)\n"), "{short}");
    }
}
