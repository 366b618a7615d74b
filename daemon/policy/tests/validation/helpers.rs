// Part of `validation.rs` (brought in with `include!`): Helpers.

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Strips the common leading indentation of the non-blank lines (so YAML can be written indented
/// inside the test) and drops a leading newline.
fn dedent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| if l.len() >= indent { &l[indent..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Indents every line of `text` by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn load(text: &str) -> Manifests {
    let mut manifests = Manifests::new();
    manifests.add_text(SOURCE, text);
    manifests
}

/// A NetworkPolicy `team/np` with the given spec (written at indentation 0, dedented).
fn policy_yaml(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: team\nspec:\n{}",
        indent(&dedent(spec), 2)
    )
}

/// A Pod `team/web` with the given spec and status (each dedented; either may be empty).
fn pod_yaml(spec: &str, status: &str) -> String {
    let mut text =
        String::from("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team\n");
    if !spec.trim().is_empty() {
        text.push_str("spec:\n");
        text.push_str(&indent(&dedent(spec), 2));
    }
    if !status.trim().is_empty() {
        text.push_str("status:\n");
        text.push_str(&indent(&dedent(status), 2));
    }
    text
}

fn policy_ref() -> ObjectRef {
    object("NetworkPolicy", Some("team"), "np")
}

fn pod_ref() -> ObjectRef {
    object("Pod", Some("team"), "web")
}

fn object(kind: &str, namespace: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

/// Loads `text`, which must produce exactly one error and load nothing; returns the error.
#[track_caller]
fn single_error(text: &str) -> ManifestError {
    let m = load(text);
    assert_eq!(
        m.errors.len(),
        1,
        "expected exactly one error for\n{text}\ngot: {:#?}",
        m.errors
    );
    assert!(
        m.policies.is_empty() && m.pods.is_empty() && m.namespaces.is_empty(),
        "a rejected object must not be loaded: {m:#?}"
    );
    m.errors[0].clone()
}

/// Asserts the error is about `object`, at exactly `field`, with `message` in its message.
#[track_caller]
fn assert_error(error: &ManifestError, object: &ObjectRef, field: &str, message: &str) {
    assert_eq!(error.object.as_ref(), Some(object), "object of {error}");
    assert_eq!(error.field.as_deref(), Some(field), "field path of {error}");
    assert!(
        error.message.contains(message),
        "message of {error:?} should contain {message:?}"
    );
    assert_eq!(error.location.source, SOURCE);
    assert_eq!(error.location.line, Some(1), "line of {error}");
}

/// The spec must be rejected at `field` (relative to the object) with `message`.
#[track_caller]
fn rejects_policy(spec: &str, field: &str, message: &str) {
    let error = single_error(&policy_yaml(spec));
    assert_error(&error, &policy_ref(), field, message);
}

/// The spec must load as exactly one policy, with no errors; returns it.
#[track_caller]
fn accepts_policy(spec: &str) -> Policy {
    let m = load(&policy_yaml(spec));
    assert!(m.errors.is_empty(), "unexpected errors: {:#?}", m.errors);
    assert_eq!(m.policies.len(), 1, "{m:#?}");
    m.policies[0].clone()
}

#[track_caller]
fn rejects_pod(spec: &str, status: &str, field: &str, message: &str) {
    let error = single_error(&pod_yaml(spec, status));
    assert_error(&error, &pod_ref(), field, message);
}

/// The single ipBlock peer of the policy's first ingress rule.
#[track_caller]
fn first_ingress_ip_block(policy: &Policy) -> IpBlock {
    let blocks: Vec<IpBlock> = policy.ingress[0]
        .peers
        .iter()
        .flatten()
        .filter_map(|peer| match peer {
            Peer::IpBlock(block) => Some(block.clone()),
            Peer::Pods { .. } => None,
        })
        .collect();
    assert_eq!(blocks.len(), 1, "expected one ipBlock peer in {policy:?}");
    blocks[0].clone()
}

/// An ingress rule with one port entry (given as YAML flow mapping body).
fn ingress_port(port: &str) -> String {
    format!("podSelector: {{}}\ningress:\n  - ports:\n      - {{{port}}}\n")
}

/// An ingress rule with one ipBlock peer (given as YAML flow mapping body).
fn ingress_ip_block(block: &str) -> String {
    format!("podSelector: {{}}\ningress:\n  - from:\n      - ipBlock: {{{block}}}\n")
}

/// A podSelector with the given matchLabels entry (a YAML flow mapping body).
fn match_labels(entry: &str) -> String {
    format!("podSelector:\n  matchLabels: {{{entry}}}\n")
}

/// A podSelector with one matchExpressions requirement (a YAML flow mapping body).
fn match_expression(expr: &str) -> String {
    format!("podSelector:\n  matchExpressions:\n    - {{{expr}}}\n")
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const NOT_STRICT_SUBSET: &str = "must be a strict subset of `cidr`";
const INVALID_PORT_NAME: &str = "invalid port name";
const INVALID_LABEL_KEY: &str = "invalid label key";
const INVALID_LABEL_VALUE: &str = "invalid label value";
