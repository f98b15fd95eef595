//! Responses as the state machines decide them: metadata plus shared, already encoded
//! resources. `server::wire` writes them to the network without re-encoding.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};

use crate::snapshot::{Resource, ResourceType};

/// The resources of a response, in name order. Every stream of a fleet that subscribes
/// to the same names is sent the same list (see `Subscription::resources_in`): it is one
/// list, shared, and the wire writes it once for all of them.
#[derive(Clone, Debug, Default)]
pub struct Resources(Arc<List>);

#[derive(Debug, Default)]
struct List {
    resources: Vec<Resource>,
    /// The list as `server::wire` writes it, SotW and Delta, made by the first response
    /// that needs it.
    written: [OnceLock<Vec<Bytes>>; 2],
}

/// What determines a list: the content of the type's resources (their version) and the
/// subscription (wildcard, and the digest and number of the names).
pub(super) type ListKey = (u128, bool, u128, usize);

/// Lists by what determines them; entries die with the last response holding them.
static LISTS: LazyLock<Mutex<HashMap<ListKey, Weak<List>>>> = LazyLock::new(Default::default);

impl Resources {
    /// The list `key` identifies, shared with every live response that carries it;
    /// `make` builds it when none does.
    pub(super) fn shared(key: ListKey, make: impl FnOnce() -> Vec<Resource>) -> Resources {
        let lists = || LISTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = lists().get(&key).and_then(Weak::upgrade) {
            return Resources(list);
        }
        let list = Arc::new(List {
            resources: make(),
            written: Default::default(),
        });
        let mut lists = lists();
        if let Some(existing) = lists.get(&key).and_then(Weak::upgrade) {
            return Resources(existing);
        }
        if lists.len() >= 64 && lists.len().is_power_of_two() {
            lists.retain(|_, list| list.strong_count() > 0);
        }
        lists.insert(key, Arc::downgrade(&list));
        Resources(list)
    }

    /// The list written as response bytes for SotW or Delta (`write` makes it, once).
    pub fn written(&self, delta: bool, write: impl FnOnce(&[Resource]) -> Vec<Bytes>) -> &[Bytes] {
        self.0.written[usize::from(delta)].get_or_init(|| write(&self.0.resources))
    }
}

impl From<Vec<Resource>> for Resources {
    fn from(resources: Vec<Resource>) -> Self {
        Resources(Arc::new(List {
            resources,
            written: Default::default(),
        }))
    }
}

impl FromIterator<Resource> for Resources {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Self {
        Vec::from_iter(iter).into()
    }
}

impl<'a> IntoIterator for &'a Resources {
    type Item = &'a Resource;
    type IntoIter = std::slice::Iter<'a, Resource>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.resources.iter()
    }
}

impl Deref for Resources {
    type Target = [Resource];
    fn deref(&self) -> &[Resource] {
        &self.0.resources
    }
}

/// A response of either protocol.
pub trait Response: std::fmt::Debug + Send + 'static {
    /// The protobuf message.
    type Proto: std::fmt::Debug;
    /// The type of the resources it carries.
    fn ty(&self) -> ResourceType;
    /// The protobuf message (copies every resource; the server uses `server::wire`).
    fn to_proto(&self) -> Self::Proto;
}

/// A SotW `DiscoveryResponse`.
#[derive(Clone, Debug)]
pub struct SotwResponse {
    pub ty: ResourceType,
    pub version_info: String,
    pub nonce: String,
    pub resources: Resources,
}

/// A `DeltaDiscoveryResponse`.
#[derive(Clone, Debug)]
pub struct DeltaResponse {
    pub ty: ResourceType,
    pub system_version_info: String,
    pub nonce: String,
    pub resources: Resources,
    pub removed_resources: Vec<String>,
}

impl Response for SotwResponse {
    type Proto = DiscoveryResponse;
    fn ty(&self) -> ResourceType {
        self.ty
    }
    fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(Resource::to_any).collect(),
            type_url: self.ty.type_url().to_owned(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl Response for DeltaResponse {
    type Proto = DeltaDiscoveryResponse;
    fn ty(&self) -> ResourceType {
        self.ty
    }
    fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name().to_string(),
                    version: r.version().to_string(),
                    resource: Some(r.to_any()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.ty.type_url().to_owned(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}
