//! The user's OpenSSH client configuration (`~/.ssh/config`), read with the `ssh2-config`
//! crate, for the five settings reprise's connections can honour: `HostName`, `User`, `Port`,
//! `IdentityFile` and `UserKnownHostsFile`. A host is looked up by its inventory address, as
//! `ssh ADDRESS` would be, first match winning; what the inventory names itself wins over it.
//!
//! Settings that would send a connection somewhere else or check another key than the one
//! reprise checks are refused for the hosts they apply to, never ignored: `ProxyJump` and
//! `ProxyCommand` (reprise connects to hosts directly), `HostKeyAlias`, and tokens it cannot
//! expand. A file with a `Match` block is refused whole: the crate does not evaluate `Match`,
//! so the lines after one would apply to the wrong hosts. Everything else in the file (ciphers,
//! `StrictHostKeyChecking`, agent settings, …) is not used: reprise's own host-key policy
//! applies whatever the file says.
use std::io::Read;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

/// The largest configuration file read: a bigger one is not an ssh configuration.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the ssh configuration {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "the ssh configuration {path} is not valid: {reason}\nhint: fix it, or run with `--ssh-config none` to leave it unread"
    )]
    Parse { path: String, reason: String },
    #[error(
        "{path}{line}: `Match` blocks are not supported: the lines after one would apply to the wrong hosts\nhint: write the settings reprise needs (address, port, user, identity, known_hosts) in the inventory, or run with `--ssh-config none`"
    )]
    Match { path: String, line: String },
}

/// The settings of one address, before the inventory's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// `HostName`: where to connect, and the name its key is known under.
    pub host_name: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// The first `IdentityFile` that exists (OpenSSH skips missing ones), else the first.
    pub identity: Option<PathBuf>,
    /// The first file of `UserKnownHostsFile`.
    pub known_hosts: Option<PathBuf>,
    /// Why that file cannot be the one a host's key is checked in (`/dev/null`, `none`, not
    /// a file): the host is refused when nothing else names its known_hosts.
    pub known_hosts_refused: Option<String>,
    /// Why this address cannot be reached as the file says.
    pub refused: Option<String>,
}

/// A parsed ssh configuration file.
#[derive(Debug)]
pub struct UserSshConfig {
    path: PathBuf,
    home: Option<PathBuf>,
    config: SshConfig,
}

/// `~/.ssh/config`, where `HOME` is.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/config"))
}

impl UserSshConfig {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<UserSshConfig, ConfigError> {
        let shown = path.display().to_string();
        let read_err = |reason: String| ConfigError::Read {
            path: shown.clone(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| read_err(e.to_string()))?;
        if text.len() as u64 > MAX_BYTES {
            return Err(read_err(format!("larger than {MAX_BYTES} bytes")));
        }
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Self::parse(path, &text, home)
    }

