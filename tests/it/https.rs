//! HTTPS health checks against a real TLS server (`openssl s_server`, on its own 127.0.0.x
//! address and a free port) whose certificate is signed by a certificate authority the test
//! makes: trusted through the runbook's `ca_file`, through the system's store (here the
//! `SSL_CERT_FILE` the platform verifier reads), refused when nothing trusts it, and accepted
//! unverified only with `insecure = true`, which the plan says.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::Run;
use crate::sshd::poll_until;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): run scripts/test.sh, which installs it")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS server answering `GET /` with 200, for as long as it lives.
struct TlsServer {
    child: Child,
    address: Ipv4Addr,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate authority (`ca.pem`) and a server certificate it signed for `address`.
fn make_certificates(dir: &Path, address: Ipv4Addr) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=reprise test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=portal",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn start_server(dir: &Path) -> TlsServer {
    let seed = std::process::id() % 200;
    let address = Ipv4Addr::new(127, 0, 0, 30 + seed as u8);
    make_certificates(dir, address);
    let port = TcpListener::bind((address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-cert", "server.pem", "-key"])
        .arg("server.key")
        .arg("-accept")
        .arg(format!("{address}:{port}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let server = TlsServer {
        child,
        address,
        port,
    };
    assert!(
        poll_until(Duration::from_secs(10), || TcpStream::connect((
            address, port
        ))
        .is_ok()),
        "openssl s_server did not listen on {address}:{port}"
    );
    server
}

/// A one-service inventory whose restore is one http check of `url`, with `extra` keys.
fn inventory(dir: &Path, url: &str, extra: &str) {
    std::fs::create_dir_all(dir.join("inventory")).unwrap();
    std::fs::create_dir_all(dir.join("runbooks")).unwrap();
    std::fs::write(
        dir.join("inventory/sites.toml"),
        "[sites.main]\nrole = \"primary\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("inventory/services.toml"),
        "[services.portal]\nkind = \"application\"\nrto = \"1h\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("runbooks/portal.toml"),
        format!(
            "[[portal.restore]]\nid = \"tls\"\nkind = \"check\"\nprobe = \"http\"\n\
             url = \"{url}\"\ntimeout = \"4s\"\ninterval = \"1s\"\n{extra}\n"
        ),
    )
    .unwrap();
}

impl TlsServer {
    fn url(&self) -> String {
        format!("https://{}:{}/", self.address, self.port)
    }
}

fn reprise_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprise"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the reprise binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Runs the restore; returns its exit code and the journal as `reprise show` prints it.
fn restore(dir: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let run = reprise_env(dir, &["--state-dir", state, "restore", "--no-prompt"], env);
    let show = reprise_env(dir, &["--state-dir", state, "show", "latest"], &[]);
    assert_eq!(show.code, 0, "{show:?}");
    (run.code, show.stdout)
}

#[test]
fn https_checks_trust_the_ca_file_the_system_store_or_nothing_when_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let ca = dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();

    // Trusted through the runbook's CA file.
    inventory(dir.path(), &server.url(), &format!("ca_file = \"{ca}\""));
    let plan = reprise_env(dir.path(), &["plan", "restore"], &[]);
    assert!(
        plan.stdout
            .contains(&format!("certificate checked against {ca}")),
        "{}",
        plan.stdout
    );
    let (code, show) = restore(dir.path(), &[]);
    assert_eq!(code, 0, "{show}");

    // Nothing trusts the test's authority: the check fails, saying it is the certificate.
    inventory(dir.path(), &server.url(), "");
    let plan = reprise_env(dir.path(), &["plan", "restore"], &[]);
    assert!(
        plan.stdout
            .contains("certificate checked against the system's authorities"),
        "{}",
        plan.stdout
    );
    let (code, show) = restore(dir.path(), &[]);
    assert_eq!(code, 1, "{show}");
    // (UnknownIssuer; or, on a machine with no authorities at all, that none were loaded.)
    assert!(
        show.contains("TLS: invalid peer certificate: UnknownIssuer")
            || show.contains("No CA certificates were loaded"),
        "{show}"
    );

    // The same runbook passes once the system's store holds the authority.
    let (code, show) = restore(dir.path(), &[("SSL_CERT_FILE", ca)]);
    assert_eq!(code, 0, "{show}");

    // `insecure = true` accepts the unknown certificate, and the plan says it is not verified.
    inventory(dir.path(), &server.url(), "insecure = true");
    let plan = reprise_env(dir.path(), &["plan", "restore"], &[]);
    assert!(
        plan.stdout.contains("certificate NOT verified"),
        "{}",
        plan.stdout
    );
    let (code, show) = restore(dir.path(), &[]);
    assert_eq!(code, 0, "{show}");
    // The report says which check proved nothing about the server's identity.
    let state = dir.path().join("state");
    let report = reprise_env(
        dir.path(),
        &["--state-dir", state.to_str().unwrap(), "report", "latest"],
        &[],
    );
    assert!(
        report.stdout.contains(
            "accepted a certificate without verifying it (`insecure = true`): portal/tls"
        ),
        "{}",
        report.stdout
    );

    // A CA file that is not there fails the check at once, naming the file.
    inventory(
        dir.path(),
        &server.url(),
        &format!("ca_file = \"{}/missing.pem\"", dir.path().display()),
    );
    let (code, show) = restore(dir.path(), &[]);
    assert_eq!(code, 1, "{show}");
    assert!(
        show.contains("cannot read the CA file") && show.contains("missing.pem"),
        "{show}"
    );
}

#[test]
fn tls_settings_on_a_plain_http_check_or_together_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    for (url, extra, expected) in [
        (
            "http://127.0.0.1:8080/",
            "insecure = true",
            "`ca_file` and `insecure` are for https",
        ),
        (
            "https://127.0.0.1:8443/",
            "insecure = true\nca_file = \"/etc/ca.pem\"",
            "`insecure = true` verifies no certificate",
        ),
        (
            "https://127.0.0.1:8443/",
            "ca_file = \"ca.pem\"",
            "`ca_file` must be an absolute path",
        ),
        (
            "ftp://127.0.0.1/",
            "",
            "is not an http:// or https:// address",
        ),
    ] {
        inventory(dir.path(), url, extra);
        let run = reprise_env(dir.path(), &["validate"], &[]);
        assert_eq!(run.code, 3, "{url} {extra}: {run:?}");
        assert!(run.stderr.contains(expected), "{}", run.stderr);
        assert!(
            run.stderr.contains("runbooks/portal.toml:"),
            "{}",
            run.stderr
        );
    }
}
