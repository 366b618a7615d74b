// Part of `cli.rs` (brought in with `include!`): 1. Every example: probe verdicts and the README matrix.

// ---------------------------------------------------------------------------------------------
// 1. Every example: probe verdicts and the README matrix
// ---------------------------------------------------------------------------------------------

#[test]
fn every_example_probe_meets_its_expect() {
    for dir in examples() {
        let name = name_of(&dir);
        let probes_path = dir.join("probes.json");
        assert!(
            probes_path.is_file(),
            "example {name} should have a probes.json"
        );
        let probes = read_json(&probes_path);
        let probes = array(&probes, &format!("{name}/probes.json"));
        assert!(
            !probes.is_empty(),
            "example {name}: probes.json should hold at least one probe"
        );
        let out = verdicts_json(&path_str(&dir), &path_str(&probes_path));
        out.assert_code(
            0,
            &format!("every probe of example {name} meets its expect"),
        );
        let results = out.json();
        let results = array(&results, "verdicts -o json output");
        assert_eq!(
            results.len(),
            probes.len(),
            "example {name}: expected one result per probe"
        );
        for (i, (probe, result)) in probes.iter().zip(results).enumerate() {
            let context = format!("example {name}, probe #{i} {probe}");
            assert_eq!(
                (result.get("from"), result.get("to")),
                (probe.get("from"), probe.get("to")),
                "{context}: results should be in probe order"
            );
            assert_evaluated(result, &context);
            if let Some(expect) = probe.get("expect") {
                assert_eq!(
                    result.get("verdict"),
                    Some(expect),
                    "{context}: expected verdict {expect}, got {result}"
                );
                assert_eq!(
                    result.get("expectation_met"),
                    Some(&Value::Bool(true)),
                    "{context}: expected \"expectation_met\": true, got {result}"
                );
            }
        }
    }
}

#[test]
fn every_example_readme_matrix_matches_verdicts_matrix() {
    for dir in examples() {
        let name = name_of(&dir);
        let readme_path = dir.join("README.md");
        let readme = std::fs::read_to_string(&readme_path)
            .unwrap_or_else(|e| panic!("example {name} should have a README.md: {e}"));
        let block = matrix_block(&readme).unwrap_or_else(|| {
            panic!("example {name}: README.md should hold a (closed) ```matrix fenced block")
        });
        let tables = matrix_tables(&block, &readme_path);
        assert!(
            !tables.is_empty(),
            "example {name}: the ```matrix block should hold at least one table with a header like `TCP/8080 {TABLE_HEADER_TAIL}`"
        );
        let manifests = path_str(&dir);
        let mut printed = String::new();
        for (t, (protocol, port, expected)) in tables.iter().enumerate() {
            let out = run(&[
                "verdicts",
                "--matrix",
                "-q",
                "--manifests",
                &manifests,
                "--ports",
                port,
                "--protocols",
                protocol,
            ]);
            out.assert_code(0, "the matrix of valid manifests is printed");
            assert_eq!(
                normalize(&out.stdout),
                normalize(expected),
                "example {name}: `{}` should print the README's {protocol}/{port} table exactly (left: printed, right: README)",
                out.cmdline
            );
            if t > 0 {
                printed.push('\n');
            }
            printed.push_str(&out.stdout);
        }
        // Nothing in the block beyond the tables (the tables concatenated are the whole block).
        assert_eq!(
            normalize(&printed),
            normalize(&block),
            "example {name}: the README ```matrix block should be exactly the printed tables"
        );
    }
}
