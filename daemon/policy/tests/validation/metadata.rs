// Part of `validation.rs` (brought in with `include!`): Metadata and decoding.

// ---------------------------------------------------------------------------------------------
// Metadata and decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_metadata_name_is_rejected() {
    let error = single_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: team\nspec: {}\n",
    );
    assert_error(
        &error,
        &object("NetworkPolicy", Some("team"), "<unnamed>"),
        "metadata.name",
        "required",
    );

    let error = single_error("apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"\"\n");
    let pod = error.object.as_ref().unwrap();
    assert_eq!(
        (pod.kind.as_str(), pod.namespace.as_deref()),
        ("Pod", Some("default"))
    );
    assert_eq!(error.field.as_deref(), Some("metadata.name"));
    assert!(error.message.contains("required"), "{error}");

    let error = single_error("apiVersion: v1\nkind: Namespace\n");
    assert_error(
        &error,
        &object("Namespace", None, "<unnamed>"),
        "metadata.name",
        "required",
    );
}

#[test]
fn wrong_field_type_is_reported_with_its_path() {
    rejects_policy(
        &ingress_port("port: [1]"),
        "spec.ingress[0].ports[0].port",
        "invalid type",
    );
    rejects_policy(
        "
        podSelector: {}
        ingress: {from: []}
        ",
        "spec.ingress",
        "invalid type",
    );
    rejects_policy(
        "
        podSelector: {}
        ingress:
          - from:
              - ipBlock: {cidr: 10.0.0.0/8, except: 10.1.0.0/16}
        ",
        "spec.ingress[0].from[0].ipBlock.except",
        "invalid type",
    );
    rejects_policy(
        "podSelector: {matchLabels: {app: [web]}}\n",
        "spec.podSelector.matchLabels.app",
        "invalid type",
    );
    rejects_pod(
        "containers: [{name: c, ports: [{containerPort: [80]}]}]\n",
        "",
        "spec.containers[0].ports[0].containerPort",
        "invalid type",
    );
    let error = single_error("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [a]\n");
    assert_error(
        &error,
        &object("Namespace", None, "<unnamed>"),
        "metadata.name",
        "invalid type",
    );
}

#[test]
fn namespace_and_pod_labels_are_validated() {
    let error = single_error(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels: {\"-bad\": x}\n",
    );
    assert_error(
        &error,
        &object("Namespace", None, "team"),
        "metadata.labels[-bad]",
        INVALID_LABEL_KEY,
    );
    let error = single_error(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team\n  labels: {app: \"web app\"}\n",
    );
    assert_error(
        &error,
        &pod_ref(),
        "metadata.labels[app]",
        INVALID_LABEL_VALUE,
    );
}

#[test]
fn namespace_defaults_to_default() {
    let m = load(&dedent(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np}
        spec: {podSelector: {}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.policies[0].namespace, "default");
    assert_eq!(m.pods[0].namespace, "default");
    assert!(m.origins.contains_key(&(
        "NetworkPolicy".to_owned(),
        "default".to_owned(),
        "np".to_owned()
    )));

    // The object ref of a rejected object also names the default namespace.
    let error = single_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {policyTypes: [x]}\n",
    );
    assert_error(
        &error,
        &object("NetworkPolicy", Some("default"), "np"),
        "spec.policyTypes[0]",
        "unsupported value",
    );
}

#[test]
fn empty_namespace_defaults_to_default() {
    // kubectl and the API server treat `namespace: ""` like an absent namespace.
    let m = load(&dedent(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: \"\"}
        spec: {podSelector: {}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: \"\"}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.policies[0].namespace, "default");
    assert_eq!(m.pods[0].namespace, "default");
}

#[test]
fn policy_name_must_be_a_dns_subdomain() {
    // ValidateNetworkPolicyName = NameIsDNSSubdomain.
    for name in ["Web_Policy", "web policy", "-web", "web."] {
        let error = single_error(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \"{name}\", namespace: team}}\nspec: {{}}\n"
        ));
        assert_error(
            &error,
            &object("NetworkPolicy", Some("team"), name),
            "metadata.name",
            name,
        );
    }
}

#[test]
fn object_namespace_must_be_a_dns_label() {
    // ValidateObjectMeta checks metadata.namespace with ValidateNamespaceName (a DNS label).
    for namespace in ["Team", "team.a", "team_a"] {
        let error = single_error(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: \"{namespace}\"}}\n"
        ));
        assert_error(
            &error,
            &object("Pod", Some(namespace), "web"),
            "metadata.namespace",
            namespace,
        );
    }
    let error = single_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: team.a}\n");
    assert_error(
        &error,
        &object("Namespace", None, "team.a"),
        "metadata.name",
        "team.a",
    );
}
