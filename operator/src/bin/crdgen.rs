//! `crdgen`: writes the CRDs generated from the Rust types into `crds/` (or the folder given as
//! the first argument). A test compares the checked-in files with the code.

use std::path::PathBuf;
use ump_operator::crd;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(crd::crds_dir);
    std::fs::create_dir_all(&dir)?;
    for definition in crd::crds() {
        let path = dir.join(crd::file_name(&definition));
        std::fs::write(&path, crd::render(&definition)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
