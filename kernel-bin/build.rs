//! Link arguments for the freestanding kernel binary only (never through a global
//! `RUSTFLAGS`, which would also reach build scripts and proc-macros).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    for argument in [
        format!("-T{dir}/linker.ld"),
        "-nostartfiles".into(),
        "-nostdlib".into(),
        "-static".into(),
        "-no-pie".into(),
        "-Wl,--build-id=none".into(),
        "-Wl,-n".into(),
        // Pull the architecture crate's entry object out of its archive.
        "-Wl,--undefined=keel_pvh_start32".into(),
    ] {
        println!("cargo:rustc-link-arg-bins={argument}");
    }
}
