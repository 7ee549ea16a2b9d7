//! The user's ssh configuration gives what a host of the inventory does not name (HostName,
//! Port, User, IdentityFile, UserKnownHostsFile), checked against a real sshd; what reprise
//! cannot honour (ProxyJump, a Match block, a malformed file) is refused, saying where.

use std::path::Path;

use crate::common::{mini_copy, reprise_with_env};
use crate::sshd::Sshd;

/// The mini fixture's hosts, by inventory address.
const ADDRESSES: [(&str, &str); 4] = [
    ("fw", "fw.main.test.example"),
    ("hv1", "hv1.main.test.example"),
    ("hv2", "hv2.pra.test.example"),
    ("fw2", "fw2.pra.test.example"),
];

fn ssh_items(json: &serde_json::Value) -> Vec<(String, String, String)> {
    json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["area"] == "ssh")
        .map(|i| {
            (
                i["subject"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
                i["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn check(dir: &Path, config: &str) -> crate::common::Run {
    check_with(dir, config, &[])
}

fn check_with(dir: &Path, config: &str, more: &[&str]) -> crate::common::Run {
    // HOME points at the test's folder: no ~/.ssh/config of this machine is read.
    let home = dir.to_str().unwrap();
    let mut args = vec!["check", "--json", "--ssh-config", config];
    args.extend_from_slice(more);
    reprise_with_env(dir, &args, &[("HOME", home), ("FW_TOKEN", "t")])
}

#[test]
fn hosts_known_by_an_alias_are_reached_as_the_users_ssh_config_says() {
    let sshd = Sshd::start();
    let dir = mini_copy();
    let dir = dir.path();
    // The inventory names only the aliases: no port, user, key or known_hosts. The file
    // sends fw2 through a jump host, which reprise does not do.
    let aliases: Vec<&str> = ADDRESSES.iter().map(|(_, a)| *a).collect();
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host fw2.pra.test.example\n  ProxyJump bastion.test.example\n\nHost {}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
            aliases.join(" "),
            sshd.address,
            sshd.port,
            sshd.user,
            sshd.identity.display(),
            sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let run = check(dir, config.to_str().unwrap());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stderr);
    let items = ssh_items(&json);
    for host in ["fw", "hv1", "hv2"] {
        let item = items.iter().find(|(s, _, _)| s == host);
        assert!(
            matches!(item, Some((_, status, _)) if status == "ok"),
            "{host}: {item:?}"
        );
    }
    let (_, status, detail) = items.iter().find(|(s, _, _)| s == "fw2").unwrap();
    assert_eq!(status, "failed");
    assert!(
        detail.contains("`ProxyJump bastion.test.example`")
            && detail.contains(config.to_str().unwrap())
            && detail.contains("reprise connects to hosts directly"),
        "{detail}"
    );

    // Without the file, the aliases do not resolve: nothing is reached.
    let run = check(dir, "none");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stderr);
    let items = ssh_items(&json);
    assert!(
        items.iter().all(|(_, status, _)| status == "failed"),
        "{items:?}"
    );

    // An inventory port wins over the file's: hv1's is wrong, so hv1 alone is not reached.
    let hosts = dir.join("inventory/hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap();
    std::fs::write(
        &hosts,
        text.replacen(
            "address = \"hv1.main.test.example\"\n",
            "address = \"hv1.main.test.example\"\nport = 1\n",
            1,
        ),
    )
    .unwrap();
    let run = check(dir, config.to_str().unwrap());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stderr);
    let items = ssh_items(&json);
    let status = |host: &str| {
        items
            .iter()
            .find(|(s, _, _)| s == host)
            .map(|(_, status, detail)| (status.clone(), detail.clone()))
            .unwrap()
    };
    assert_eq!(status("fw").0, "ok");
    let (hv1, detail) = status("hv1");
    assert_eq!(hv1, "failed");
    assert!(detail.contains(&format!("{}:1", sshd.address)), "{detail}");
}

#[test]
fn an_ssh_config_reprise_cannot_read_as_openssh_does_stops_before_any_host() {
    let dir = mini_copy();
    let dir = dir.path();
    // The state folder is the working folder: a check writes check/latest.json there.
    for (text, said) in [
        ("Host *\n  Port many\n", "is not valid"),
        (
            "Host a\n  User x\n\nMatch host b\n  User y\n",
            ":4: `Match` blocks are not supported",
        ),
    ] {
        let config = dir.join("ssh_config");
        std::fs::write(&config, text).unwrap();
        let run = check(dir, config.to_str().unwrap());
        assert_eq!(run.code, 3, "{run:?}");
        assert!(
            run.stderr.contains(config.to_str().unwrap()) && run.stderr.contains(said),
            "{}",
            run.stderr
        );
        assert!(!dir.join("check").exists(), "a check was recorded");
    }
    // A file named on the command line that is not there is an error too, not ignored.
    let run = check(dir, dir.join("absent").to_str().unwrap());
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("cannot read the ssh configuration"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_known_hosts_file_that_keeps_no_keys_refuses_the_host_unless_one_is_named() {
    let sshd = Sshd::start();
    let dir = mini_copy();
    let dir = dir.path();
    let aliases: Vec<&str> = ADDRESSES.iter().map(|(_, a)| *a).collect();
    // A common line of personal configurations: no host key is ever kept.
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host {}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n\nHost *\n  UserKnownHostsFile /dev/null\n",
            aliases.join(" "),
            sshd.address,
            sshd.port,
            sshd.user,
            sshd.identity.display(),
        ),
    )
    .unwrap();
    let run = check(dir, config.to_str().unwrap());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stderr);
    let items = ssh_items(&json);
    assert_eq!(items.len(), 4, "{items:?}");
    for (host, status, detail) in &items {
        assert_eq!(status, "failed", "{host}");
        assert!(
            detail.contains("`UserKnownHostsFile /dev/null`")
                && detail.contains("keeps no host keys"),
            "{host}: {detail}"
        );
    }
    // --known-hosts names the file: it wins over the configuration, and every host is reached
    // with its key checked there.
    let run = check_with(
        dir,
        config.to_str().unwrap(),
        &["--known-hosts", sshd.known_hosts.to_str().unwrap()],
    );
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stderr);
    let items = ssh_items(&json);
    assert!(
        items.iter().all(|(_, status, _)| status == "ok"),
        "{items:?}"
    );
}

