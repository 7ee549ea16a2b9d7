//! `lab-vm`, the lab's hypervisor driver, modelled on `virsh`: definitions kept as files, a vm
//! started as a `lab serve` process after `qemu-img check` of its disks, and the external
//! snapshot around a replication played on files.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lab::down::running;
use crate::lab::serve::{start_serve, stop_serve};
use crate::lab::{LabState, LabVm};

/// The lab hypervisor driver: "VMs" are `lab serve` processes reading their images.
pub(super) fn lab_vm(state: &LabState, host: &str, args: &[String]) -> i32 {
    let verb = args.first().map(String::as_str).unwrap_or("");
    let Some(name) = args.get(1) else {
        eprintln!("usage: lab-vm start|stop|status|autostart|desc NAME ...");
        return 2;
    };
    let base = name.strip_prefix("drill-").unwrap_or(name);
    let Some(vm) = state.vms.values().find(|v| v.name == *base) else {
        eprintln!("lab-vm: no vm named {base}");
        return 1;
    };
    let process = format!("vm-{name}");
    let defs = state.host_dir(host).join("definitions");
    let defined = defs.join(format!("{name}.xml"));
    match verb {
        "definition" => match std::fs::read(&defined) {
            Ok(bytes) => {
                let _ = std::io::Write::write_all(&mut std::io::stdout(), &bytes);
                0
            }
            Err(_) => {
                // As the built-in drivers say it (`runner::exec::NOT_DEFINED`).
                println!("not defined");
                eprintln!("lab-vm: failed to get domain '{name}': not defined on {host}");
                2
            }
        },
        "define" => define(&defs, name),
        // As `virsh desc`: the definition's description.
        "desc" => match std::fs::read(&defined)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::vmdef::libvirt_description(&b).map_err(|e| e.to_string()))
        {
            Ok(text) => {
                println!("{text}");
                0
            }
            Err(e) => {
                eprintln!("lab-vm: failed to get domain '{name}': {e}");
                1
            }
        },
        "undefine" => {
            if std::fs::remove_file(&defined).is_err() {
                println!("{name} is not defined: nothing to remove");
            }
            0
        }
        "start" if !defined.exists() => {
            eprintln!("lab-vm: failed to get domain '{name}': not defined on {host}");
            1
        }
        "start" => start(state, host, vm, name, args),
        "stop" => {
            stop_serve(state, host, &process);
            0
        }
        "status" => {
            if running(&state.host_dir(host).join("run"), &process).is_some() {
                println!("running");
                0
            } else if !defined.exists() {
                // As `virsh domstate` fails for a domain its host does not define, said
                // as the built-in drivers say it (`runner::exec::NOT_DEFINED`).
                println!("not defined");
                eprintln!("lab-vm: failed to get domain '{name}': not defined on {host}");
                2
            } else {
                println!("shut off");
                3
            }
        }
        "autostart" => {
            let flag = state
                .host_dir(host)
                .join("units")
                .join(format!("autostart-{name}"));
            match args.get(2).map(String::as_str) {
                Some("on") => {
                    let _ = std::fs::write(flag, "");
                }
                _ => {
                    let _ = std::fs::remove_file(flag);
                }
            }
            0
        }
        // The snapshot around a replication, modelled on libvirt's: an overlay per disk takes
        // the vm's writes while the disk is read (`freeze`), then is committed back (`thaw`).
        "freeze" | "thaw" | "snapshot-check" => {
            let (Some(dir), disks) = (args.get(2), &args[3.min(args.len())..]) else {
                eprintln!("usage: lab-vm {verb} NAME DIR DISK...");
                return 2;
            };
            let running = running(&state.host_dir(host).join("run"), &process).is_some();
            snapshot(verb, Path::new(dir), disks, running)
        }
        other => {
            eprintln!("lab-vm: unknown action `{other}`");
            2
        }
    }
}

