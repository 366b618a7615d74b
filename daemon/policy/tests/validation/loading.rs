// Part of `validation.rs` (brought in with `include!`): Loading: documents, lists, kinds, duplicates.

// ---------------------------------------------------------------------------------------------
// Loading: documents, lists, kinds, duplicates
// ---------------------------------------------------------------------------------------------

#[test]
fn yaml_syntax_error_loses_only_its_document() {
    let text = dedent(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: broken
           namespace: a
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: a}
        ",
    );
    let m = load(&text);
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.pods.len(), 1);
    assert_eq!(m.pods[0].name, "web");
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let error = &m.errors[0];
    assert_eq!(error.location.source, SOURCE);
    // The line of the broken key itself (line 9 of the file), not the document's start.
    assert_eq!(error.location.line, Some(9));
    assert_eq!(error.object, None);
    assert!(error.message.starts_with("not valid YAML"), "{error}");
    assert!(
        error.to_string().starts_with("test.yaml:9: not valid YAML"),
        "{error}"
    );
}

#[test]
fn yaml_syntax_error_message_line_is_the_file_line() {
    // The broken line is line 9 of the file (line 5 of its document). A line number in the
    // message must not contradict the location: it has to be the file's line, or absent.
    let text = dedent(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: broken
           namespace: a
        ",
    );
    let m = load(&text);
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let message = &m.errors[0].message;
    let mentions_line = |n: usize| {
        message.contains(&format!("line {n}")) || message.contains(&format!("line: {n}"))
    };
    for wrong in 1..=8 {
        assert!(
            !mentions_line(wrong) || mentions_line(9),
            "message gives a document-relative line: {message}"
        );
    }
}

#[test]
fn unterminated_flow_in_last_document_keeps_the_others() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n--- # second\nkind: Pod\nmetadata: {name: [\n";
    let m = load(text);
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    // The unclosed `[` is on line 6 of the file.
    let line = m.errors[0].location.line.unwrap();
    assert_eq!(line, 6, "{}", m.errors[0]);
    assert!(m.errors[0].message.contains("not valid YAML"));
}

#[test]
fn list_items_are_loaded() {
    let m = load(&dedent(
        "
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Namespace
            metadata: {name: team}
          - apiVersion: v1
            kind: Pod
            metadata: {name: web, namespace: team}
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: np, namespace: team}
            spec: {podSelector: {}}
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web, namespace: team}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicyList
        items:
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: other, namespace: team}
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: bad, namespace: team}
            spec: {policyTypes: [Sideways]}
        ",
    ));
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.pods.len(), 1);
    let names: Vec<_> = m.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["np", "other"]);
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    assert!(m.notices[0].message.contains("apps/v1 Deployment"));
    // An item's error names the item and the document the list starts on.
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let error = &m.errors[0];
    assert_eq!(
        error.object,
        Some(object("NetworkPolicy", Some("team"), "bad"))
    );
    assert_eq!(error.field.as_deref(), Some("spec.policyTypes[0]"));
    assert_eq!(error.location.line, Some(18));
}

