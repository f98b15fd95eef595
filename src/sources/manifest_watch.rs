//! The manifest directory as a live source. Every way people change files reaches the
//! published configuration: writes in place, a new file renamed over the old one (most
//! editors, `sed -i`, `cp`, `mv`), removals, new subdirectories, and the symlink swap of a
//! Kubernetes ConfigMap volume (`..data`).
//!
//! A file's identity is its path relative to the directory, however the directory was
//! named (relative, absolute, through symlinks, with `.` or `..`): an edit replaces that
//! file's objects and a removal withdraws them. Change events only say *when* to look;
//! what changed is found by scanning the directory and comparing each file's metadata
//! (inode, size, times) with what was last read, so events reported under another
//! spelling of a path, or lost, cannot leave a stale or doubled file behind. A file
//! that fails to parse keeps its last good content in force.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::convert::Objects;
use super::debounce::{Debounce, Debouncer, Instant};
use super::manifests::{is_manifest, parse_file, select, FileError, FileObjects, Filter};
use super::{Sink, SourceEvent};
use crate::model::ModelChange;

/// How long a file that is being written in place (modified, not yet closed) keeps its
/// last content before it is read anyway.
const WRITE_HOLD: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it: a rename over the file changes
/// the inode, a write in place the size or the modification time, a ConfigMap's symlink
/// swap the inode of the file read through the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Every manifest file's last good content, and the files that currently fail.
#[derive(Debug)]
pub struct ManifestDir {
    /// The directory as given: files are read through it, and errors name it.
    root: PathBuf,
    filter: Filter,
    /// Each file's last good content, by path relative to `root`.
    files: BTreeMap<PathBuf, FileObjects>,
    /// Files whose current content does not parse, by path relative to `root`.
    errors: BTreeMap<PathBuf, FileError>,
    /// What each present file looked like when it was last read.
    stamps: BTreeMap<PathBuf, Stamp>,
    /// The objects the changes taken so far add up to.
    taken: Objects,
}

impl ManifestDir {
    /// Reads every file under `dir`.
    pub fn load(dir: &Path, filter: Filter) -> std::io::Result<Self> {
        let mut source = ManifestDir {
            root: dir.to_owned(),
            filter,
            files: BTreeMap::new(),
            errors: BTreeMap::new(),
            stamps: BTreeMap::new(),
            taken: Objects::default(),
        };
        source.refresh(&BTreeSet::new(), &BTreeSet::new())?;
        Ok(source)
    }

    /// The selected objects of every file's last good content.
    pub fn objects(&self) -> Objects {
        select(self.files.values(), &self.filter)
    }

    /// The model changes since the last call (on the first, every object).
    pub fn take_changes(&mut self) -> Vec<ModelChange> {
        let objects = self.objects();
        let changes = self.taken.changes_to(&objects);
        self.taken = objects;
        changes
    }

    /// Files whose current content does not parse (their last good content is in force).
    pub fn errors(&self) -> impl Iterator<Item = &FileError> {
        self.errors.values()
    }

    /// The files read, relative to the directory.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// Reads every file again.
    pub fn reload(&mut self) -> std::io::Result<bool> {
        let every = self.stamps.keys().cloned().collect();
        self.refresh(&every, &BTreeSet::new())
    }

    /// Brings every file up to date: files that are gone are withdrawn, new files and
    /// files whose metadata changed are read, and so are the files in `named` (events
    /// named them: a rewrite within one timestamp tick keeps its metadata). Files in
    /// `held` are being written and keep their last content. Returns whether anything
    /// was read or withdrawn.
    pub fn refresh(
        &mut self,
        named: &BTreeSet<PathBuf>,
        held: &BTreeSet<PathBuf>,
    ) -> std::io::Result<bool> {
        let present = scan(&self.root)?;
        let before = self.stamps.len();
        self.stamps.retain(|p, _| present.contains_key(p));
        self.files.retain(|p, _| present.contains_key(p));
        self.errors.retain(|p, _| present.contains_key(p));
        let mut changed = self.stamps.len() != before;
        for (path, stamp) in present {
            if held.contains(&path) {
                continue;
            }
            if named.contains(&path) || self.stamps.get(&path) != Some(&stamp) {
                self.read(path, stamp);
                changed = true;
            }
        }
        Ok(changed)
    }

