//! Golden snapshots: each example CR renders to exactly the committed YAML
//! (`UPDATE_GOLDEN=1 cargo test -p raftmq-operator --test render_golden`
//! rewrites them; review the diff).

mod common;

use raftmq_operator::render::render;
use raftmq_operator::schema::{validate, Checked};

#[test]
fn examples_match_golden_files() {
    let mut failures = Vec::new();
    for name in common::EXAMPLES {
        let cluster = common::example_cluster(name);
        let observed = common::example_observed(name);
        let rendered = render(&cluster, &observed).expect("render");
        let yaml = rendered.to_yaml().expect("yaml");
        let path = common::repo_root().join("operator/tests/golden").join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &yaml).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != yaml {
            failures.push(format!(
                "{name}: rendering differs from {} (run with UPDATE_GOLDEN=1 and review the diff)",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rendered_examples_validate_against_the_kubernetes_schema() {
    for name in common::EXAMPLES {
        let cluster = common::example_cluster(name);
        let rendered = render(&cluster, &common::example_observed(name)).expect("render");
        for obj in rendered.objects() {
            match validate(&obj) {
                Ok(Checked::Typed) => {}
                Ok(Checked::Shape) => {
                    let kind = obj["kind"].as_str().unwrap_or_default();
                    assert!(
                        kind == "ServiceMonitor" || kind == "Certificate",
                        "{name}: {kind} was not schema-checked"
                    );
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
}

#[test]
fn example_files_validate() {
    for name in common::EXAMPLES {
        for doc in common::example_docs(name) {
            if let Err(e) = validate(&doc) {
                panic!("{name}: {e}");
            }
        }
    }
}
