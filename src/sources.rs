//! Reading the inventory and runbook folders from disk: the only IO of the loading pipeline.
//! Everything after this stage works on the text kept here.
//!
//! Every `*.toml` entry of a folder must be a readable regular file (or a link to one) of at
//! most [`MAX_FILE_BYTES`]: one that is not (a dangling link, a folder, a pipe, an unreadable
//! or oversized file) is an error naming it, never skipped. A file that is not UTF-8 is kept
//! (with replacement characters) and reported as a located error.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, FileId, Location, SourceMap};

/// The text of every file of both folders, in a stable (sorted) order.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub map: SourceMap,
    /// The built-in drivers first, then `inventory/*.toml`.
    pub inventory: Vec<FileId>,
    pub runbooks: Vec<FileId>,
    /// Overlay files (`--overlay`): per-environment values over the inventory.
    pub overlays: Vec<FileId>,
    /// Problems found while reading (a file that is not UTF-8), reported with the others.
    pub diagnostics: Vec<Diagnostic>,
}

/// The built-in hypervisor drivers, read before the inventory (overridable there under
/// `[drivers.NAME]`).
pub const BUILTIN_DRIVERS: &str = include_str!("drivers.toml");
pub const BUILTIN_DRIVERS_PATH: &str = "<built-in drivers>";

/// The largest inventory, runbook or overlay file read (a generated inventory of 10,000
/// services takes 12 MiB in all): a larger one is refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why one file or folder entry could not be read.
#[derive(Debug)]
pub struct FileProblem {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("cannot read {what} folder {path}: {source}")]
    Folder {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", describe_problems(.0))]
    Files(Vec<FileProblem>),
    #[error("{what} folder {path} holds no .toml file")]
    Empty { what: &'static str, path: PathBuf },
}

impl Sources {
    /// Reads every `*.toml` file of both folders.
    /// Reads every `*.toml` file of both folders; every entry that cannot be read is
    /// reported, not only the first.
    pub fn read(inventory: &Path, runbooks: &Path) -> Result<Sources, SourcesError> {
        let mut sources = Sources::default();
        sources.inventory.push(
            sources
                .map
                .add(BUILTIN_DRIVERS_PATH, BUILTIN_DRIVERS.to_string()),
        );
        let mut problems = Vec::new();
        let inv_files = toml_files(inventory, "inventory", &mut problems)?;
        let book_files = toml_files(runbooks, "runbooks", &mut problems)?;
        for (files, ids) in [(inv_files, 0), (book_files, 1)] {
            for path in files {
                match read_bytes(&path) {
                    Ok(bytes) => {
                        let id = sources.add_bytes(path, bytes);
                        if ids == 0 {
                            sources.inventory.push(id);
                        } else {
                            sources.runbooks.push(id);
                        }
                    }
                    Err(reason) => problems.push(FileProblem { path, reason }),
                }
            }
        }
        if !problems.is_empty() {
            return Err(SourcesError::Files(problems));
        }
        Ok(sources)
    }

    /// Adds an overlay file (read after the inventory, changing some of its values).
    pub fn add_overlay(&mut self, path: &Path) -> Result<(), SourcesError> {
        let bytes = read_bytes(path).map_err(|reason| {
            SourcesError::Files(vec![FileProblem {
                path: path.to_path_buf(),
                reason,
            }])
        })?;
        let id = self.add_bytes(path.to_path_buf(), bytes);
        self.overlays.push(id);
        Ok(())
    }

    /// Adds a file's content; one that is not UTF-8 is kept with replacement characters and
    /// reported at its first invalid byte.
    fn add_bytes(&mut self, path: PathBuf, bytes: Vec<u8>) -> FileId {
        match String::from_utf8(bytes) {
            Ok(text) => self.map.add(path, text),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let id = self.map.add(path, text);
                self.diagnostics.push(
                    Diagnostic::error("this file is not UTF-8 text")
                        .at(Location::new(id, at..at + 1))
                        .hint("save it as UTF-8 (inventory and runbook files are UTF-8 TOML)"),
                );
                id
            }
        }
    }

    /// Sources from text held in memory (tests, benchmarks, generated inventories).
    pub fn from_texts(
        inventory: impl IntoIterator<Item = (String, String)>,
        runbooks: impl IntoIterator<Item = (String, String)>,
    ) -> Sources {
        let mut sources = Sources::default();
        sources.inventory.push(
            sources
                .map
                .add(BUILTIN_DRIVERS_PATH, BUILTIN_DRIVERS.to_string()),
        );
        for (path, text) in inventory {
            sources.inventory.push(sources.map.add(path, text));
        }
        for (path, text) in runbooks {
            sources.runbooks.push(sources.map.add(path, text));
        }
        sources
    }

    /// A content hash of the files, in order: the same files give the same hash, however the
    /// folders were named on the command line (`./inv`, `inv`, `../x/inv`). Each file counts
    /// by its part (built-in drivers, inventory, runbooks, overlay), its file name and its
    /// text; the folder it was read from does not count.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        let parts: [(&str, &[FileId]); 3] = [
            ("inventory", &self.inventory),
            ("runbooks", &self.runbooks),
            ("overlays", &self.overlays),
        ];
        for (part, files) in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
            hasher.update(&(files.len() as u64).to_le_bytes());
            for &file in files {
                let path = self.map.path(file);
                let name = path.file_name().unwrap_or(path.as_os_str());
                let name = name.as_encoded_bytes();
                hasher.update(&(name.len() as u64).to_le_bytes());
                hasher.update(name);
                let text = self.map.text(file);
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
        hasher.finalize().to_hex().to_string()
    }
}