    /// Parses `text`, read from `path`; `~` stands for `home`.
    pub fn parse(
        path: &Path,
        text: &str,
        home: Option<PathBuf>,
    ) -> Result<UserSshConfig, ConfigError> {
        let shown = path.display().to_string();
        if let Some(n) = text
            .lines()
            .position(|l| first_word(l).eq_ignore_ascii_case("match"))
        {
            return Err(ConfigError::Match {
                path: shown,
                line: format!(":{}", n + 1),
            });
        }
        let mut parser = SshConfig::default();
        if let Some(home) = &home {
            parser = parser.home_dir(home);
        }
        let config = parser
            .parse(
                &mut text.as_bytes(),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map_err(|e| ConfigError::Parse {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        // A `Match` in an included file.
        let included_match = config.get_hosts().iter().any(|h| {
            h.params
                .ignored_fields
                .keys()
                .any(|k| k.eq_ignore_ascii_case("match"))
        });
        if included_match {
            return Err(ConfigError::Match {
                path: shown,
                line: " (in a file it includes)".to_string(),
            });
        }
        Ok(UserSshConfig {
            path: path.to_path_buf(),
            home,
            config,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings for `address`, the remote user being `user` when the inventory names it.
    pub fn resolve(&self, address: &str, user: Option<&str>) -> Resolved {
        let params = self.config.query(address);
        let file = self.path.display();
        let refuse = |why: String| Resolved {
            refused: Some(format!("{file} {why} for {address}")),
            ..Resolved::default()
        };
        let unsupported = |name: &str| {
            params
                .unsupported_fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let is_none = |args: &[String]| args.len() == 1 && args[0].eq_ignore_ascii_case("none");
        if let Some(jump) = params.proxy_jump.as_ref().filter(|j| !is_none(j)) {
            return refuse(format!(
                "sets `ProxyJump {}`: reprise connects to hosts directly; make the host reachable from here, or run reprise on a machine that reaches it (`--ssh-config none` leaves the file unread)",
                jump.join(",")
            ));
        }
        if let Some(cmd) = unsupported("proxycommand").filter(|c| !is_none(c)) {
            return refuse(format!(
                "sets `ProxyCommand {}`: reprise connects to hosts directly; make the host reachable from here, or run reprise on a machine that reaches it (`--ssh-config none` leaves the file unread)",
                cmd.join(" ")
            ));
        }
        if let Some(alias) = unsupported("hostkeyalias") {
            return refuse(format!(
                "sets `HostKeyAlias {}`: reprise checks a host's key under its address (or HostName) only; remove the alias or set the host's own known_hosts in the inventory",
                alias.join(" ")
            ));
        }
        let host_name = match params.host_name.as_deref() {
            Some(h) => match expand(h, address, address, user, self.home.as_deref()) {
                Ok(h) => Some(h),
                Err(t) => {
                    return refuse(format!(
                        "uses {t} in `HostName {h}`, which reprise does not expand"
                    ));
                }
            },
            None => None,
        };
        let target = host_name.as_deref().unwrap_or(address);
        let remote_user = user.or(params.user.as_deref());
        let expand_path = |p: &str| -> Result<PathBuf, String> {
            let p = expand(p, address, target, remote_user, self.home.as_deref())?;
            Ok(match (p.strip_prefix("~/"), &self.home) {
                (Some(rest), Some(home)) => home.join(rest),
                _ => PathBuf::from(p),
            })
        };
        let mut identities = Vec::new();
        for f in params.identity_file.iter().flatten() {
            match expand_path(&f.to_string_lossy()) {
                Ok(p) => identities.push(p),
                Err(t) => {
                    return refuse(format!(
                        "uses {t} in `IdentityFile {}`, which reprise does not expand",
                        f.display()
                    ));
                }
            }
        }
        let identity = identities
            .iter()
            .find(|p| p.exists())
            .or(identities.first())
            .cloned();
        let known_hosts = match unsupported("userknownhostsfile").and_then(|v| v.first().cloned()) {
            Some(f) => match expand_path(&f) {
                Ok(p) => Some(p),
                Err(t) => {
                    return refuse(format!(
                        "uses {t} in `UserKnownHostsFile {f}`, which reprise does not expand"
                    ));
                }
            },
            None => None,
        };
        let known_hosts_refused = known_hosts
            .as_ref()
            .filter(|p| {
                p.as_os_str().eq_ignore_ascii_case("none")
                    || p.as_path() == Path::new("/dev/null")
                    || std::fs::metadata(p).is_ok_and(|m| !m.is_file())
            })
            .map(|p| {
                format!(
                    "{file} sets `UserKnownHostsFile {}` for {address}, which keeps no host keys: reprise checks every host's key; name a known_hosts file (the host's `known_hosts` in the inventory, or --known-hosts)",
                    p.display()
                )
            });
        Resolved {
            host_name,
            port: params.port,
            user: params.user.clone(),
            identity,
            known_hosts: known_hosts.filter(|_| known_hosts_refused.is_none()),
            known_hosts_refused,
            refused: None,
        }
    }
}

fn first_word(line: &str) -> &str {
    line.trim_start()
        .split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or("")
}

/// OpenSSH's tokens that reprise can expand: `%%`, `%h` (the host name), `%n` (the name
/// given, here the inventory address), `%r` (the remote user), `%d` (the home folder), `%u`
/// (the local user). Any other is named back.
fn expand(
    text: &str,
    given: &str,
    host: &str,
    remote_user: Option<&str>,
    home: Option<&Path>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let token = chars.next();
        let value = match token {
            Some('%') => Some("%".to_string()),
            Some('h') => Some(host.to_string()),
            Some('n') => Some(given.to_string()),
            Some('r') => remote_user.map(str::to_string),
            Some('d') => home.map(|h| h.display().to_string()),
            Some('u') => std::env::var("USER").ok(),
            _ => None,
        };
        match value {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "`%{}`",
                    token.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> UserSshConfig {
        UserSshConfig::parse(
            Path::new("/home/it/.ssh/config"),
            text,
            Some(PathBuf::from("/home/it")),
        )
        .unwrap()
    }

    #[test]
    fn the_first_match_gives_each_setting_as_openssh_does() {
        let c = config(
            "Host nas-main\n  HostName 10.1.0.20\n  Port 2200\n  IdentityFile ~/.ssh/nas_key\n\nHost *.school.example nas-*\n  User admin\n  Port 22\n  UserKnownHostsFile ~/.ssh/school_hosts /etc/ssh/other\n\nHost *\n  User root\n",
        );
        assert_eq!(
            c.resolve("nas-main", None),
            Resolved {
                host_name: Some("10.1.0.20".to_string()),
                port: Some(2200),
                user: Some("admin".to_string()),
                identity: Some(PathBuf::from("/home/it/.ssh/nas_key")),
                known_hosts: Some(PathBuf::from("/home/it/.ssh/school_hosts")),
                known_hosts_refused: None,
                refused: None,
            }
        );
        let other = c.resolve("hv-pra.school.example", None);
        assert_eq!(other.host_name, None);
        assert_eq!(other.port, Some(22));
        assert_eq!(other.user.as_deref(), Some("admin"));
        assert_eq!(c.resolve("10.9.9.9", None).user.as_deref(), Some("root"));
        assert_eq!(c.resolve("10.9.9.9", None).port, None);
    }

    #[test]
    fn tokens_are_expanded_or_the_host_refused() {
        let c = config(
            "Host a\n  HostName %h.school.example\n  IdentityFile %d/.ssh/id_%r\nHost b\n  HostName %C\n",
        );
        let a = c.resolve("a", Some("backup"));
        assert_eq!(a.host_name.as_deref(), Some("a.school.example"));
        assert_eq!(a.identity, Some(PathBuf::from("/home/it/.ssh/id_backup")));
        let b = c.resolve("b", None);
        assert!(b.refused.unwrap().contains("`%C`"));
    }

    #[test]
    fn a_proxy_or_a_key_alias_refuses_the_host_and_says_why() {
        let c = config(
            "Host jumped\n  ProxyJump bastion\nHost piped\n  ProxyCommand ssh -W %h:%p bastion\nHost aliased\n  HostKeyAlias nas\nHost direct\n  ProxyJump none\n  ProxyCommand none\n",
        );
        for (address, said) in [
            ("jumped", "`ProxyJump bastion`"),
            ("piped", "`ProxyCommand ssh -W %h:%p bastion`"),
            ("aliased", "`HostKeyAlias nas`"),
        ] {
            let why = c.resolve(address, None).refused.unwrap_or_default();
            assert!(why.contains(said), "{address}: {why}");
            assert!(why.contains("/home/it/.ssh/config"), "{why}");
            assert!(why.contains(&format!("for {address}")), "{why}");
        }
        assert_eq!(c.resolve("direct", None).refused, None);
    }

    #[test]
    fn a_known_hosts_file_that_keeps_no_keys_is_never_used() {
        let c = config(
            "Host a\n  UserKnownHostsFile /dev/null\nHost b\n  UserKnownHostsFile none\nHost c\n  UserKnownHostsFile /\n",
        );
        for address in ["a", "b", "c"] {
            let r = c.resolve(address, None);
            assert_eq!(r.known_hosts, None, "{address}");
            let why = r.known_hosts_refused.unwrap_or_default();
            assert!(why.contains("keeps no host keys"), "{address}: {why}");
        }
    }

    #[test]
    fn a_match_block_refuses_the_whole_file_naming_its_line() {
        let err = UserSshConfig::parse(
            Path::new("/home/it/.ssh/config"),
            "Host a\n  User x\n\nMatch host b exec true\n  User y\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/home/it/.ssh/config:4: `Match`"), "{err}");
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let err = UserSshConfig::parse(Path::new("/x/config"), "Host a\n  Port many\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/x/config is not valid"), "{err}");
        assert!(err.contains("--ssh-config none"), "{err}");
    }
}
