//! The manifest directory as a live source: files are watched (create, modify, delete,
//! atomic replace by rename), bursts of changes are debounced, and a file that fails to
//! parse keeps its last good content in force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::debounce::{Debounce, Debouncer, Instant};
use super::manifests::{
    is_manifest, manifest_files, parse_file, select, FileError, FileObjects, Filter,
};
use super::objects::Objects;

/// Every manifest file's last good content, and the files that currently fail.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    filter: Filter,
    files: BTreeMap<PathBuf, FileObjects>,
    errors: BTreeMap<PathBuf, FileError>,
}

impl ManifestDir {
    /// Reads every file under `dir`.
    pub fn load(dir: &Path, filter: Filter) -> std::io::Result<Self> {
        let mut source = ManifestDir {
            dir: dir.to_owned(),
            filter,
            files: BTreeMap::new(),
            errors: BTreeMap::new(),
        };
        source.rescan()?;
        Ok(source)
    }

    /// The selected objects of every file's last good content.
    pub fn objects(&self) -> Objects {
        select(self.files.values(), &self.filter)
    }

    /// Files whose current content does not parse (their last good content is in force).
    pub fn errors(&self) -> impl Iterator<Item = &FileError> {
        self.errors.values()
    }

    /// Re-reads what may have changed at `paths` (files or directories).
    pub fn refresh(&mut self, paths: &BTreeSet<PathBuf>) -> std::io::Result<()> {
        for path in paths {
            if path.is_dir() || path == &self.dir {
                return self.rescan();
            }
            if !path.exists() {
                // A removed file, or a removed directory and everything in it.
                self.files.retain(|p, _| !p.starts_with(path));
                self.errors.retain(|p, _| !p.starts_with(path));
            } else if is_manifest(path) {
                self.read(path);
            }
        }
        Ok(())
    }

    fn rescan(&mut self) -> std::io::Result<()> {
        let present: BTreeSet<PathBuf> = manifest_files(&self.dir)?.into_iter().collect();
        self.files.retain(|p, _| present.contains(p));
        self.errors.retain(|p, _| present.contains(p));
        for path in &present {
            self.read(path);
        }
        Ok(())
    }

    fn read(&mut self, path: &Path) {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| FileError {
                path: path.to_owned(),
                document: None,
                message: e.to_string(),
            })
            .and_then(|text| parse_file(path, &text));
        match parsed {
            Ok(objects) => {
                self.files.insert(path.to_owned(), objects);
                self.errors.remove(path);
            }
            Err(error) => {
                tracing::warn!(%error, "manifest file does not parse; its last good content stays in force");
                self.errors.insert(path.to_owned(), error);
            }
        }
    }
}

/// Watches the directory until the process ends, calling `on_change` after each debounced
/// burst of file events, with the time the burst began.
pub async fn watch(
    mut source: ManifestDir,
    debounce: Debounce,
    mut on_change: impl FnMut(&ManifestDir, Instant),
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<PathBuf>)>(1024);
    let root = source.dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let paths = match event {
            Ok(event) => event.paths,
            // Lost events (queue overflow): rescan everything.
            Err(_) => vec![root.clone()],
        };
        // On notify's own thread: waiting here is backpressure, not a queue without bound.
        let _ = tx.blocking_send((Instant::now(), paths));
    })?;
    watcher.watch(&source.dir, RecursiveMode::Recursive)?;
    let mut debouncer = Debouncer::new(debounce);
    loop {
        let mut paths = BTreeSet::new();
        let Some(start) = debouncer.burst(&mut rx, |more| paths.extend(more)).await else {
            return Ok(());
        };
        let publishing = Instant::now();
        if let Err(error) = source.refresh(&paths) {
            tracing::warn!(%error, "rescanning the manifest directory");
            continue;
        }
        on_change(&source, start);
        debouncer.published(publishing.elapsed());
    }
}