fn describe_problems(problems: &[FileProblem]) -> String {
    match problems {
        [one] => format!("cannot read {}: {}", one.path.display(), one.reason),
        many => {
            let mut out = format!("cannot read {} files:", many.len());
            for p in many {
                out.push_str(&format!("\n  {}: {}", p.path.display(), p.reason));
            }
            out
        }
    }
}

/// The content of a regular file of at most [`MAX_FILE_BYTES`], or why not.
fn read_bytes(path: &Path) -> Result<Vec<u8>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Err(match std::fs::read_link(path) {
                Ok(target) if e.kind() == std::io::ErrorKind::NotFound => format!(
                    "it is a symbolic link to {}, which does not exist",
                    target.display()
                ),
                _ => e.to_string(),
            });
        }
    };
    if meta.is_dir() {
        return Err("it is a folder, not a file".into());
    }
    if !meta.is_file() {
        return Err("it is not a regular file (a device, a pipe or a socket)".into());
    }
    let too_large = || {
        format!(
            "it is larger than {} MiB, the limit for one file: split it",
            MAX_FILE_BYTES >> 20
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while it is read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The `*.toml` entries of a folder, sorted; an entry of the folder that cannot be listed is
/// added to `problems`.
fn toml_files(
    dir: &Path,
    what: &'static str,
    problems: &mut Vec<FileProblem>,
) -> Result<Vec<PathBuf>, SourcesError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourcesError::Folder {
        what,
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    files.push(path);
                }
            }
            Err(e) => problems.push(FileProblem {
                path: dir.to_path_buf(),
                reason: format!("an entry of this folder cannot be read: {e}"),
            }),
        }
    }
    files.sort();
    if files.is_empty() && problems.is_empty() {
        return Err(SourcesError::Empty {
            what,
            path: dir.to_path_buf(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders(root: &Path) {
        for (dir, file, text) in [
            ("inv", "hosts.toml", "[hosts.a]\naddress = \"10.0.0.1\"\n"),
            ("inv", "sites.toml", "[sites.paris]\n"),
            ("books", "erp.toml", "[[erp.drill]]\nid = \"x\"\n"),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join(file), text).unwrap();
        }
    }

    #[test]
    fn the_digest_does_not_depend_on_how_the_folders_are_named() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("site");
        folders(&root);
        std::fs::create_dir_all(base.path().join("elsewhere")).unwrap();
        let digest = |inv: &Path, books: &Path| Sources::read(inv, books).unwrap().digest();
        let absolute = digest(&root.join("inv"), &root.join("books"));
        // The same folders spelled from the folder itself, relatively, and through `..`.
        let spelled = [
            (root.join("./inv"), root.join("books/")),
            (
                base.path().join("elsewhere/../site/inv"),
                base.path().join("site/./books"),
            ),
        ];
        for (inv, books) in spelled {
            assert_eq!(digest(&inv, &books), absolute, "{}", inv.display());
        }
        // The same files copied elsewhere are the same files.
        let copy = base.path().join("copy");
        folders(&copy);
        assert_eq!(digest(&copy.join("inv"), &copy.join("books")), absolute);
        // A changed text, a renamed file, a file moved to the other folder: not the same.
        std::fs::write(copy.join("inv/sites.toml"), "[sites.casa]\n").unwrap();
        assert_ne!(digest(&copy.join("inv"), &copy.join("books")), absolute);
        folders(&copy);
        std::fs::rename(copy.join("inv/sites.toml"), copy.join("inv/site.toml")).unwrap();
        assert_ne!(digest(&copy.join("inv"), &copy.join("books")), absolute);
        std::fs::rename(copy.join("inv/site.toml"), copy.join("books/sites.toml")).unwrap();
        assert_ne!(digest(&copy.join("inv"), &copy.join("books")), absolute);
    }
}
