//! HTTP and HTTPS health checks from the orchestrator: one GET, the status code the server
//! answered and the start of its body (redirects are not followed, proxies are not used: a
//! check sees the server itself).
//!
//! HTTPS certificates are checked against the system's certificate authorities (as the users'
//! browsers would), or against the authorities of a CA file the runbook names, or not at all
//! when the runbook says `insecure = true` (and the plan says so). It knows nothing of steps or
//! runs; the runner calls it on a blocking thread.

use std::time::Duration;

use crate::plan::Tls;

/// Why a check could not get a status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read the CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the CA file {0} holds no certificate")]
    NoCertificate(String),
    #[error("{0}")]
    Request(String),
}

/// The status code and the start of the body (at most `limit` bytes, as text) of `GET url`,
/// within `timeout` in all.
pub fn get(
    url: &str,
    tls: &Tls,
    timeout: Duration,
    limit: usize,
) -> Result<(u16, String), HttpError> {
    use std::io::Read;
    let agent = agent(tls, timeout)?;
    let response = agent
        .get(url)
        .call()
        .map_err(|e| HttpError::Request(describe(&e)))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(limit as u64)
        .read_to_end(&mut body)
        .map_err(|e| HttpError::Request(format!("reading the body: {e}")))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn agent(tls: &Tls, timeout: Duration) -> Result<ureq::Agent, HttpError> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let roots = match &tls.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| HttpError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(HttpError::CaFile {
                            path: path.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            if certs.is_empty() {
                return Err(HttpError::NoCertificate(path.clone()));
            }
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::PlatformVerifier,
    };
    let tls_config = TlsConfig::builder()
        .root_certs(roots)
        .disable_verification(tls.insecure)
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls_config)
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("reprise/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

/// The error in words an operator can act on (a certificate problem says so).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Rustls(tls) => format!("TLS: {tls}"),
        ureq::Error::Timeout(_) => "no answer in time".to_string(),
        ureq::Error::Io(io) => {
            // rustls reports a refused certificate through the stream, as an I/O error.
            let text = io.to_string();
            if text.contains("certificate") || text.contains("CA certificates") {
                format!("TLS: {text}")
            } else {
                text
            }
        }
        other => other.to_string(),
    }
}
