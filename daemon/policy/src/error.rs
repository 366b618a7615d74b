//! Errors and notices from reading manifests: each names the file, the object and the field path.
//! Produced by `load` and `validate`; printed by the CLI and the agent.

use std::fmt;

/// The object a diagnostic is about: `Kind namespace/name` (or `Kind name` for cluster-scoped kinds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Where in the input a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// The file (or `-`, or a caller-chosen name) the document came from.
    pub source: String,
    /// 1-based line where the YAML document starts, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.source, line),
            None => write!(f, "{}", self.source),
        }
    }
}

/// A manifest the API server would reject, or could not be read at all. The object (if it could
/// be identified) is not loaded; everything else in the input still is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{location}: {}{}{message}", object_prefix(.object), field_prefix(.field))]
pub struct ManifestError {
    pub location: Location,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// Field path in the object, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

fn object_prefix(object: &Option<ObjectRef>) -> String {
    object
        .as_ref()
        .map(|o| format!("{o}: "))
        .unwrap_or_default()
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

/// Something worth telling the user that is not an error: a skipped kind, an implied namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    pub location: Location,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}{}",
            self.location,
            object_prefix(&self.object),
            self.message
        )
    }
}
