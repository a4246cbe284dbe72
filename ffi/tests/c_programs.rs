//! The C programs in `tests/c/`, compiled with the system C compiler
//! against `include/dashi.h` and this crate's shared library, run on every
//! transport (memory://, local://, redis:// on a redis-server of its own).
//! They also run built with AddressSanitizer and UBSan (`-fsanitize=
//! address,undefined`: an invalid access, undefined behaviour in the C
//! program or a leak of memory the library allocated fails the run) on
//! every transport, and under valgrind (memcheck) on every transport when
//! valgrind is installed (valgrind runs one thread at a time: the runtime's
//! cores sleep in `poll`, which valgrind knows blocks, so the other threads
//! run meanwhile).

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
    compile_with(dir, name, out, &[])
}

/// [`compile`] with extra compiler flags.
fn compile_with(dir: &str, name: &str, out: &Path, flags: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = out.join(name);
    let lib = lib_dir();
    let o = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(flags)
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
        // Bounded: a program that waits for ever under valgrind (as it did
        // while the runtime's cores slept in `io_uring_enter`) fails the
        // test instead of hanging it.
        let mut c = Command::new("timeout");
        c.args(["--kill-after=10", "300", "valgrind"]);
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

/// memory://, local:// (plain and `fsync=always`, in `store`) and
/// redis:// on `redis`.
fn every_transport(store: &TestDir, redis: &dashi_test_support::RedisServer) -> [String; 4] {
    [
        "memory://c-abi".to_owned(),
        format!("local://{}", store.join("plain").display()),
        format!("local://{}?fsync=always", store.join("synced").display()),
        redis.url(),
    ]
}

#[test]
fn the_abi_program_passes_on_every_transport() {
    let build = TestDir::new();
    let bin = compile("tests/c", "abi", &build);
    let store = TestDir::new();
    let redis = dashi_test_support::RedisServer::start();
    let urls = every_transport(&store, &redis);
    for url in &urls {
        run(Command::new(&bin).arg(url), &format!("abi {url}"));
    }
}

/// The ABI program built with AddressSanitizer and UBSan, when the C
/// compiler has them; None (with a line saying so) when it has not.
fn asan_build(out: &Path) -> Option<PathBuf> {
    let probe = out.join("probe.c");
    std::fs::write(&probe, "int main(void) { return 0; }\n").unwrap();
    let ok = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-fsanitize=address,undefined", "-o"])
        .arg(out.join("probe"))
        .arg(&probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("the C compiler has no AddressSanitizer: skipped");
        return None;
    }
    Some(compile_with(
        "tests/c",
        "abi",
        out,
        &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ],
    ))
}

/// ASan's settings: leaks fail the run, and any report exits non-zero.
fn asan(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env(
        "ASAN_OPTIONS",
        "detect_leaks=1:halt_on_error=1:exitcode=98:abort_on_error=0",
    )
    .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    c
}

#[test]
fn the_abi_program_is_clean_under_asan_on_every_transport() {
    let build = TestDir::new();
    let Some(bin) = asan_build(&build) else {
        return;
    };
    let store = TestDir::new();
    let redis = dashi_test_support::RedisServer::start();
    let urls = every_transport(&store, &redis);
    for url in &urls {
        run(asan(&bin).arg(url), &format!("abi under ASan on {url}"));
    }
    // A program that leaks what the library allocated fails the run: the
    // check above can fail.
    let leak_dir = build.join("leak");
    std::fs::create_dir_all(&leak_dir).unwrap();
    std::fs::write(
        leak_dir.join("leak.c"),
        r#"#include "dashi.h"
#include <stdio.h>
#include <stdlib.h>
/* Takes a message and forgets it without dashi_message_free. */
static void forget(dashi_channel *ch) {
  dashi_message *m = 0;
  if (dashi_get(ch, "q", 1000, &m) != DASHI_OK) exit(1);
}
int main(int argc, char **argv) {
  (void)argc;
  dashi_connection *c = 0;
  dashi_channel *ch = 0;
  if (dashi_connection_open(argv[1], &c) != DASHI_OK) return 1;
  if (dashi_channel_open(c, &ch) != DASHI_OK) return 1;
  if (dashi_queue_declare(ch, "q", 0) != DASHI_OK) return 1;
  if (dashi_publish(ch, "", "q", (const uint8_t *)"x", 1, 0) != DASHI_OK) return 1;
  forget(ch);
  dashi_channel_free(ch);
  dashi_connection_free(c);
  printf("ok\n");
  return 0;
}
"#,
    )
    .unwrap();
    let bin = compile_with(
        leak_dir.to_str().unwrap(),
        "leak",
        &leak_dir,
        &["-fsanitize=address"],
    );
    let o = asan(&bin)
        .arg("memory://leaky")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(98),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("LeakSanitizer"));
}

/// Pipelined publishes that a full Redis refuses come back through C with
/// their messages, and go out again with `dashi_republish` (under ASan when
/// the compiler has it: the returned handles are freed exactly once).
#[test]
fn refused_pipelined_publishes_come_back_through_c() {
    let build = TestDir::new();
    let bin = asan_build(&build).unwrap_or_else(|| compile("tests/c", "abi", &build));
    let redis = dashi_test_support::RedisServer::start_with(&[
        "--maxmemory",
        "3mb",
        "--maxmemory-policy",
        "noeviction",
    ]);
    run(asan(&bin).arg(redis.url()).arg("full"), "abi full");
}

#[test]
fn the_abi_program_is_clean_under_valgrind_on_every_transport() {
    let Some(_) = valgrind() else {
        eprintln!("valgrind is not installed: skipped");
        return;
    };
    let build = TestDir::new();
    let bin = compile("tests/c", "abi", &build);
    let store = TestDir::new();
    let redis = dashi_test_support::RedisServer::start();
    for url in every_transport(&store, &redis) {
        let mut vg = valgrind().unwrap();
        // Tens of times slower: a wake that finds nothing (allowed) may
        // land between a drain and the program's look at the descriptor.
        vg.env("DASHI_ABI_SPURIOUS_WAKES", "1");
        run(
            vg.arg(&bin).arg(&url),
            &format!("abi under valgrind on {url}"),
        );
    }
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
