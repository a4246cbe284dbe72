//! `include/dashi.h` is what the pinned cbindgen generates from this crate
//! (regenerate with `DASHI_BLESS=1 cargo test -p dashi-ffi --test header`),
//! and its version macros are the crate's version.

use std::path::Path;

fn generated() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

fn header_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/dashi.h")
}

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let fresh = generated();
    if std::env::var_os("DASHI_BLESS").is_some() {
        std::fs::write(header_path(), &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(header_path()).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/dashi.h is stale: run DASHI_BLESS=1 cargo test -p dashi-ffi --test header"
    );
}

#[test]
fn the_version_macros_are_the_crate_s_version() {
    let h = std::fs::read_to_string(header_path()).unwrap();
    for (name, want) in [
        ("DASHI_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("DASHI_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("DASHI_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        let line = h
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(line.split_whitespace().nth(2), Some(want), "{line}");
    }
}
