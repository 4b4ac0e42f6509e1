//! The CRDs checked in under `crds/` and in the Helm chart are exactly what the Rust types
//! generate.

use ump_operator::crd;

#[test]
fn checked_in_crds_match_the_code() {
    for dir in [crd::crds_dir(), crd::chart_crds_dir()] {
        check(&dir);
    }
}

fn check(dir: &std::path::Path) {
    for definition in crd::crds() {
        let path = dir.join(crd::file_name(&definition));
        let generated = crd::render(&definition).expect("render CRD");
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "{} is out of date with the Rust types: run `cargo run -p ump-operator --bin crdgen` \
             and commit the result",
            path.display()
        );
    }
}
