//! The body of a lab "VM" or of a host's services: it checks and reads its disk images, then
//! answers on its ports (127.0.0.0/8 only) until stopped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The body of a lab "VM" or service: checks and reads its disk images, then answers every
/// connection on its ports with a small HTTP 200, until killed.
pub fn serve(
    name: &str,
    listen: &[String],
    images: &[PathBuf],
    pidfile: &Path,
) -> Result<(), String> {
    for image in images {
        let mut f = std::fs::File::open(image).map_err(|e| {
            format!(
                "refusing to start {name}: cannot open {}: {e}",
                image.display()
            )
        })?;
        let mut head = [0u8; 4];
        f.read_exact(&mut head).map_err(|e| {
            format!(
                "refusing to start {name}: cannot read {}: {e}",
                image.display()
            )
        })?;
        if &head != b"QFI\xfb" {
            return Err(format!(
                "refusing to start {name}: {} is not a qcow2 image",
                image.display()
            ));
        }
        // Read it all, as a booting VM reads its disk: a damaged file fails here.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "refusing to start {name}: reading {} failed: {e}",
                        image.display()
                    ));
                }
            }
        }
    }
    let mut listeners = Vec::new();
    for l in listen {
        let addr: SocketAddr = l.parse().map_err(|_| format!("bad listen address {l}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {addr}: the lab listens on 127.0.0.0/8 only"
            ));
        }
        listeners
            .push(TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?);
    }
    let tmp = pidfile.with_extension("tmp");
    std::fs::write(&tmp, std::process::id().to_string()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, pidfile).map_err(|e| e.to_string())?;
    let body = format!("lab {name} is up\n");
    let mut handles = Vec::new();
    for listener in listeners {
        let body = body.clone();
        handles.push(std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
