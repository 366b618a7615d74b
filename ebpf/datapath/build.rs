//! Rebuilds the eBPF object when the `bpf-linker` on PATH changes: it links the
//! object but is not a cargo dependency, so cargo cannot see it otherwise.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    let Some(path) = env::var_os("PATH") else {
        return;
    };
    let found = env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p: &PathBuf| p.is_file());
    if let Some(linker) = found {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
