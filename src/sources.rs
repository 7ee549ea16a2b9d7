//! Reading the inventory and runbook folders from disk: the only IO of the loading pipeline.
//! Everything after this stage works on the text kept here.

use std::path::{Path, PathBuf};

use crate::diagnostic::{FileId, SourceMap};
use crate::inventory::{BUILTIN_DRIVERS, BUILTIN_DRIVERS_PATH};

/// The text of every file of both folders, in a stable (sorted) order.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub map: SourceMap,
    /// The built-in drivers first, then `inventory/*.toml`.
    pub inventory: Vec<FileId>,
    pub runbooks: Vec<FileId>,
    /// Overlay files (`--overlay`): per-environment values over the inventory.
    pub overlays: Vec<FileId>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("cannot read {what} folder {path}: {source}")]
    Folder {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} folder {path} holds no .toml file")]
    Empty { what: &'static str, path: PathBuf },
}

impl Sources {
    /// Reads every `*.toml` file of both folders.
    pub fn read(inventory: &Path, runbooks: &Path) -> Result<Sources, SourcesError> {
        let mut sources = Sources::default();
        sources.inventory.push(
            sources
                .map
                .add(BUILTIN_DRIVERS_PATH, BUILTIN_DRIVERS.to_string()),
        );
        for path in toml_files(inventory, "inventory")? {
            let text = read_text(&path)?;
            sources.inventory.push(sources.map.add(path, text));
        }
        for path in toml_files(runbooks, "runbooks")? {
            let text = read_text(&path)?;
            sources.runbooks.push(sources.map.add(path, text));
        }
        Ok(sources)
    }

    /// Adds an overlay file (read after the inventory, changing some of its values).
    pub fn add_overlay(&mut self, path: &Path) -> Result<(), SourcesError> {
        let text = read_text(path)?;
        self.overlays.push(self.map.add(path, text));
        Ok(())
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

    /// A content hash of every file, in order: the same files give the same hash.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for file in self.map.files() {
            let path = self.map.path(file).to_string_lossy();
            hasher.update(&(path.len() as u64).to_le_bytes());
            hasher.update(path.as_bytes());
            let text = self.map.text(file);
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }
}

fn read_text(path: &Path) -> Result<String, SourcesError> {
    std::fs::read_to_string(path).map_err(|source| SourcesError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn toml_files(dir: &Path, what: &'static str) -> Result<Vec<PathBuf>, SourcesError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourcesError::Folder {
        what,
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourcesError::Folder {
            what,
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(SourcesError::Empty {
            what,
            path: dir.to_path_buf(),
        });
    }
    Ok(files)
}