#[test]
fn unknown_kinds_are_skipped_with_a_notice() {
    let m = load(&dedent(
        "
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: team}
        spec: {replicas: 3}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        ---
        apiVersion: networking.k8s.io/v1beta1
        kind: NetworkPolicy
        metadata: {name: old}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert!(m.policies.is_empty() && m.pods.is_empty() && m.namespaces.is_empty());
    assert_eq!(m.notices.len(), 3, "{:#?}", m.notices);

    let deployment = &m.notices[0];
    assert_eq!(deployment.location.line, Some(1));
    assert_eq!(
        deployment.object,
        Some(object("Deployment", Some("team"), "web"))
    );
    assert!(
        deployment
            .message
            .contains("skipped: apps/v1 Deployment is not used"),
        "{deployment}"
    );

    let service = &m.notices[1];
    assert_eq!(service.location.line, Some(6));
    assert_eq!(
        service.object,
        Some(object("Service", Some("default"), "web"))
    );
    assert!(service.message.contains("skipped: v1 Service"), "{service}");

    assert!(
        m.notices[2]
            .message
            .contains("networking.k8s.io/v1beta1 NetworkPolicy")
    );
}

#[test]
fn unknown_kind_ending_in_list_without_items_gets_a_notice() {
    // Only a document with `items` is a list (kubectl: meta.IsListType); a custom kind that
    // happens to end in "List" is an ordinary object and must not vanish silently.
    let m = load(&dedent(
        "
        apiVersion: example.com/v1
        kind: IPAllowList
        metadata: {name: office, namespace: team}
        spec: {cidrs: [10.0.0.0/8]}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    assert_eq!(
        m.notices[0].object,
        Some(object("IPAllowList", Some("team"), "office"))
    );
    assert!(
        m.notices[0]
            .message
            .contains("skipped: example.com/v1 IPAllowList"),
        "{}",
        m.notices[0]
    );
}

#[test]
fn document_without_kind_is_an_error() {
    let m = load("apiVersion: v1\nmetadata: {name: web}\n");
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let error = &m.errors[0];
    assert_eq!(error.field.as_deref(), Some("kind"));
    assert!(error.message.contains("missing"), "{error}");
    assert_eq!(error.location.line, Some(1));
    assert!(m.notices.is_empty());
}

#[test]
fn document_without_api_version_is_an_error() {
    // The loader's own message says "every object needs apiVersion and kind"; a Pod without
    // apiVersion is not a valid object and must not be skipped as an "unused kind".
    let m = load("kind: Pod\nmetadata: {name: web}\n");
    assert_eq!(
        m.errors.len(),
        1,
        "errors: {:#?}\nnotices: {:#?}",
        m.errors,
        m.notices
    );
    let error = &m.errors[0];
    assert_eq!(error.field.as_deref(), Some("apiVersion"));
    assert!(error.message.contains("missing"), "{error}");
}

#[test]
fn non_object_documents_are_skipped_with_a_notice() {
    let m = load("just a string\n---\n- a\n- list\n---\n# only a comment\n---\n\n---\nnull\n");
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.notices.len(), 2, "{:#?}", m.notices);
    assert!(m.notices[0].message.contains("not a Kubernetes object"));
    assert_eq!(m.notices[1].location.line, Some(3));
}

#[test]
fn duplicate_object_replaces_the_previous_definition() {
    let m = load(&dedent(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: team}
        spec: {policyTypes: [Ingress]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: other}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: team}
        spec: {policyTypes: [Egress]}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.policies.len(), 2);
    let team: Vec<_> = m
        .policies
        .iter()
        .filter(|p| p.namespace == "team")
        .collect();
    assert_eq!(team.len(), 1);
    assert!(
        team[0].isolates_egress && !team[0].isolates_ingress,
        "the later one wins"
    );
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    let notice = &m.notices[0];
    assert_eq!(notice.object, Some(policy_ref()));
    assert_eq!(notice.location.line, Some(10));
    assert!(
        notice
            .message
            .contains("replaces the definition at test.yaml:1"),
        "{notice}"
    );
}

#[test]
fn duplicate_across_sources_and_kinds() {
    let mut m = Manifests::new();
    m.add_text(
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
    );
    m.add_text(
        "a.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n",
    );
    m.add_text(
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, labels: {v: \"2\"}}\n",
    );
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.pods.len(), 1, "a Pod of the same name is not a duplicate");
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(
        m.namespaces[0].labels.get("v").map(String::as_str),
        Some("2")
    );
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    assert_eq!(
        m.notices[0].to_string(),
        "b.yaml:1: Namespace web: replaces the definition at a.yaml:1"
    );
}

#[test]
fn good_objects_survive_a_bad_one() {
    let m = load(&dedent(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: team, labels: {team: a}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: team, labels: {app: web}}
        spec:
          containers: [{name: c, ports: [{containerPort: 80, name: http}]}]
        status: {podIP: 10.0.0.1}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: team}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
            - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-web, namespace: team}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
            - ports: [{port: http}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: db, namespace: team}
        ",
    ));
    assert_eq!(m.namespaces.len(), 1);
    let pods: Vec<_> = m.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["web", "db"]);
    let policies: Vec<_> = m.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(policies, ["allow-web"]);
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    assert_eq!(
        m.errors[0].to_string(),
        "test.yaml:12: NetworkPolicy team/np: spec.ingress[0].from[0].ipBlock.except[0]: \
         \"11.0.0.0/8\" must be a strict subset of `cidr` \"10.0.0.0/8\""
    );
    assert!(m.notices.is_empty(), "{:#?}", m.notices);
}

#[test]
fn error_display_names_source_line_object_and_field() {
    let m = load(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n---\n{}",
        policy_yaml(&ingress_port("port: 0"))
    ));
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    assert_eq!(
        m.errors[0].to_string(),
        "test.yaml:5: NetworkPolicy team/np: spec.ingress[0].ports[0].port: \
         must be between 1 and 65535, inclusive (got 0)"
    );
}
