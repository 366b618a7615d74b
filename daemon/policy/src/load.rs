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
        self.add_texts(&[(source, text)]);
    }

    /// Reads several files' texts (source name, text), as from a manifests directory. Documents
    /// are parsed and validated on all cores when there are many; objects are recorded in input
    /// order, so a later definition replaces an earlier one exactly as file by file.
    pub fn add_texts(&mut self, files: &[(&str, &str)]) {
        let docs: Vec<(&str, usize, &str)> = files
            .iter()
            .flat_map(|(source, text)| {
                split_documents(text)
                    .into_iter()
                    .map(move |(line, doc)| (*source, line, doc))
            })
            .collect();
        let parse = |part: &[(&str, usize, &str)]| -> Vec<Parsed> {
            part.iter()
                .flat_map(|(source, line, doc)| parse_document(source, *line, doc))
                .collect()
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(8);
        let parsed: Vec<Parsed> = if docs.len() < PARALLEL_FROM || threads == 1 {
            parse(&docs)
        } else {
            let chunk = docs.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = docs
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || parse(part)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        for p in parsed {
            match p {
                Parsed::Error(e) => self.errors.push(e),
                Parsed::Notice(n) => self.notices.push(n),
                Parsed::Object {
                    location,
                    object,
                    result,
                } => self.record(&location, object, result),
            }
        }
    }

    fn record(
        &mut self,
        location: &Location,
        object: ObjectRef,
        result: Result<Item, validate::FieldError>,
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
                match value {
                    Item::Namespace(ns) => self.namespaces.push(ns),
                    Item::Pod(pod) => self.pods.push(pod),
                    Item::Policy(policy) => self.policies.push(policy),
                }
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

/// Inputs with at least this many documents are parsed on several threads.
const PARALLEL_FROM: usize = 64;

/// A validated object.
#[derive(Debug)]
enum Item {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
}

/// What reading one document (or list item) gives, before it is recorded in order.
#[derive(Debug)]
enum Parsed {
    Object {
        location: Location,
        object: ObjectRef,
        result: Result<Item, validate::FieldError>,
    },
    Error(ManifestError),
    Notice(Notice),
}

/// Parses and validates one YAML document. Pure and independent of other documents.
fn parse_document(source: &str, chunk_line: usize, doc: &str) -> Vec<Parsed> {
    let mut out = Vec::new();
    if doc.trim().is_empty() || is_comment_only(doc) {
        return out;
    }
    let location = Location {
        source: source.to_owned(),
        line: Some(chunk_line + leading_comment_lines(doc)),
    };
    // JSON documents (`kubectl get -o json`) take the much faster JSON parser.
    let parsed = if doc.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(doc).map_err(|e| {
            let at = Location {
                source: source.to_owned(),
                line: Some(chunk_line + e.line().saturating_sub(1)),
            };
            (at, format!("not valid JSON (column {}): {e}", e.column()))
        })
    } else {
        serde_saphyr::from_str_with_options::<Value>(doc, yaml_options())
            .map_err(|e| yaml_error(source, chunk_line, &e))
    };
    match parsed {
        Ok(Value::Null) => {}
        Ok(value) => classify(&location, value, &mut out),
        Err((location, message)) => out.push(Parsed::Error(ManifestError {
            location,
            object: None,
            field: None,
            message,
        })),
    }
    out
}

/// Sorts one object by kind and validates it; list items one by one.
fn classify(location: &Location, value: Value, out: &mut Vec<Parsed>) {
    let Value::Object(mut map) = value else {
        out.push(Parsed::Notice(Notice {
            location: location.clone(),
            object: None,
            message: "skipped: not a Kubernetes object (expected a mapping with kind)".into(),
        }));
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
        .unwrap_or_default()
        .to_owned();
    // `kind: List` and typed lists (`NetworkPolicyList`), as kubectl's IsListType: a *List kind
    // with an `items` array.
    if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
        if let Some(Value::Array(items)) = map.remove("items") {
            for item in items {
                classify(location, item, out);
            }
        }
        return;
    }
    let object = object_ref(&kind, &map);
    let error = |field: &str, object: Option<ObjectRef>| {
        Parsed::Error(ManifestError {
            location: location.clone(),
            object,
            field: Some(field.into()),
            message: "missing: every object needs apiVersion and kind".into(),
        })
    };
    let value = Value::Object(map);
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => validate::namespace(value).map(Item::Namespace),
        ("v1", "Pod") => validate::pod(value).map(Item::Pod),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            validate::network_policy(value).map(Item::Policy)
        }
        (_, "") => return out.push(error("kind", None)),
        ("", _) => return out.push(error("apiVersion", Some(object))),
        (version, kind) => {
            return out.push(Parsed::Notice(Notice {
                location: location.clone(),
                object: Some(object),
                message: format!(
                    "skipped: {version} {kind} is not used for policy evaluation \
                     (flowgate reads v1 Namespace, v1 Pod, networking.k8s.io/v1 NetworkPolicy)"
                ),
            }));
        }
    };
    out.push(Parsed::Object {
        location: location.clone(),
        object,
        result,
    });
}

/// YAML 1.2 core booleans only: `namespace: y` or a label value `on` stays a string, as kubectl
/// (which converts such values back to strings for string fields) reads it.
fn yaml_options() -> serde_saphyr::Options {
    // Limits sized for whole-cluster dumps (`kubectl get -A -o yaml`: tens of thousands of
    // objects in one `kind: List`); the alias limits against "billion laughs" keep their defaults.
    serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_events: 200_000_000,
            max_nodes: 100_000_000,
            max_total_scalar_bytes: 1 << 30,
            max_documents: 1_000_000,
        },
    }
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