/// `lab-vm define NAME`: the definition on standard input, as `virsh define` takes it, kept
/// in `defs` when it is of `NAME` (or of its drill copy).
fn define(defs: &Path, name: &str) -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(
        &mut std::io::Read::take(std::io::stdin(), crate::vmdef::MAX_BYTES as u64 + 1),
        &mut bytes,
    ) {
        eprintln!("lab-vm: reading the definition: {e}");
        return 1;
    }
    // Read as libvirt reads it: a drill copy's definition is defined as any other.
    let defined_name = match crate::vmdef::libvirt_name(&bytes) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("lab-vm: {e}");
            return 1;
        }
    };
    if defined_name != *name && defined_name != format!("drill-{name}") {
        eprintln!("lab-vm: the definition is of `{defined_name}`, not of {name}");
        return 1;
    }
    let file = defs.join(format!("{defined_name}.xml"));
    match std::fs::create_dir_all(defs).and_then(|()| std::fs::write(&file, &bytes)) {
        Ok(()) => {
            println!("Domain '{defined_name}' defined");
            0
        }
        Err(e) => {
            eprintln!("lab-vm: {}: {e}", file.display());
            1
        }
    }
}

/// `lab-vm start NAME DIR DISK…`: a vm defined on `host` starts as a `lab serve` process once
/// `qemu-img check` passes on each of its disks.
fn start(state: &LabState, host: &str, vm: &LabVm, name: &str, args: &[String]) -> i32 {
    let (Some(dir), disks) = (args.get(2), &args[3.min(args.len())..]) else {
        eprintln!("usage: lab-vm start NAME DIR DISK...");
        return 2;
    };
    let images: Vec<PathBuf> = disks.iter().map(|d| Path::new(dir).join(d)).collect();
    for i in &images {
        let check = Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(i)
            .output();
        match check {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "lab-vm: refusing to start {name}: {} is damaged: {}",
                    i.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return 1;
            }
            Err(e) => {
                eprintln!("lab-vm: cannot check {}: {e}", i.display());
                return 1;
            }
        }
    }
    let address = if host == vm.recovery_host {
        &vm.recovery_address
    } else {
        &vm.primary_address
    };
    let process = format!("vm-{name}");
    match start_serve(state, host, &process, address, &vm.ports, &images) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lab-vm: {e}");
            1
        }
    }
}

/// The overlay of a lab disk during a replication: `DIR/STEM.reprise-replicate`, as libvirt
/// names an external snapshot's file (the disk's path without its file name's extension).
fn overlay_of(dir: &Path, disk: &str) -> PathBuf {
    dir.join(crate::inventory::replication_overlay(disk))
}

/// `lab-vm freeze|thaw|snapshot-check`: libvirt's external snapshot, on files. A running vm's
/// disks each get a qcow2 overlay backed by them (refused when one is already there, as
/// libvirt refuses); `thaw` commits each overlay into its disk and removes it (a stopped vm
/// too, as the libvirt driver's `replicate-end` does); `snapshot-check` names the overlays.
fn snapshot(verb: &str, dir: &Path, disks: &[String], running: bool) -> i32 {
    let qemu_img = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .map_err(|e| format!("qemu-img: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    for disk in disks {
        let (base, overlay) = (dir.join(disk), overlay_of(dir, disk));
        match verb {
            "snapshot-check" => {
                if overlay.exists() {
                    println!("overlay file {}", overlay.display());
                }
            }
            "freeze" => {
                if !running {
                    // libvirt's driver snapshots only a running domain.
                    return 0;
                }
                if overlay.exists() {
                    eprintln!(
                        "error: unsupported configuration: external snapshot file for disk {disk} already exists and is not a block device: {}",
                        overlay.display()
                    );
                    return 1;
                }
                let mut head = [0u8; 4];
                let format =
                    match std::fs::File::open(&base).and_then(|mut f| f.read_exact(&mut head)) {
                        Ok(()) if &head == b"QFI\xfb" => "qcow2",
                        _ => "raw",
                    };
                if let Err(e) = qemu_img(&[
                    "create".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    "-F".as_ref(),
                    format.as_ref(),
                    "-b".as_ref(),
                    base.as_os_str(),
                    overlay.as_os_str(),
                ]) {
                    eprintln!("lab-vm: cannot snapshot {disk}: {e}");
                    return 1;
                }
            }
            _ => {
                if !overlay.exists() {
                    continue;
                }
                if let Err(e) = qemu_img(&["commit".as_ref(), "-q".as_ref(), overlay.as_os_str()]) {
                    eprintln!("lab-vm: cannot merge {} back: {e}", overlay.display());
                    return 1;
                }
                if let Err(e) = std::fs::remove_file(&overlay) {
                    eprintln!("lab-vm: cannot remove {}: {e}", overlay.display());
                    return 1;
                }
            }
        }
    }
    0
}
