//! Printing the HTML report to PDF with headless Chromium, when it is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error(
        "Chromium is needed to make a PDF and was not found (looked for $REPRISE_CHROMIUM, chromium, chromium-browser, google-chrome): install it with `apt-get install chromium`, or write HTML with `--format html` and print it from a browser"
    )]
    NoChromium,
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Chromium failed to print {path}: {detail}")]
    Chromium { path: PathBuf, detail: String },
}

/// The Chromium binary to use: `$REPRISE_CHROMIUM`, or the first known name on PATH.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REPRISE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs headless Chromium on a local file with `extra` arguments (e.g. `--print-to-pdf=…`).
pub fn headless(html: &str, extra: &[String], out: &Path) -> Result<(), PdfError> {
    let browser = chromium().ok_or(PdfError::NoChromium)?;
    let work = tempdir(out)?;
    let page = work.join("report.html");
    std::fs::write(&page, html).map_err(|source| PdfError::Io {
        path: page.clone(),
        source,
    })?;
    let profile = work.join("profile");
    let result = Command::new(&browser)
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--disable-extensions")
        .arg("--no-pdf-header-footer")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output();
    let _ = std::fs::remove_dir_all(&work);
    let output = result.map_err(|e| PdfError::Chromium {
        path: out.to_path_buf(),
        detail: format!("cannot start {}: {e}", browser.display()),
    })?;
    if !output.status.success() || !out.is_file() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(PdfError::Chromium {
            path: out.to_path_buf(),
            detail: format!(
                "{} ({})",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ),
        });
    }
    Ok(())
}

/// Prints `html` to the PDF file `out`.
pub fn print(html: &str, out: &Path) -> Result<(), PdfError> {
    let out = absolute(out);
    let _ = std::fs::remove_file(&out);
    headless(html, &[format!("--print-to-pdf={}", out.display())], &out)
}

/// Takes a PNG screenshot of `html` (width × height pixels) into `out`.
pub fn screenshot(html: &str, out: &Path, width: u32, height: u32) -> Result<(), PdfError> {
    let out = absolute(out);
    let _ = std::fs::remove_file(&out);
    headless(
        html,
        &[
            format!("--screenshot={}", out.display()),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".to_string(),
        ],
        &out,
    )
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn tempdir(near: &Path) -> Result<PathBuf, PdfError> {
    let base = std::env::temp_dir().join(format!(
        "reprise-print-{}-{}",
        std::process::id(),
        near.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&base).map_err(|source| PdfError::Io {
        path: base.clone(),
        source,
    })?;
    Ok(base)
}
