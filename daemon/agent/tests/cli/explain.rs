// Part of `cli.rs` (brought in with `include!`): 3. explain.

// ---------------------------------------------------------------------------------------------
// 3. explain
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_json_equals_verdicts_element_for_every_example_probe() {
    let tmp = TempDir::new("explain-json");
    for dir in examples() {
        let name = name_of(&dir);
        let manifests = path_str(&dir);
        let probes = read_json(&dir.join("probes.json"));
        let probes = without_expect(array(&probes, "probes.json"));
        let file = tmp.write(
            &format!("{name}.json"),
            &serde_json::to_string(&probes).expect("serializable"),
        );
        let verdicts = verdicts_json(&manifests, &file);
        verdicts.assert_code(0, "probes without expect, all resolvable");
        let results = verdicts.json();
        let results = array(&results, "verdicts -o json output");
        assert_eq!(
            results.len(),
            probes.len(),
            "example {name}: one result per probe"
        );
        for (probe, element) in probes.iter().zip(results) {
            let mut args = vec!["explain", "-q", "--manifests", &manifests, "-o", "json"];
            let extra = explain_args(probe);
            args.extend(extra.iter().map(String::as_str));
            let explained = run(&args);
            explained.assert_code(0, "the probe resolves");
            assert_eq!(
                &explained.json(),
                element,
                "example {name}: `{}` should print the same object as the matching `verdicts -o json` element",
                explained.cmdline
            );
        }
    }
}

#[test]
fn explain_text_names_the_allowing_policy_and_rule() {
    let dir = example("three-tier");
    let out = run(&[
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ]);
    out.assert_code(0, "explain of a resolvable flow");
    for needle in [
        "shop/backend-from-frontend ingress[0]",
        "rule_allow: shop/backend-from-frontend ingress[0]",
        "Verdict: ALLOW",
    ] {
        assert!(
            out.stdout.contains(needle),
            "`{}` should say {needle:?}, got:\n{}",
            out.cmdline,
            out.stdout
        );
    }
}

#[test]
fn explain_text_names_every_allowing_rule_in_the_examples() {
    for dir in examples() {
        let name = name_of(&dir);
        let manifests = path_str(&dir);
        let probes = read_json(&dir.join("probes.json"));
        let probes = without_expect(array(&probes, "probes.json"));
        for probe in &probes {
            let mut json_args = vec!["explain", "-q", "--manifests", &manifests, "-o", "json"];
            let extra = explain_args(probe);
            json_args.extend(extra.iter().map(String::as_str));
            let element = run(&json_args).json();
            let mut text_args = vec!["explain", "-q", "--manifests", &manifests];
            text_args.extend(extra.iter().map(String::as_str));
            let text = run(&text_args);
            text.assert_code(0, "explain of a resolvable flow");
            let verdict = element["verdict"].as_str().expect("verdict").to_uppercase();
            assert!(
                text.stdout.contains(&format!("Verdict: {verdict}")),
                "example {name}: `{}` should end with `Verdict: {verdict}`, got:\n{}",
                text.cmdline,
                text.stdout
            );
            for side in ["egress", "ingress"] {
                for rule in element[side]["allowed_by"].as_array().into_iter().flatten() {
                    let needle = format!(
                        "{}/{} {side}[{}]",
                        rule["namespace"].as_str().expect("namespace"),
                        rule["name"].as_str().expect("name"),
                        rule["rule"]
                    );
                    assert!(
                        text.stdout.contains(&needle),
                        "example {name}: `{}` should name the allowing rule {needle:?}, got:\n{}",
                        text.cmdline,
                        text.stdout
                    );
                }
            }
        }
    }
}

#[test]
fn explain_unknown_pod_fails_with_a_clear_message() {
    let dir = example("three-tier");
    let out = run(&[
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/ghost",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ]);
    assert_ne!(
        out.code, 0,
        "`{}` should fail for an unknown pod, but exited 0:\n{}",
        out.cmdline, out.stdout
    );
    assert!(
        out.stderr.contains("unknown pod \"shop/ghost\""),
        "`{}` should say `unknown pod \"shop/ghost\"` on stderr, got:\n{}",
        out.cmdline,
        out.stderr
    );
    assert!(
        !out.stdout.contains("Verdict"),
        "no verdict should be printed for an unknown pod, got:\n{}",
        out.stdout
    );

    let json = run(&[
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/ghost",
        "--to",
        "shop/backend",
        "--port",
        "8080",
        "-o",
        "json",
    ]);
    json.assert_code(1, "a probe that cannot be evaluated failed");
    let element = json.json();
    assert!(
        element["error"]
            .as_str()
            .is_some_and(|e| e.contains("shop/ghost")),
        "explain -o json should report the unknown pod in \"error\", got {element}"
    );
    assert!(
        element.get("verdict").is_none(),
        "no verdict for an unknown pod, got {element}"
    );
}

/// Exit code 1 means "a probe failed" (documented in `flowgate --help`), 64 "unreadable input".
/// An unknown pod is a failed probe, and `explain -o json` already exits 1 for it: the text
/// output must agree.
#[test]
fn explain_unknown_pod_exit_code_is_the_same_in_text_and_json() {
    let dir = example("three-tier");
    let base = [
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/ghost",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ];
    let json = run(&[&base[..], &["-o", "json"]].concat());
    let text = run(&base);
    json.assert_code(1, "an unknown pod is a failed probe");
    text.assert_code(
        1,
        "an unknown pod is a failed probe (exit 1), not unreadable input (64); `-o json` exits 1",
    );
}
