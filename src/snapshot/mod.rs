//! The "snapshot" stage: immutable, content-versioned sets of resources, published
//! atomically to every xDS stream.
//!
//! A [`Snapshot`] holds one [`TypeSnapshot`] per [`ResourceType`]. Each is a persistent
//! map (structure shared between versions), so deriving a new snapshot from the last
//! one costs in proportion to the change, and streams diff the snapshot they last sent
//! against the current one without visiting what both share.

mod cache;
pub mod json;
mod resource;

use std::sync::Arc;

use imbl::OrdMap;

pub use cache::{SnapshotCache, SnapshotSet, SnapshotWatch, DEFAULT_GROUP};
pub use resource::{Resource, ResourceType, Version, XdsResource};

/// All resources of one type, with the version of the whole set.
#[derive(Clone, Debug, Default)]
pub struct TypeSnapshot {
    resources: OrdMap<Arc<str>, Resource>,
    /// Sum of per-resource hashes: order-independent, updated in O(1) per change.
    version: Version,
}

/// What changed for one name between two [`TypeSnapshot`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    /// Added, or content changed.
    Upserted(&'a Resource),
    /// No longer present.
    Removed(&'a Arc<str>),
}

impl Change<'_> {
    /// The name of the resource that changed.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Change::Upserted(r) => r.name(),
            Change::Removed(name) => name,
        }
    }
}

impl TypeSnapshot {
    /// The SotW `version_info` of this type: a hash over every resource's name and version.
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Resources in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// The changes that turn `self` into `newer`. Shared structure is skipped, so the
    /// cost follows the size of the change, not of the snapshot.
    pub fn changes_to<'a>(&'a self, newer: &'a TypeSnapshot) -> impl Iterator<Item = Change<'a>> {
        self.resources
            .diff(&newer.resources)
            .map(|item| match item {
                imbl::ordmap::DiffItem::Add(_, r) => Change::Upserted(r),
                imbl::ordmap::DiffItem::Update { new: (_, r), .. } => Change::Upserted(r),
                imbl::ordmap::DiffItem::Remove(name, _) => Change::Removed(name),
            })
    }

    fn insert(&mut self, resource: Resource) -> Option<Resource> {
        self.version.0 = self.version.0.wrapping_add(entry_hash(&resource));
        let old = self.resources.insert(resource.name().clone(), resource);
        if let Some(old) = &old {
            self.version.0 = self.version.0.wrapping_sub(entry_hash(old));
        }
        old
    }

    fn remove(&mut self, name: &str) -> Option<Resource> {
        let old = self.resources.remove(name)?;
        self.version.0 = self.version.0.wrapping_sub(entry_hash(&old));
        Some(old)
    }
}

/// The hash of a resource's name, a zero byte and its version: on the stack for the
/// names Kubernetes allows (a full rebuild puts a fleet's resources one by one).
fn entry_hash(resource: &Resource) -> u128 {
    let name = resource.name().as_bytes();
    let version = resource.version().0.to_le_bytes();
    let len = name.len() + 1 + version.len();
    let mut stack = [0u8; 320];
    let mut heap = Vec::new();
    let buf = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap[..]
    };
    buf[..name.len()].copy_from_slice(name);
    buf[name.len()] = 0;
    buf[name.len() + 1..].copy_from_slice(&version);
    xxhash_rust::xxh3::xxh3_128(buf)
}

/// An immutable, consistent set of resources of every type. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    types: [TypeSnapshot; ResourceType::COUNT],
    /// How many resources reference each EDS / RDS / SDS name, by the referenced type
    /// (consistency bookkeeping).
    referenced: [OrdMap<Arc<str>, u32>; ResourceType::COUNT],
}

impl Snapshot {
    pub fn resources(&self, ty: ResourceType) -> &TypeSnapshot {
        &self.types[ty.index()]
    }

    /// Starts a change based on this snapshot.
    pub fn edit(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            next: self.clone(),
            touched: Default::default(),
        }
    }

    /// Builds a snapshot from scratch.
    pub fn builder() -> SnapshotBuilder {
        Snapshot::default().edit()
    }
}

/// The consistency rules a snapshot failed: it is not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent snapshot: {}", .problems.join("; "))]
pub struct InconsistentSnapshot {
    pub problems: Vec<String>,
}

/// Changes to a [`Snapshot`], checked for consistency when built.
#[derive(Debug)]
pub struct SnapshotBuilder {
    next: Snapshot,
    /// EDS / RDS / SDS names whose presence or references changed, per type: only these
    /// need checking, which keeps a small change cheap. Kept as they come (a name may
    /// repeat) and sorted once when built, which costs less than a set kept in order
    /// while a fleet's resources are put one by one; when they are many (a full build),
    /// every name is checked in one walk instead.
    touched: [Vec<Arc<str>>; ResourceType::COUNT],
}

impl SnapshotBuilder {
    /// Adds or replaces a resource, encoding it once.
    pub fn upsert<R: XdsResource>(&mut self, message: &R) -> &mut Self {
        self.upsert_resource(R::TYPE, Resource::new(message))
    }

