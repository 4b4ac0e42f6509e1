//! The CRDs checked in under `crds/` are exactly what the Rust types generate.

use ump_operator::crd;

#[test]
fn checked_in_crds_match_the_code() {
    let dir = crd::crds_dir();
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
