//! Writes every PTX module exactly as it is loaded (templates expanded) into a directory, one
//! `<module>.ptx` each, for `scripts/check-ptx.sh` to assemble with ptxas.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: ptx-dump DIRECTORY");
        std::process::exit(2);
    }));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    for module in ditmoe_cuda::kernels::catalogue() {
        let path = dir.join(format!("{}.ptx", module.name));
        if let Err(e) = std::fs::write(&path, &module.ptx) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("{}", path.display());
    }
}
