//! Reading manifests: YAML/JSON text (multi-document, `kind: List`) -> validated model objects,
//! with every rejection and skipped object reported. Pure: callers pass text, not paths.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Location, ManifestError, Notice, ObjectRef};
use crate::model::{Namespace, Pod, Policy};
use crate::validate;

/// Everything read from a set of manifests: the objects that passed validation, and what did not.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
    /// Where each loaded object came from, keyed by (kind, namespace, name).
    pub origins: HashMap<(String, String, String), Location>,
    pub errors: Vec<ManifestError>,
    pub notices: Vec<Notice>,
}

impl Manifests {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one file's text. `source` names it in diagnostics. A syntax error loses only the
    /// YAML document it is in; a rejected object loses only that object.
    pub fn add_text(&mut self, source: &str, text: &str) {
        for (chunk_line, doc) in split_documents(text) {
            let line = chunk_line + leading_comment_lines(doc);
            let location = Location {
                source: source.to_owned(),
                line: Some(line),
            };
            if doc.trim().is_empty() || is_comment_only(doc) {
                continue;
            }
            match serde_saphyr::from_str_with_options::<Value>(doc, yaml_options()) {
                Ok(Value::Null) => {}
                Ok(value) => self.add_value(&location, value),
                Err(error) => {
                    let (location, message) = yaml_error(source, chunk_line, &error);
                    self.errors.push(ManifestError {
                        location,
                        object: None,
                        field: None,
                        message,
                    });
                }
            }
        }
    }

    fn add_value(&mut self, location: &Location, value: Value) {
        let Value::Object(map) = &value else {
            self.notices.push(Notice {
                location: location.clone(),
                object: None,
                message: "skipped: not a Kubernetes object (expected a mapping with kind)".into(),
            });
            return;
        };
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let object = object_ref(&kind, map);
        match (api_version, kind.as_str()) {
            // `kind: List` and typed lists (`NetworkPolicyList`), as kubectl's IsListType: a
            // *List kind with an `items` array.
            (_, list)
                if list.ends_with("List") && map.get("items").is_some_and(Value::is_array) =>
            {
                let items = map
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in items {
                    self.add_value(location, item);
                }
            }
            ("v1", "Namespace") => {
                let result = validate::namespace(value);
                self.record(location, object, result, |m, ns| m.namespaces.push(ns));
            }
            ("v1", "Pod") => {
                let result = validate::pod(value);
                self.record(location, object, result, |m, pod| m.pods.push(pod));
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let result = validate::network_policy(value);
                self.record(location, object, result, |m, p| m.policies.push(p));
            }
            (_, "") => self.errors.push(ManifestError {
                location: location.clone(),
                object: None,
                field: Some("kind".into()),
                message: "missing: every object needs apiVersion and kind".into(),
            }),
            ("", _) => self.errors.push(ManifestError {
                location: location.clone(),
                object: Some(object),
                field: Some("apiVersion".into()),
                message: "missing: every object needs apiVersion and kind".into(),
            }),
            (version, kind) => self.notices.push(Notice {
                location: location.clone(),
                object: Some(object),
                message: format!(
                    "skipped: {version} {kind} is not used for policy evaluation \
                     (flowgate reads v1 Namespace, v1 Pod, networking.k8s.io/v1 NetworkPolicy)"
                ),
            }),
        }
    }

    fn record<T>(
        &mut self,
        location: &Location,
        object: ObjectRef,
        result: Result<T, validate::FieldError>,
        push: impl FnOnce(&mut Self, T),
    ) {
        match result {
            Ok(value) => {
                let key = (
                    object.kind.clone(),
                    object.namespace.clone().unwrap_or_default(),
                    object.name.clone(),
                );
                if let Some(previous) = self.origins.insert(key, location.clone()) {
                    self.notices.push(Notice {
                        location: location.clone(),
                        object: Some(object.clone()),
                        message: format!("replaces the definition at {previous}"),
                    });
                    self.remove(&object);
                }
                push(self, value);
            }
            Err(error) => self.errors.push(ManifestError {
                location: location.clone(),
                object: Some(object),
                field: error.field,
                message: error.message,
            }),
        }
    }

    fn remove(&mut self, object: &ObjectRef) {
        let ns = object.namespace.as_deref().unwrap_or_default();
        match object.kind.as_str() {
            "Namespace" => self.namespaces.retain(|n| n.name != object.name),
            "Pod" => self
                .pods
                .retain(|p| !(p.namespace == ns && p.name == object.name)),
            _ => self
                .policies
                .retain(|p| !(p.namespace == ns && p.name == object.name)),
        }
    }
}

/// YAML 1.2 core booleans only: `namespace: y` or a label value `on` stays a string, as kubectl
/// (which converts such values back to strings for string fields) reads it.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

fn object_ref(kind: &str, map: &serde_json::Map<String, Value>) -> ObjectRef {
    let meta = map.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let namespace = if kind == "Namespace" {
        None
    } else {
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty());
        Some(ns.unwrap_or(validate::DEFAULT_NAMESPACE).to_owned())
    };
    ObjectRef {
        kind: kind.to_owned(),
        namespace,
        name: name.to_owned(),
    }
}

/// Splits a YAML stream at `---` document markers, returning each document with the 1-based line
/// it starts on. Splitting ourselves keeps one broken document from losing its neighbours.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed == "..." {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = index + 2;
        } else if trimmed.starts_with("--- ") {
            // A marker with content after it (`--- # comment`, `--- {kind: ...}`).
            docs.push((start_line, &text[start..offset]));
            start = offset + 3;
            start_line = index + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

/// Blank and comment lines before a document's first content line, so diagnostics point at the
/// object rather than the comment above it.
fn leading_comment_lines(doc: &str) -> usize {
    doc.lines()
        .take_while(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        })
        .count()
}

fn is_comment_only(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// A YAML syntax error located in the file (the parser counts lines from the document start).
fn yaml_error(source: &str, chunk_line: usize, error: &serde_saphyr::Error) -> (Location, String) {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or(&text);
    let Some(at) = error.location() else {
        let location = Location {
            source: source.to_owned(),
            line: Some(chunk_line),
        };
        return (location, format!("not valid YAML: {first}"));
    };
    let line = chunk_line + usize::try_from(at.line()).unwrap_or(1).saturating_sub(1);
    // Drop the parser's own "error: line N column M: " prefix; the location says it better.
    let marker = format!("line {} column {}: ", at.line(), at.column());
    let detail = first.split_once(&marker).map_or(first, |(_, rest)| rest);
    let location = Location {
        source: source.to_owned(),
        line: Some(line),
    };
    (
        location,
        format!("not valid YAML (column {}): {detail}", at.column()),
    )
}