    fn read(&mut self, relative: PathBuf, stamp: Stamp) {
        let path = self.root.join(&relative);
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| FileError {
                path: path.clone(),
                document: None,
                message: e.to_string(),
            })
            .and_then(|text| parse_file(&path, &text));
        self.stamps.insert(relative.clone(), stamp);
        match parsed {
            Ok(objects) => {
                self.errors.remove(&relative);
                self.files.insert(relative, objects);
            }
            Err(error) => {
                tracing::warn!(%error, "manifest file does not parse; its last good content stays in force");
                self.errors.insert(relative, error);
            }
        }
    }
}

/// Every manifest file under `root`, by path relative to it, with its stamp. Symlinks
/// are followed (a ConfigMap volume is a directory of links); hidden entries are not
/// read (editors' temporary files, `.git`, and the ConfigMap volume's own `..data` and
/// timestamped directories, which the visible links point into).
fn scan(root: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut files = BTreeMap::new();
    let mut visited = BTreeSet::new();
    let root_meta = std::fs::metadata(root)?;
    if !root_meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    visited.insert((root_meta.dev(), root_meta.ino()));
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(root.join(&dir)) {
            Ok(entries) => entries,
            // The top directory must be readable; a subdirectory that vanished or can't
            // be read is left out (and reported).
            Err(error) if !dir.as_os_str().is_empty() => {
                tracing::warn!(dir = %root.join(&dir).display(), %error, "skipping a manifest subdirectory");
                continue;
            }
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let relative = dir.join(&name);
            // Follows symlinks; a dangling link or a file removed meanwhile is no file.
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                if visited.insert((meta.dev(), meta.ino())) {
                    pending.push(relative);
                }
            } else if meta.is_file() && is_manifest(&relative) {
                files.insert(relative, Stamp::of(&meta));
            }
        }
    }
    Ok(files)
}

/// A path as the file watcher reports it: absolute, made from the current directory
/// and the path as given, without resolving symlinks.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    Ok(std::env::current_dir()?.join(path))
}

/// `path` relative to `root` when it names a file this source could read (no hidden
/// component, a manifest extension).
fn manifest_identity(root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    let visible = relative.components().all(|c| match c {
        Component::Normal(name) => !name.to_string_lossy().starts_with('.'),
        _ => false,
    });
    (visible && is_manifest(relative)).then(|| relative.to_owned())
}

/// What the events of one burst say: files named, files being written.
#[derive(Debug, Default)]
struct Observed {
    /// Files whose events ask for a read even if their metadata looks unchanged.
    named: BTreeSet<PathBuf>,
    /// Files modified in place and not yet closed, since when.
    writing: BTreeMap<PathBuf, Instant>,
    /// The directory itself was moved, removed or (through its parent) replaced.
    root_replaced: bool,
    /// Events were lost: read everything.
    overflow: bool,
}

impl Observed {
    fn note(&mut self, root: &Path, at: Instant, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(_) => {
                self.overflow = true;
                return;
            }
        };
        if event.need_rescan() {
            self.overflow = true;
        }
        for path in &event.paths {
            if path == root {
                self.root_replaced = true;
                continue;
            }
            let Some(file) = manifest_identity(root, path) else {
                continue;
            };
            match event.kind {
                // Written in place: wait for the writer to close it, so a file read
                // between its truncation and its last write never withdraws anything.
                EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.entry(file.clone()).or_insert(at);
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => {
                    self.writing.remove(&file);
                }
                _ => {}
            }
            self.named.insert(file);
        }
    }

    /// Files still held (being written, not for longer than [`WRITE_HOLD`]).
    fn held(&mut self, now: Instant) -> BTreeSet<PathBuf> {
        self.writing
            .retain(|_, since| now.duration_since(*since) < WRITE_HOLD);
        self.writing.keys().cloned().collect()
    }

    /// When the oldest held file is read anyway.
    fn hold_expiry(&self) -> Option<Instant> {
        self.writing.values().min().map(|since| *since + WRITE_HOLD)
    }
}

/// Only events that can mean new content: opening and reading files (this source's own
/// reads among them) are not changes.
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false, // From + To were sent
            _ => true,
        },
        Err(_) => true,
    }
}

