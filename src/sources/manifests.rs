//! Kubernetes objects from a directory of YAML/JSON files (multi-document, `List` kinds
//! too): the embedded default source, and the input of `render`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

use super::convert::{key_of, Objects};
use crate::model::ObjectKey;

/// A label selector such as `dualstack-xds.io/expose=true,tier!=internal,app`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<(String, Term)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Equals(String),
    NotEquals(String),
    Exists,
}

impl std::str::FromStr for LabelSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let term = if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_owned(), Term::NotEquals(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim().to_owned(), Term::Equals(v.trim().to_owned()))
            } else {
                (part.to_owned(), Term::Exists)
            };
            if term.0.is_empty() || term.0.contains(char::is_whitespace) {
                return Err(format!(
                    "{part:?} is not a label selector term (key, key=value or key!=value)"
                ));
            }
            terms.push(term);
        }
        Ok(LabelSelector { terms })
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|(k, t)| match t {
                Term::Equals(v) => format!("{k}={v}"),
                Term::NotEquals(v) => format!("{k}!={v}"),
                Term::Exists => k.clone(),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl LabelSelector {
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.terms.iter().all(|(key, term)| {
            let value = labels.and_then(|l| l.get(key));
            match term {
                Term::Equals(v) => value == Some(v),
                Term::NotEquals(v) => value != Some(v),
                Term::Exists => value.is_some(),
            }
        })
    }
}

/// What to take from the files.
#[derive(Clone, Debug)]
pub struct Filter {
    pub service_selector: LabelSelector,
    /// Namespaces to keep (all when empty).
    pub namespaces: Vec<String>,
    pub config_map: ObjectKey,
}

impl Filter {
    fn namespace_ok(&self, namespace: Option<&str>) -> bool {
        self.namespaces.is_empty()
            || self
                .namespaces
                .iter()
                .any(|n| Some(n.as_str()) == namespace.or(Some("default")))
    }
}

/// One file that could not be read or parsed, with where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    /// The 0-based document index in a multi-document file, if the error is in one.
    pub document: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.document {
            Some(i) => write!(
                f,
                "{} (document {}): {}",
                self.path.display(),
                i,
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// The objects in one file.
#[derive(Clone, Debug, Default)]
pub struct FileObjects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
}

/// Files this source reads: YAML and JSON, not hidden (editors' temporary files).
pub fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// Parses one file. Any broken document fails the whole file, so that the caller keeps
/// the file's last good content instead of half of it.
pub fn parse_file(path: &Path, text: &str) -> Result<FileObjects, FileError> {
    let mut objects = FileObjects::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let error = |message: String| FileError {
            path: path.to_owned(),
            document: Some(index),
            message,
        };
        let value =
            serde_yaml_ng::Value::deserialize(document).map_err(|e| error(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        add_object(value, &mut objects).map_err(error)?;
    }
    Ok(objects)
}

fn add_object(value: serde_yaml_ng::Value, objects: &mut FileObjects) -> Result<(), String> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let typed = |what: &str| format!("{what} {api_version}/{kind}");
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => objects.services.push(
            serde_yaml_ng::from_value(value).map_err(|e| format!("{}: {e}", typed("invalid")))?,
        ),
        ("discovery.k8s.io/v1", "EndpointSlice") => objects.slices.push(
            serde_yaml_ng::from_value(value).map_err(|e| format!("{}: {e}", typed("invalid")))?,
        ),
        ("v1", "ConfigMap") => objects.config_maps.push(
            serde_yaml_ng::from_value(value).map_err(|e| format!("{}: {e}", typed("invalid")))?,
        ),
        ("v1", "Secret") => objects.secrets.push(
            serde_yaml_ng::from_value(value).map_err(|e| format!("{}: {e}", typed("invalid")))?,
        ),
        (_, "List")
        | (_, "ServiceList")
        | (_, "EndpointSliceList")
        | (_, "ConfigMapList")
        | (_, "SecretList") => {
            let items = value
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default();
            for item in items {
                add_object(item, objects)?;
            }
        }
        ("", _) | (_, "") => return Err("not a Kubernetes object (no apiVersion or kind)".into()),
        _ => tracing::debug!(kind, api_version, "ignoring an object of another kind"),
    }
    Ok(())
}

/// Every manifest file under `dir` (recursively), sorted.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_manifest(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Merges parsed files into the objects a source serves, keeping what `filter` selects.
pub fn select<'a>(files: impl IntoIterator<Item = &'a FileObjects>, filter: &Filter) -> Objects {
    let mut objects = Objects::default();
    let key = key_of;
    for file in files {
        for s in &file.services {
            if filter.namespace_ok(s.metadata.namespace.as_deref())
                && filter.service_selector.matches(s.metadata.labels.as_ref())
            {
                objects.services.insert(key(&s.metadata), s.clone());
            }
        }
        for s in &file.slices {
            if filter.namespace_ok(s.metadata.namespace.as_deref()) {
                objects.slices.insert(key(&s.metadata), s.clone());
            }
        }
        for c in &file.config_maps {
            if key(&c.metadata) == filter.config_map {
                objects.config_map = Some(c.clone());
            }
        }
        for s in &file.secrets {
            if filter.namespace_ok(s.metadata.namespace.as_deref()) {
                objects.secrets.insert(key(&s.metadata), s.clone());
            }
        }
    }
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let s: LabelSelector = "dualstack-xds.io/expose=true,tier!=internal,app"
            .parse()
            .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.matches(Some(&labels(&[
            ("dualstack-xds.io/expose", "true"),
            ("app", "x")
        ]))));
        assert!(!s.matches(Some(&labels(&[("dualstack-xds.io/expose", "true")]))));
        assert!(!s.matches(Some(&labels(&[
            ("dualstack-xds.io/expose", "true"),
            ("app", "x"),
            ("tier", "internal")
        ]))));
        assert!(!s.matches(None));
        assert!("a b=c".parse::<LabelSelector>().is_err());
    }

    #[test]
    fn broken_document_is_located() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: [unclosed\n";
        let err = parse_file(Path::new("x.yaml"), text).unwrap_err();
        assert_eq!(err.document, Some(1));
        assert!(
            err.to_string().starts_with("x.yaml (document 1): "),
            "{err}"
        );
    }

    #[test]
    fn lists_are_flattened() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"}},{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}]}"#;
        let objects = parse_file(Path::new("l.json"), text).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.config_maps.len(), 1);
    }
}
