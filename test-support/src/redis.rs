//! A real `redis-server` for the tests that need one, on a free port, in a
//! fresh directory, never the shared one on 6379.
//!
//! - [`RedisServer::start`]: a server of the test's own, stopped (SIGKILL)
//!   when dropped.
//! - [`RedisServer::shared`]: one server for the whole test binary, for
//!   suites whose tests isolate themselves with a key prefix; a watchdog
//!   stops it when the test binary exits, whatever way it exits.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::TestDir;

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TestDir,
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

impl RedisServer {
    /// A new server with `redis-server`'s defaults and persistence off.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A new server with extra `--name value` arguments (e.g.
    /// `["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = TestDir::new();
        let mut args: Vec<String> = ["--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Later arguments win: the caller's override the defaults above.
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = RedisServer {
            child: None,
            port: 0,
            dir,
            args,
        };
        s.launch(free_port());
        s
    }

    fn launch(&mut self, port: u16) {
        for attempt in 0..20 {
            let port = if attempt == 0 { port } else { free_port() };
            self.spawn(port);
            if self.wait_ready(Duration::from_secs(10)) {
                return;
            }
            self.kill();
        }
        panic!("redis-server did not start");
    }

    /// Starts `redis-server` on `port` with this server's directory and
    /// arguments.
    fn spawn(&mut self, port: u16) {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        self.port = port;
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            // A server with a password answers NOAUTH: it is up.
            if self
                .command(&["PING"])
                .is_ok_and(|r| r == "+PONG" || r.starts_with("-NOAUTH"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The server shared by every test of this binary (started on first
    /// use, stopped when the binary exits).
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let s = RedisServer::start();
            let pid = s.child.as_ref().map(Child::id).unwrap_or(0);
            // The watchdog: a shell that kills the server once this test
            // binary is gone (statics are never dropped).
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {pid}",
                    std::process::id()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            s
        })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory (append-only files).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (its data stays in its directory).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`kill`]).
    ///
    /// [`kill`]: RedisServer::kill
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(port);
        assert!(
            self.wait_ready(Duration::from_secs(20)),
            "redis-server restarted on port {port}"
        );
    }

    /// Runs one command on a fresh connection and returns the reply in
    /// RESP form with the final CRLF cut (`+OK`, `:3`, `$5\r\nhello`...).
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        self.command_bytes(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
    }

    /// [`RedisServer::command`] with binary arguments.
    pub fn command_bytes(&self, args: &[&[u8]]) -> std::io::Result<String> {
        Self::command_bytes_on(self.port, args)
    }

    /// [`RedisServer::command`] on the server at `port` (from a thread that
    /// does not hold the server).
    pub fn command_on(port: u16, args: &[&str]) -> std::io::Result<String> {
        Self::command_bytes_on(port, &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
    }

    fn command_bytes_on(port: u16, args: &[&[u8]]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        s.write_all(&out)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        Ok(text.trim_end_matches("\r\n").to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
