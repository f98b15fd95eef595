//! The manifest directory as a live source: files are watched (create, modify, delete,
//! atomic replace by rename), bursts of changes are debounced, and a file that fails to
//! parse keeps its last good content in force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::manifests::{
    is_manifest, manifest_files, parse_file, select, FileError, FileObjects, Filter,
};
use super::objects::Objects;

/// How changes are grouped: a burst ends after `quiet` without events, or `max_delay`
/// after its first event, so a steady stream of changes cannot starve publication.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    pub quiet: Duration,
    pub max_delay: Duration,
}

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

/// Waits for the next burst of events and returns every path in it; `None` when the
/// sender is gone.
async fn next_burst(
    rx: &mut mpsc::UnboundedReceiver<Vec<PathBuf>>,
    debounce: Debounce,
) -> Option<BTreeSet<PathBuf>> {
    let mut paths: BTreeSet<PathBuf> = rx.recv().await?.into_iter().collect();
    let deadline = Instant::now() + debounce.max_delay;
    loop {
        let quiet_end = (Instant::now() + debounce.quiet).min(deadline);
        match tokio::time::timeout_at(quiet_end, rx.recv()).await {
            Ok(Some(more)) => paths.extend(more),
            Ok(None) | Err(_) => return Some(paths),
        }
        if Instant::now() >= deadline {
            return Some(paths);
        }
    }
}

/// Watches the directory until the process ends, calling `on_change` after each debounced
/// burst of file events.
pub async fn watch(
    mut source: ManifestDir,
    debounce: Debounce,
    mut on_change: impl FnMut(&ManifestDir),
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let root = source.dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let paths = match event {
            Ok(event) => event.paths,
            // Lost events (queue overflow): rescan everything.
            Err(_) => vec![root.clone()],
        };
        let _ = tx.send(paths);
    })?;
    watcher.watch(&source.dir, RecursiveMode::Recursive)?;
    while let Some(paths) = next_burst(&mut rx, debounce).await {
        if let Err(error) = source.refresh(&paths) {
            tracing::warn!(%error, "rescanning the manifest directory");
            continue;
        }
        on_change(&source);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
    };

    /// Sends one event every `every` for `count` events, from a task.
    fn events(every: Duration, count: usize) -> mpsc::UnboundedReceiver<Vec<PathBuf>> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for i in 0..count {
                let _ = tx.send(vec![PathBuf::from(format!("f{i}"))]);
                tokio::time::sleep(every).await;
            }
        });
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_burst_is_one_publication() {
        let mut rx = events(Duration::from_millis(5), 20);
        let start = Instant::now();
        let burst = next_burst(&mut rx, DEBOUNCE).await.unwrap();
        assert_eq!(burst.len(), 20);
        // Ends one quiet period after the last event.
        assert!(
            start.elapsed() < Duration::from_millis(100 + 50 + 10),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_cannot_starve_publication() {
        let mut rx = events(Duration::from_millis(10), 200);
        let start = Instant::now();
        let first = next_burst(&mut rx, DEBOUNCE).await.unwrap();
        assert_eq!(
            start.elapsed(),
            DEBOUNCE.max_delay,
            "cut at the maximum delay"
        );
        assert!(first.len() >= 39 && first.len() <= 41, "{}", first.len());
        let second = next_burst(&mut rx, DEBOUNCE).await.unwrap();
        assert!(second.len() >= 39, "{}", second.len());
    }

    #[tokio::test(start_paused = true)]
    async fn separate_changes_are_separate_publications() {
        let mut rx = events(Duration::from_millis(200), 3);
        for _ in 0..3 {
            assert_eq!(next_burst(&mut rx, DEBOUNCE).await.unwrap().len(), 1);
        }
    }
}