/// The source: sends the directory's objects, then that it is synced, then the changes
/// of each debounced burst of file events, until the process ends.
pub async fn run(
    mut source: ManifestDir,
    debounce: Debounce,
    mut sink: impl Sink,
) -> notify::Result<()> {
    let changes = source.take_changes();
    let since = Instant::now();
    sink.send(SourceEvent::Changes { changes, since });
    sink.send(SourceEvent::Synced);
    let root = absolute(&source.root)?;
    let (events_tx, mut events) = mpsc::channel::<(Instant, notify::Result<notify::Event>)>(1024);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if is_change(&event) {
            // On notify's own thread: waiting here is backpressure, not a queue without
            // bound.
            let _ = events_tx.blocking_send((Instant::now(), event));
        }
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    // A directory that is itself a symlink may be repointed: its parent says when.
    let parent = root
        .parent()
        .filter(|_| root.symlink_metadata().is_ok_and(|m| m.is_symlink()))
        .map(Path::to_owned);
    if let Some(parent) = &parent {
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    let mut observed = Observed::default();
    let mut debouncer = Debouncer::new(debounce);
    // What changed between the first read and the watch being in place.
    let mut start = Some(since);
    loop {
        if let Some(start) = start {
            let publishing = Instant::now();
            if let Some(changes) = refresh(&mut source, &mut observed) {
                sink.send(SourceEvent::Changes {
                    changes,
                    since: start,
                });
            }
            debouncer.published(publishing.elapsed());
        }
        let expiry = observed.hold_expiry();
        let burst = debouncer.burst(&mut events, |event| {
            observed.note(&root, Instant::now(), event)
        });
        start = match expiry {
            // A file still being written is read when its hold ends, events or not.
            Some(expiry) => match tokio::time::timeout_at(expiry, burst).await {
                Ok(start) => start,
                Err(_) => Some(expiry),
            },
            None => burst.await,
        };
        if start.is_none() {
            return Ok(());
        }
        if std::mem::take(&mut observed.root_replaced) {
            // Repointed or recreated: watch what the path names now.
            let _ = watcher.unwatch(&root);
            if let Err(error) = watcher.watch(&root, RecursiveMode::Recursive) {
                tracing::warn!(dir = %source.root.display(), %error, "the manifest directory is gone; serving its last content");
                start = None;
            }
        }
    }
}

/// Reads what the observed events (and the files' stamps) say changed; the model
/// changes, if any.
fn refresh(source: &mut ManifestDir, observed: &mut Observed) -> Option<Vec<ModelChange>> {
    let held = observed.held(Instant::now());
    let mut named = std::mem::take(&mut observed.named);
    if std::mem::take(&mut observed.overflow) {
        named.extend(source.stamps.keys().cloned());
    }
    match source.refresh(&named, &held) {
        Ok(true) => Some(source.take_changes()).filter(|c| !c.is_empty()),
        Ok(false) => None,
        Err(error) => {
            tracing::warn!(dir = %source.root.display(), %error, "reading the manifest directory; serving its last content");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter {
            service_selector: "dualstack-xds.io/expose=true".parse().unwrap(),
            namespaces: vec![],
            config_map: crate::model::ObjectKey::new("dualstack-xds", "dualstack-xds"),
        }
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: NAME, namespace: t, labels: {dualstack-xds.io/expose: \"true\"}}\nspec: {ports: [{port: 80}]}\n";

    fn service(name: &str) -> String {
        SERVICE.replace("NAME", name)
    }

    fn names(dir: &ManifestDir) -> Vec<String> {
        dir.objects()
            .services
            .keys()
            .map(|k| k.name.to_string())
            .collect()
    }

    #[test]
    fn a_configmap_volume_is_read_through_its_links_once() {
        // What the kubelet makes of a ConfigMap with keys a.yaml and b.yaml.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("..2026_12_01_1")).unwrap();
        std::fs::write(root.join("..2026_12_01_1/a.yaml"), service("a1")).unwrap();
        std::fs::write(root.join("..2026_12_01_1/b.yaml"), service("b")).unwrap();
        std::os::unix::fs::symlink("..2026_12_01_1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.yaml", root.join("a.yaml")).unwrap();
        std::os::unix::fs::symlink("..data/b.yaml", root.join("b.yaml")).unwrap();
        let mut dir = ManifestDir::load(root, filter()).unwrap();
        assert_eq!(
            dir.files().collect::<Vec<_>>(),
            [Path::new("a.yaml"), Path::new("b.yaml")]
        );
        assert_eq!(names(&dir), ["a1", "b"]);
        // The atomic update: a new timestamped directory, then `..data` swapped.
        std::fs::create_dir(root.join("..2026_12_01_2")).unwrap();
        std::fs::write(root.join("..2026_12_01_2/a.yaml"), service("a2")).unwrap();
        std::fs::write(root.join("..2026_12_01_2/b.yaml"), service("b")).unwrap();
        std::os::unix::fs::symlink("..2026_12_01_2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join("..2026_12_01_1")).unwrap();
        // No event names a.yaml: the metadata seen through the link tells.
        assert!(dir.refresh(&BTreeSet::new(), &BTreeSet::new()).unwrap());
        assert_eq!(names(&dir), ["a2", "b"]);
        assert!(!dir.refresh(&BTreeSet::new(), &BTreeSet::new()).unwrap());
    }

    #[test]
    fn identities_do_not_depend_on_how_the_directory_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("m")).unwrap();
        std::fs::write(tmp.path().join("m/a.yaml"), service("a")).unwrap();
        std::os::unix::fs::symlink("m", tmp.path().join("link")).unwrap();
        for given in ["m", "m/", "./m", "link", "m/../m", "link/."] {
            let dir = ManifestDir::load(&tmp.path().join(given), filter()).unwrap();
            assert_eq!(dir.files().collect::<Vec<_>>(), [Path::new("a.yaml")]);
        }
        let root = tmp.path().join("m/../m");
        let event = tmp.path().join("m/../m/sub/b.yaml");
        assert_eq!(
            manifest_identity(&root, &event),
            Some(PathBuf::from("sub/b.yaml"))
        );
        assert_eq!(manifest_identity(&root, &root.join("..data/a.yaml")), None);
        assert_eq!(manifest_identity(&root, &root.join(".a.yaml.swp")), None);
        assert_eq!(
            manifest_identity(&root, Path::new("/elsewhere/a.yaml")),
            None
        );
    }

    #[test]
    fn a_file_being_written_keeps_its_last_content() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.yaml");
        std::fs::write(&path, service("a")).unwrap();
        let mut dir = ManifestDir::load(tmp.path(), filter()).unwrap();
        // Truncated by a writer that has not finished.
        std::fs::write(&path, "").unwrap();
        let held: BTreeSet<PathBuf> = [PathBuf::from("a.yaml")].into();
        assert!(!dir.refresh(&BTreeSet::new(), &held).unwrap());
        assert_eq!(names(&dir), ["a"]);
        // Closed: read.
        std::fs::write(&path, service("b")).unwrap();
        assert!(dir.refresh(&held, &BTreeSet::new()).unwrap());
        assert_eq!(names(&dir), ["b"]);
    }

    #[test]
    fn events_track_writers() {
        use notify::event::{CreateKind, DataChange};
        let root = PathBuf::from("/x/m");
        let mut observed = Observed::default();
        let now = Instant::now();
        let event = |kind, path: &str| Ok(notify::Event::new(kind).add_path(root.join(path)));
        observed.note(
            &root,
            now,
            event(EventKind::Create(CreateKind::File), "a.yaml"),
        );
        observed.note(
            &root,
            now,
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "a.yaml",
            ),
        );
        assert_eq!(observed.held(now).len(), 1);
        observed.note(
            &root,
            now,
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "a.yaml",
            ),
        );
        assert!(observed.held(now).is_empty());
        assert!(observed.named.contains(Path::new("a.yaml")));
        // A writer that never closes is read once its hold ends.
        observed.note(
            &root,
            now,
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "b.yaml",
            ),
        );
        assert_eq!(observed.hold_expiry(), Some(now + WRITE_HOLD));
        assert!(observed.held(now + WRITE_HOLD).is_empty());
        observed.note(&root, now, event(EventKind::Any, ""));
        assert!(observed.root_replaced);
    }
}
