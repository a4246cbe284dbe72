//! The C programs in `tests/c/`, compiled with the system C compiler
//! against `include/dashi.h` and this crate's shared library, run on every
//! transport (memory://, local://, redis:// on a redis-server of its own); on memory:// also under valgrind (any invalid access or
//! definite leak fails the run) when valgrind is installed. local:// is not
//! run under valgrind: valgrind does not emulate io_uring, which the store's
//! runtime uses, and the program would wait for ever.

use std::path::{Path, PathBuf};
use std::process::Command;

use dashi_test_support::TestDir;

mod common;

/// The directory holding `libdashi_ffi.so`.
fn lib_dir() -> PathBuf {
    common::library().parent().unwrap().to_path_buf()
}

/// Compiles `<dir>/<name>.c` (relative to this crate) into `out` and
/// returns the binary.
fn compile(dir: &str, name: &str, out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = out.join(name);
    let lib = lib_dir();
    let o = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-I"])
        .arg(root.join("../include"))
        .arg(root.join(format!("{dir}/{name}.c")))
        .arg("-o")
        .arg(&bin)
        .arg("-L")
        .arg(&lib)
        .arg("-ldashi_ffi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("a C compiler (cc) is installed");
    assert!(
        o.status.success(),
        "compiling {name}.c failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    bin
}

fn run(cmd: &mut Command, what: &str) {
    // cargo's LD_LIBRARY_PATH would win over the binary's run path.
    let o = cmd.env_remove("LD_LIBRARY_PATH").output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("ok"),
        "{what} failed ({}):\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

fn valgrind() -> Option<Command> {
    let probe = Command::new("valgrind").arg("--version").output().ok()?;
    probe.status.success().then(|| {
        let mut c = Command::new("valgrind");
        c.args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ]);
        c
    })
}

#[test]
fn the_abi_program_passes_on_every_transport() {
    let build = TestDir::new();
    let bin = compile("tests/c", "abi", &build);
    let store = TestDir::new();
    let redis = dashi_test_support::RedisServer::start();
    let urls = [
        "memory://c-abi".to_owned(),
        format!("local://{}", store.join("plain").display()),
        format!("local://{}?fsync=always", store.join("synced").display()),
        redis.url(),
    ];
    for url in &urls {
        run(Command::new(&bin).arg(url), &format!("abi {url}"));
    }
}

#[test]
fn the_abi_program_is_clean_under_valgrind() {
    let Some(mut vg) = valgrind() else {
        eprintln!("valgrind is not installed: skipped");
        return;
    };
    let build = TestDir::new();
    let bin = compile("tests/c", "abi", &build);
    run(vg.arg(&bin).arg("memory://c-abi"), "abi under valgrind");
}

/// `examples/c/tasks.c` builds as its README says and runs.
#[test]
fn the_c_example_runs() {
    let build = TestDir::new();
    let bin = compile("../examples/c", "tasks", &build);
    let o = Command::new(&bin)
        .arg("memory://")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let order: Vec<&str> = out.lines().collect();
    assert_eq!(
        order,
        [
            "task invoice (priority 9)",
            "task email (priority 5)",
            "task resize (priority 1)"
        ]
    );
}
