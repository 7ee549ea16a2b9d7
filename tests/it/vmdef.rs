//! Vm definitions on the lab: captured with each point, refused when hostile (too large,
//! malformed), and a point's definition that cannot be fitted to the target host (a disk
//! outside the copies, a NIC with no network mapping) stops the start before anything is
//! defined or booted.

use crate::lab::Lab;

/// The definition `lab-vm` keeps for `vm` on `host`.
fn definition(lab: &Lab, host: &str, vm: &str) -> std::path::PathBuf {
    lab.lab()
        .join("hosts")
        .join(host)
        .join("definitions")
        .join(format!("{vm}.xml"))
}

fn points(lab: &Lab, vm: &str) -> Vec<serde_json::Value> {
    let run = lab.run(&["points", vm, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

#[test]
fn hostile_definitions_are_refused_and_change_nothing() {
    let lab = Lab::up(150);
    let file = definition(&lab, "hv-main", "erp-db");
    let good = std::fs::read_to_string(&file).unwrap();
    let before = points(&lab, "erp-db");
    for (what, text, said) in [
        (
            "huge",
            format!("{}{}", good, " ".repeat(2 << 20)),
            "longer than 1048576 bytes: refused",
        ),
        (
            "malformed",
            good.replace("</devices>", "<devices>"),
            "not well-formed XML",
        ),
        (
            "an entity bomb",
            format!("<!DOCTYPE d [<!ENTITY a 'aaaaaaaa'>]>{good}"),
            "document type declaration",
        ),
        (
            "a second <devices> with the host's own disk",
            good.replacen(
                "</devices>",
                "</devices><devices><disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdz'/></disk></devices>",
                1,
            ),
            "2 <devices> in <domain>, where libvirt reads one: refused",
        ),
        (
            "nested deeper than the stack",
            good.replacen(
                "</devices>",
                &format!("</devices>{}{}", "<a>".repeat(140_000), "</a>".repeat(140_000)),
                1,
            ),
            "nests elements more than 64 deep",
        ),
    ] {
        std::fs::write(&file, &text).unwrap();
        let run = lab.run(&["replicate", "--service", "erp-db"]);
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(run.stderr.contains(said), "{what}: {run:?}");
        assert_eq!(points(&lab, "erp-db"), before, "{what} made a point");
    }
    std::fs::write(&file, &good).unwrap();
}

#[test]
fn a_definition_that_does_not_fit_the_recovery_host_starts_nothing() {
    let lab = Lab::up(151);
    let file = definition(&lab, "hv-main", "erp-db");
    let good = std::fs::read_to_string(&file).unwrap();

    // A disk outside the vm's copies: replicated as captured, refused where it would start.
    std::fs::write(
        &file,
        good.replacen("erp-db-data.qcow2'", "../../../etc/shadow'", 1),
    )
    .unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let drill = lab.run(&["drill", "--no-prompt", "--service", "erp-db", "--only"]);
    assert_eq!(drill.code, 1, "{drill:?}");
    let text = format!("{}{}", drill.stdout, drill.stderr);
    assert!(
        text.contains("which is not a copy of one of the vm's disks"),
        "{text}"
    );
    assert!(!definition(&lab, "hv-pra", "drill-erp-db").exists());

    // A NIC on a network hv-pra has no mapping for.
    std::fs::write(
        &file,
        good.replacen("bridge='br-servers'", "bridge='br-backup'", 1),
    )
    .unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let failover = lab.run(&[
        "failover",
        "--emergency",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--only",
    ]);
    assert_eq!(failover.code, 1, "{failover:?}");
    let text = format!("{}{}", failover.stdout, failover.stderr);
    assert!(
        text.contains("`br-backup`, which has no mapping for host hv-pra"),
        "{text}"
    );
    assert!(!definition(&lab, "hv-pra", "erp-db").exists());
    let status = lab.run(&["lab", "status", "--lab-dir", lab.lab().to_str().unwrap()]);
    let erp = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("erp-db"))
        .unwrap_or_default()
        .to_string();
    assert!(!erp.contains("recovery (hv-pra"), "{status:?}");

    // Fixed on the primary: the next point carries it, and the vm is defined from it (the
    // primary lost).
    std::fs::write(&file, &good).unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.primary_lost(&["erp-db"]);
    let status = lab.run_confirming(
        &[
            "failover",
            "--emergency",
            "--yes",
            "--no-prompt",
            "--service",
            "erp-db",
            "--only",
        ],
        std::time::Duration::from_secs(120),
    );
    assert!(status.success(), "{status:?}");
    let defined = std::fs::read_to_string(definition(&lab, "hv-pra", "erp-db")).unwrap();
    assert!(defined.contains("bridge=\"br-pra-servers\""), "{defined}");
    assert!(!defined.contains("hosts/hv-main"), "{defined}");
}

/// How many runs the lab's state folder holds.
fn runs(lab: &Lab) -> usize {
    std::fs::read_dir(lab.state().join("runs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The `lab status` line of vm `vm`.
fn status_of(lab: &Lab, vm: &str) -> String {
    let status = lab.run(&["lab", "status", "--lab-dir", lab.lab().to_str().unwrap()]);
    status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(vm))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_planned_failover_whose_vm_would_not_fit_stops_before_production_is_touched() {
    let lab = Lab::up(152);
    let file = definition(&lab, "hv-main", "erp-db");
    let good = std::fs::read_to_string(&file).unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(status_of(&lab, "erp-db").contains("primary (hv-main"));

    // Production's definition gains a NIC on a bridge hv-pra has no mapping for: the
    // planned failover's last replication would capture it, after production is stopped.
    std::fs::write(
        &file,
        good.replacen("bridge='br-servers'", "bridge='br-backup'", 1),
    )
    .unwrap();
    let check = lab.run(&["check"]);
    assert_eq!(check.code, 7, "{check:?}");
    let line = check
        .stdout
        .lines()
        .find(|l| l.starts_with("definitions") && l.contains("vm erp-db (planned failover)"))
        .unwrap_or_else(|| panic!("{check:?}"));
    assert!(
        line.contains("FAILED")
            && line.contains("`br-backup`, which has no mapping for host hv-pra"),
        "{line}"
    );
    // The planned failover's readiness gate refuses it: no run starts.
    let runs_before = runs(&lab);
    let failover = lab.run(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--only",
    ]);
    assert_eq!(failover.code, 7, "{failover:?}");
    assert!(
        failover.stderr.contains(
            "definitions vm erp-db (planned failover): would be defined as erp-db on hv-pra"
        ) && failover
            .stderr
            .contains("`br-backup`, which has no mapping for host hv-pra")
            && failover.stderr.contains("--force"),
        "{failover:?}"
    );
    // Nothing ran: production was never stopped, nothing was defined on hv-pra.
    assert_eq!(runs(&lab), runs_before, "a refused failover started a run");
    assert!(status_of(&lab, "erp-db").contains("primary (hv-main"));
    assert!(!definition(&lab, "hv-pra", "erp-db").exists());

    // Fixed: a drill defines its copy from the newest point, and that is kept; a later
    // change of production's definition is shown by the dry run, line by line.
    std::fs::write(&file, &good).unwrap();
    let drill = lab.run_confirming(
        &["drill", "--no-prompt", "--service", "erp-db", "--only"],
        std::time::Duration::from_secs(120),
    );
    assert!(drill.success(), "{drill:?}");
    let same = lab.run(&["drill", "--dry-run", "--service", "erp-db", "--only"]);
    assert_eq!(same.code, 0, "{same:?}");
    assert!(
        same.stdout
            .contains("vm erp-db as drill-erp-db on hv-pra: unchanged"),
        "{same:?}"
    );
    std::fs::write(
        &file,
        good.replacen("<memory", "<currentMemory>1</currentMemory><memory", 1),
    )
    .unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let changed = lab.run(&["drill", "--dry-run", "--service", "erp-db", "--only"]);
    assert_eq!(changed.code, 0, "{changed:?}");
    assert!(
        changed.stdout.contains(
            "vm erp-db as drill-erp-db on hv-pra: CHANGED since it was last defined there"
        ) && changed
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with('+')
                && l.contains("<currentMemory>1</currentMemory>")),
        "{changed:?}"
    );
    std::fs::write(&file, &good).unwrap();

    // After a planned failover, the definition on hv-pra gains a NIC on a bridge hv-main has
    // no mapping for: the failback's readiness gate refuses it before the recovery side is
    // stopped.
    let exit = lab.run_confirming(
        &[
            "failover",
            "--yes",
            "--no-prompt",
            "--service",
            "erp-db",
            "--only",
        ],
        std::time::Duration::from_secs(120),
    );
    assert!(exit.success(), "{:#?}", lab.journal());
    assert!(status_of(&lab, "erp-db").contains("recovery (hv-pra"));
    let on_pra = definition(&lab, "hv-pra", "erp-db");
    let defined = std::fs::read_to_string(&on_pra).unwrap();
    assert!(defined.contains("bridge=\"br-pra-servers\""), "{defined}");
    std::fs::write(
        &on_pra,
        defined.replacen("bridge=\"br-pra-servers\"", "bridge=\"br-pra-backup\"", 1),
    )
    .unwrap();
    let runs_before = runs(&lab);
    let failback = lab.run(&[
        "failback",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--only",
    ]);
    assert_eq!(failback.code, 7, "{failback:?}");
    assert!(
        failback.stderr.contains("refusing to start a failback")
            && failback.stderr.contains("definitions vm erp-db (failback)")
            && failback
                .stderr
                .contains("`br-pra-backup`, which has no mapping for host hv-main")
            && failback.stderr.contains("--force"),
        "{failback:?}"
    );
    assert_eq!(runs(&lab), runs_before, "a refused failback started a run");
    assert!(status_of(&lab, "erp-db").contains("recovery (hv-pra"));
}

#[test]
fn a_forced_planned_failover_that_fails_later_undoes_the_definitions_it_made() {
    let lab = Lab::up(153);
    // erp-app's definition gains a NIC on a bridge hv-pra has no mapping for: the readiness
    // gate refuses the failover; forced, erp-db fails over, then erp-app's start stops at its
    // definition, and the run rolls back.
    let file = definition(&lab, "hv-main", "erp-app");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        good.replacen("bridge='br-servers'", "bridge='br-backup'", 1),
    )
    .unwrap();
    let args = [
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--service",
        "erp-app",
        "--only",
    ];
    let refused = lab.run(&args);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("definitions vm erp-app (planned failover)"),
        "{refused:?}"
    );
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    let exit = lab.run_confirming(&forced, std::time::Duration::from_secs(240));
    assert_eq!(exit.code(), Some(1), "{:#?}", lab.journal());
    let journal = lab.journal();
    let finished = |step: &str| {
        journal
            .iter()
            .find(|e| e["event"] == "step_finished" && e["step"] == step)
            .unwrap_or_else(|| panic!("{step} did not finish: {journal:#?}"))
            .clone()
    };
    assert_eq!(finished("erp-db/start")["status"], "done");
    let failed = finished("erp-app/start");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("`br-backup`, which has no mapping for host hv-pra")),
        "{failed}"
    );
    // erp-db's start is undone: the vm stopped on hv-pra, and the domain it defined there
    // (nothing was defined before) undefined again; production is back on hv-main.
    let undone = journal
        .iter()
        .find(|e| e["event"] == "undo_finished" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("erp-db/start not undone: {journal:#?}"));
    assert_eq!(undone["ok"], true, "{undone}");
    assert!(
        undone["message"].as_str().is_some_and(
            |m| m.contains("erp-db, defined on hv-pra for this step, was undefined again")
        ),
        "{undone}"
    );
    assert!(!definition(&lab, "hv-pra", "erp-db").exists());
    assert!(!definition(&lab, "hv-pra", "erp-app").exists());
    assert!(status_of(&lab, "erp-db").contains("primary (hv-main"));
    assert!(status_of(&lab, "erp-app").contains("primary (hv-main"));
    std::fs::write(&file, &good).unwrap();
}

