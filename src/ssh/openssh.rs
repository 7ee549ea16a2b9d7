//! Bulk streams through the system's OpenSSH client, as borg and restic do: OpenSSH computes
//! its ciphers with OpenSSL's vectorised code on both ends, where libssh2 calls OpenSSL one
//! block at a time (AES-GCM) or computes ChaCha20-Poly1305 in portable C.
//!
//! One host-key policy for both clients. The caller checks the host over libssh2 first (its
//! policy: an unknown key refused, or recorded under accept-new; a changed or `@revoked` key
//! refused). `ssh` then checks the key again, in the same `known_hosts` file only, with
//! `StrictHostKeyChecking=yes`, accepting only a plain key of the type libssh2 checked (no host
//! certificate: reprise does not use `@cert-authority` lines), reading no configuration file
//! and writing nothing. So it refuses every key reprise refuses, whatever the user's or the
//! system's ssh configuration says.
//!
//! It only builds the command line: it never decides what to run, and it prints nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{HostSpec, SshError};

/// Seconds between keepalives to the host, and how many may go unanswered: a host that stops
/// answering ends the stream within about a minute.
const ALIVE_INTERVAL_SECS: u64 = 15;
const ALIVE_COUNT: u32 = 4;

/// The ciphers offered first, when this machine's processor has AES and carry-less multiply
/// instructions: AES-GCM then costs OpenSSL, here and in the host's sshd, a fraction of
/// ChaCha20-Poly1305 (OpenSSH's default, whose Poly1305 is portable C). Empty: OpenSSH's own
/// order.
pub fn preferred_ciphers() -> &'static [&'static str] {
    #[cfg(target_arch = "x86_64")]
    let fast_gcm = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let fast_gcm = std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let fast_gcm = false;
    if fast_gcm {
        &["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    } else {
        &[]
    }
}

/// `preferred` first, then the rest of `supported` in its order, comma-separated.
fn cipher_list(preferred: &[&str], supported: &[&str]) -> String {
    let rest = supported.iter().filter(|c| !preferred.contains(c));
    preferred
        .iter()
        .chain(rest)
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// The ciphers OpenSSH offers by default (7.x to 9.x), in its order: what follows the
/// preferred ones.
const OPENSSH_CIPHERS: [&str; 6] = [
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
];

/// The `ssh` command that runs `remote` (one shell command line) on the host of `spec`, its
/// standard streams piped, leading its own process group. `key_type` is the type of the host
/// key the caller has just verified over libssh2: only a key of that type is accepted.
pub fn command(
    spec: &HostSpec,
    key_type: &str,
    connect_timeout: Duration,
    remote: &str,
) -> Result<Command, SshError> {
    let option = |name: &str, path: &Path| -> Result<String, SshError> {
        Ok(format!("{name}={}", config_path(spec, path)?))
    };
    let mut options = vec![
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=yes".to_string(),
        option("UserKnownHostsFile", &spec.known_hosts)?,
        "GlobalKnownHostsFile=/dev/null".to_string(),
        format!("HostKeyAlgorithms={}", host_key_algorithms(key_type)),
        "UpdateHostKeys=no".to_string(),
        "CheckHostIP=no".to_string(),
        "VerifyHostKeyDNS=no".to_string(),
        "HashKnownHosts=no".to_string(),
        format!("ConnectTimeout={}", connect_timeout.as_secs().max(1)),
        format!("ServerAliveInterval={ALIVE_INTERVAL_SECS}"),
        format!("ServerAliveCountMax={ALIVE_COUNT}"),
        "Compression=no".to_string(),
        "ControlMaster=no".to_string(),
        "ControlPath=none".to_string(),
        "ForwardAgent=no".to_string(),
        "ForwardX11=no".to_string(),
        "ClearAllForwardings=yes".to_string(),
        "PermitLocalCommand=no".to_string(),
        "LogLevel=ERROR".to_string(),
    ];
    match &spec.identity {
        Some(key) => {
            options.push(option("IdentityFile", key)?);
            options.push("IdentitiesOnly=yes".to_string());
        }
        // The ssh-agent, as libssh2 uses it: SSH_AUTH_SOCK.
        None => options.push("IdentityFile=none".to_string()),
    }
    let preferred = preferred_ciphers();
    if !preferred.is_empty() {
        options.push(format!(
            "Ciphers={}",
            cipher_list(preferred, &OPENSSH_CIPHERS)
        ));
    }
    let mut cmd = Command::new("ssh");
    // No configuration file: the host is reached exactly as libssh2 reaches it (address,
    // port, user, key), and nothing there can loosen the host-key check.
    cmd.args(["-F", "/dev/null", "-T", "-x", "-a"]);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("-p")
        .arg(spec.port.to_string())
        .arg("-l")
        .arg(&spec.user)
        .arg("--")
        .arg(&spec.address)
        .arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    Ok(cmd)
}

/// The signature algorithms of a host key type: an RSA key signs with SHA-2 (OpenSSH and
/// libssh2 no longer accept SHA-1).
fn host_key_algorithms(key_type: &str) -> String {
    match key_type {
        "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256".to_string(),
        other => other.to_string(),
    }
}

/// A path as an ssh option's value: absolute (no `~` expansion), `%` doubled (no token
/// expansion), double-quoted with `\` and `"` escaped.
fn config_path(spec: &HostSpec, path: &Path) -> Result<String, SshError> {
    let absolute = std::path::absolute(path).map_err(|e| SshError::Local {
        host: spec.id.clone(),
        reason: format!("{}: {e}", path.display()),
    })?;
    let text = absolute.to_str().filter(|t| !t.contains(['\n', '\r']));
    let Some(text) = text else {
        return Err(SshError::Local {
            host: spec.id.clone(),
            reason: format!(
                "the OpenSSH client cannot be given the path {:?}; rename it or choose \
                 --ssh-client libssh2",
                absolute
            ),
        });
    };
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("\"{escaped}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(known_hosts: &str) -> HostSpec {
        HostSpec {
            id: "hv1".into(),
            address: "127.0.0.2".into(),
            port: 2222,
            user: "root".into(),
            known_hosts: known_hosts.into(),
            identity: None,
        }
    }

    #[test]
    fn preferred_ciphers_come_first_and_the_others_keep_their_order() {
        assert_eq!(
            cipher_list(
                &["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
                &OPENSSH_CIPHERS
            ),
            "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,\
             aes128-ctr,aes192-ctr,aes256-ctr"
        );
        assert_eq!(
            cipher_list(&[], &OPENSSH_CIPHERS),
            OPENSSH_CIPHERS.join(",")
        );
    }

    #[test]
    fn paths_are_quoted_and_never_expanded() {
        let s = spec("/etc/reprise/known_hosts");
        let quoted = |p: &str| config_path(&s, Path::new(p)).unwrap();
        assert_eq!(quoted("/a/known_hosts"), "\"/a/known_hosts\"");
        assert_eq!(quoted("/a b/%d \"x\"\\"), "\"/a b/%%d \\\"x\\\"\\\\\"");
        let relative = quoted("~/kh");
        assert!(relative.starts_with("\"/"), "{relative}");
        assert!(config_path(&s, Path::new("/a\nb")).is_err());
    }

    #[test]
    fn only_the_verified_key_type_is_accepted() {
        assert_eq!(host_key_algorithms("ssh-ed25519"), "ssh-ed25519");
        assert_eq!(host_key_algorithms("ssh-rsa"), "rsa-sha2-512,rsa-sha2-256");
        let cmd = command(
            &spec("/kh"),
            "ecdsa-sha2-nistp256",
            Duration::from_secs(3),
            "true",
        )
        .unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for expected in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=\"/kh\"",
            "GlobalKnownHostsFile=/dev/null",
            "HostKeyAlgorithms=ecdsa-sha2-nistp256",
            "BatchMode=yes",
            "ConnectTimeout=3",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected}: {args:?}");
        }
        assert_eq!(&args[..2], ["-F", "/dev/null"]);
        assert_eq!(&args[args.len() - 3..], ["--", "127.0.0.2", "true"]);
    }
}
