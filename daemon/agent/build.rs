//! Builds the eBPF programs (`ebpf/datapath`, bin `flowgate-datapath`) with aya-build and leaves
//! the object at `$OUT_DIR/flowgate-datapath`, embedded by `datapath::OBJECT`.
//!
//! aya-build runs `rustup run nightly cargo build --package flowgate-ebpf --bins --release
//! --target bpfel-unknown-none -Z build-std=core` (needs rust-src for nightly and bpf-linker:
//! `scripts/bootstrap.sh` installs both). `FLOWGATE_EBPF_TOOLCHAIN=stable` plus
//! `RUSTC_BOOTSTRAP=1` builds with stable instead. `AYA_BUILD_SKIP=1` skips the build and leaves
//! an empty object: the offline commands work, loading the datapath fails with a clear error.

use std::{env, fs, path::PathBuf};

use aya_build::{Package, Toolchain};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=FLOWGATE_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    // aya-build only watches the eBPF crate's own directory.
    println!("cargo:rerun-if-changed=../../ebpf/abi");
    println!("cargo:rerun-if-changed=../../Cargo.toml");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    let toolchain = env::var("FLOWGATE_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        None | Some("" | "nightly") => Toolchain::Nightly,
        Some(custom) => Toolchain::Custom(custom),
    };
    aya_build::build_ebpf(
        [Package {
            name: "flowgate-ebpf",
            root_dir: "../../ebpf/datapath",
            ..Default::default()
        }],
        toolchain,
    )?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    let object = out_dir.join("flowgate-datapath");
    if !object.exists() {
        fs::write(&object, [])?;
    }
    Ok(())
}