#[test]
fn a_drill_of_a_copy_started_as_it_is_defines_its_copy_from_the_primary() {
    let lab = Lab::up(154);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Both points files of erp-db's first disk (where its definitions are kept) damaged:
    // nothing proves the copy, and no point's definition can be read.
    let meta = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2.reprise");
    for f in ["points.json", "points.json.prev"] {
        std::fs::write(meta.join(f), "garbage").unwrap();
    }
    let args = ["drill", "--no-prompt", "--service", "erp-db", "--only"];
    let refused = lab.run(&args);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        format!("{}{}", refused.stdout, refused.stderr).contains("--accept-unverified"),
        "{refused:?}"
    );
    // Named by the operator: started as it is, its copy defined from what hv-main holds now.
    let named: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--accept-unverified", "erp-db"])
        .collect();
    let exit = lab.run_confirming(&named, std::time::Duration::from_secs(120));
    assert!(exit.success(), "{:#?}", lab.journal());
    let said: String = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "step_output" && e["step"] == "erp-db/start-copy")
        .filter_map(|e| e["stdout"].as_str().map(str::to_string))
        .collect();
    assert!(
        said.contains("drill-erp-db defined on hv-pra from the definition hv-main holds now"),
        "{said}"
    );
    // The drill's cleanup removed its copy's definition.
    assert!(!definition(&lab, "hv-pra", "drill-erp-db").exists());
}
