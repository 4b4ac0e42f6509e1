//! `crdgen`: writes the CRDs generated from the Rust types into `crds/` and the Helm chart's
//! `files/crds/` (or only into the folder given as the first argument). A test compares the
//! checked-in files with the code.

use std::path::PathBuf;
use ump_operator::crd;

fn main() -> anyhow::Result<()> {
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![crd::crds_dir(), crd::chart_crds_dir()],
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for definition in crd::crds() {
            let path = dir.join(crd::file_name(&definition));
            std::fs::write(&path, crd::render(&definition)?)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
