// Part of `cli.rs` (brought in with `include!`): `flowgate agent`'s configuration checks, which
// run before anything is bound or loaded (so they need no root and no cluster).

#[test]
fn agent_in_kubernetes_mode_needs_a_node_name() {
    let r = run_with(&["agent"], &[("FLOWGATE_NODE_NAME", "")], None);
    r.assert_code(64, "no --node-name in Kubernetes mode");
    assert!(
        r.stderr.contains("--node-name is required in Kubernetes mode")
            && r.stderr.contains("--lab --manifests"),
        "the error says what is missing and the alternative:\n{}",
        r.stderr
    );
}

#[test]
fn agent_rejects_a_debounce_with_min_above_max() {
    let r = run(&[
        "agent",
        "--node-name",
        "n1",
        "--sync-min-interval-ms",
        "2000",
        "--sync-max-interval-ms",
        "100",
    ]);
    r.assert_code(64, "min interval above max interval");
    assert!(
        r.stderr
            .contains("--sync-min-interval-ms 2000 is above --sync-max-interval-ms 100"),
        "{}",
        r.stderr
    );
}

#[test]
fn agent_flags_of_one_mode_are_refused_in_the_other() {
    // --lab needs manifests; --manifests needs --lab; --kubeconfig is not for a lab.
    for (args, why) in [
        (&["agent", "--lab"][..], "--lab without --manifests"),
        (&["agent", "--manifests", "examples/three-tier"][..], "--manifests without --lab"),
        (
            &["agent", "--lab", "--manifests", "examples/three-tier", "--kubeconfig", "k"][..],
            "--kubeconfig with --lab",
        ),
    ] {
        let r = run(args);
        r.assert_code(2, why);
        assert!(r.stderr.contains("error:"), "{why}: {}", r.stderr);
    }
}

#[test]
fn agent_refuses_an_api_off_loopback_without_a_token() {
    let r = run(&["agent", "--node-name", "n1", "--http-addr", "0.0.0.0:9090"]);
    r.assert_code(64, "/v1 would be open to the network");
    assert!(r.stderr.contains("--api-token-file"), "{}", r.stderr);
}