#[test]
fn a_dry_run_shows_where_the_ssh_config_sends_each_host_without_reaching_it() {
    let dir = mini_copy();
    let dir = dir.path();
    let home = dir.to_str().unwrap();
    // Where hv2's alias really leads: a port listening on loopback, to see that nothing
    // connects to it during a dry run.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let ssh = dir.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(
        ssh.join("config"),
        format!(
            "Host hv2.pra.test.example\n  HostName 127.0.0.1\n  Port {port}\n  User admin\n\nHost fw2.pra.test.example\n  ProxyJump bastion.test.example\n"
        ),
    )
    .unwrap();
    let elsewhere =
        format!("on hv2 (hv2.pra.test.example → admin@127.0.0.1:{port} via ~/.ssh/config)");
    for args in [&["plan", "drill"][..], &["drill", "--dry-run"]] {
        let run = reprise_with_env(dir, args, &[("HOME", home)]);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        let out = &run.stdout;
        // Every step on hv2 says where it goes; fw2's step says it will not get there, and why.
        assert_eq!(out.matches(&elsewhere).count(), 4, "{args:?}:\n{out}");
        assert!(
            !out.contains("on hv2\n") && !out.contains("on hv2  "),
            "{out}"
        );
        assert!(out.contains("on fw2 (NOT REACHED, see below)"), "{out}");
        let refused = out
            .split("\nNot reached (every step on these hosts fails):\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{args:?}: no refused hosts:\n{out}"));
        assert!(
            refused.starts_with("  ! fw2: ")
                && refused.contains("`ProxyJump bastion.test.example`")
                && refused.contains("for fw2.pra.test.example"),
            "{refused}"
        );
        // Hosts the file does not change are shown as before.
        assert!(
            !out.contains("on fw (") && !out.contains("on hv1 ("),
            "{out}"
        );
    }
    // `--ssh-config none` leaves the file unread: the inventory's names, as written.
    let run = reprise_with_env(
        dir,
        &["drill", "--dry-run", "--ssh-config", "none"],
        &[("HOME", home)],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("on hv2  *critical") && !run.stdout.contains(" → admin@"),
        "{}",
        run.stdout
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a dry run connected to a host"
    );
}

#[test]
fn a_dry_run_with_an_ssh_config_it_cannot_read_says_a_run_would_stop() {
    let dir = mini_copy();
    let dir = dir.path();
    let config = dir.join("ssh_config");
    std::fs::write(&config, "Host *\n  Port many\n").unwrap();
    let run = reprise_with_env(
        dir,
        &[
            "drill",
            "--dry-run",
            "--ssh-config",
            config.to_str().unwrap(),
        ],
        &[("HOME", dir.to_str().unwrap())],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "\nHosts: shown as the inventory names them; a run would stop before reaching any: the ssh configuration "
        ) && run.stdout.contains("is not valid"),
        "{}",
        run.stdout
    );
}
