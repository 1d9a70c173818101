//! Generates the ttrpc code for `protos/*.proto` into `OUT_DIR`, with the pure-Rust
//! protobuf parser (no `protoc` needed).

use std::{env, fs, io, path::Path};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &["protos/agent.proto", "protos/vmm.proto"];

fn main() -> io::Result<()> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = env::var("OUT_DIR").map_err(io::Error::other)?;

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(
            ProtobufCustomize::default()
                .gen_mod_rs(false)
                .generate_accessors(true),
        )
        .customize(Customize {
            async_all: false,
            ..Default::default()
        })
        .run()?;

    // `include!` rejects inner attributes and inner doc comments (rust-lang/rust#18810):
    // drop them; lib.rs sets the lints on the enclosing modules instead.
    for entry in fs::read_dir(&out_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            strip_inner_attributes(&path)?;
        }
    }
    Ok(())
}

fn strip_inner_attributes(path: &Path) -> io::Result<()> {
    let text = fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
        .collect();
    fs::write(path, kept.join("\n") + "\n")
}