    /// Adds or replaces an already encoded resource.
    pub fn upsert_resource(&mut self, ty: ResourceType, resource: Resource) -> &mut Self {
        let new = resource.clone();
        match self.next.types[ty.index()].insert(resource) {
            // The same content: the same references, nothing to check.
            Some(old) if old.version() == new.version() => {}
            old => {
                self.add_references(new.references());
                if ty.referenced_by().is_some() {
                    self.touched[ty.index()].push(new.name().clone());
                }
                if let Some(old) = old {
                    self.drop_references(old.references());
                }
            }
        }
        self
    }

    /// Removes a resource if present.
    pub fn remove(&mut self, ty: ResourceType, name: &str) -> &mut Self {
        if let Some(old) = self.next.types[ty.index()].remove(name) {
            if ty.referenced_by().is_some() {
                self.touched[ty.index()].push(old.name().clone());
            }
            self.drop_references(old.references());
        }
        self
    }

    /// Takes every resource of type `ty` from `other` as they are, with the bookkeeping
    /// of what they reference. For groups of clients that share a type's resources: the
    /// other snapshot was checked when built, so nothing here needs checking again.
    pub fn share(&mut self, other: &Snapshot, ty: ResourceType) -> &mut Self {
        self.next.types[ty.index()] = other.types[ty.index()].clone();
        self.touched[ty.index()].clear();
        for target in ty.referenced_types() {
            self.next.referenced[target.index()] = other.referenced[target.index()].clone();
        }
        self
    }

    /// Takes every resource of type `ty` from `other` as they are, for a group whose own
    /// resources reference the same ones: unlike [`share`](Self::share), what this
    /// builder's resources reference stays its own, and the names whose resources
    /// changed are checked against it when built.
    pub fn share_checked(&mut self, other: &Snapshot, ty: ResourceType) -> &mut Self {
        let shared = other.types[ty.index()].clone();
        let old = std::mem::replace(&mut self.next.types[ty.index()], shared);
        if ty.referenced_by().is_some() {
            let changed = old.changes_to(&self.next.types[ty.index()]);
            self.touched[ty.index()].extend(changed.map(|change| change.name().clone()));
        }
        self
    }

    fn add_references(&mut self, references: &[(ResourceType, Arc<str>)]) {
        for (target, name) in references {
            // Most names are new in the builds that put many (a full one): one walk of
            // the tree for them, two for a name already counted.
            let counts = &mut self.next.referenced[target.index()];
            if let Some(count) = counts.insert(name.clone(), 1) {
                counts.insert(name.clone(), count + 1);
            }
            self.touched[target.index()].push(name.clone());
        }
    }

    fn drop_references(&mut self, references: &[(ResourceType, Arc<str>)]) {
        for (target, name) in references {
            let counts = &mut self.next.referenced[target.index()];
            if let Some(count) = counts.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(name);
                }
            }
            self.touched[target.index()].push(name.clone());
        }
    }

    /// Checks that every ClusterLoadAssignment is named by a cluster and every
    /// RouteConfiguration and TLS secret by a listener, and that every such name exists,
    /// as go-control-plane's `Consistent` does. Only touched names are checked, unless
    /// they are a quarter of all names or more: then every name, in one ordered walk.
    pub fn build(mut self) -> Result<Snapshot, InconsistentSnapshot> {
        let mut problems = Vec::new();
        for ty in ResourceType::ALL {
            let Some(by) = ty.referenced_by() else {
                continue;
            };
            let touched = &mut self.touched[ty.index()];
            let present = &self.next.types[ty.index()];
            let referenced = &self.next.referenced[ty.index()];
            let mut report = |name: &str, is_present: bool| {
                problems.push(if is_present {
                    format!("{ty} resource {name:?} is not referenced by any {by}")
                } else {
                    format!("a {by} references {ty} resource {name:?}, which is missing")
                })
            };
            if touched.len() >= (present.len() + referenced.len()) / 4 {
                // Much was touched (a full build): walk both in name order instead.
                let mut names = present.resources.keys().peekable();
                let mut counted = referenced.keys().peekable();
                loop {
                    match (names.peek(), counted.peek()) {
                        (Some(a), Some(b)) if a == b => {
                            names.next();
                            counted.next();
                        }
                        (Some(a), Some(b)) if a < b => report(names.next().expect("peeked"), true),
                        (Some(_), Some(_)) | (None, Some(_)) => {
                            report(counted.next().expect("peeked"), false)
                        }
                        (Some(_), None) => report(names.next().expect("peeked"), true),
                        (None, None) => break,
                    }
                }
                continue;
            }
            touched.sort_unstable();
            touched.dedup();
            for name in touched.iter() {
                match (present.get(name).is_some(), referenced.contains_key(name)) {
                    (true, false) => report(name, true),
                    (false, true) => report(name, false),
                    _ => {}
                }
            }
        }
        if problems.is_empty() {
            Ok(self.next)
        } else {
            Err(InconsistentSnapshot { problems })
        }
    }
}

#[cfg(test)]
mod tests;

/// The tests' small Envoy resources, shared with the integration tests.
#[cfg(test)]
#[allow(dead_code)]
pub(crate) mod fixtures {
    use crate as dualstack_xds;
    include!("../../tests/common/fixtures.rs");
}
