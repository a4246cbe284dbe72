//! One Redis connection, owned by one runtime core and driven through its
//! io_uring. Any thread sends a batch of commands with [`Link::call`]; the
//! batch is appended to the link's output buffer on the core and everything
//! appended during one turn of the core goes out in one `send`. Replies are
//! matched FIFO and handed back per batch.
//!
//! # Invariants
//! - Replies match commands in order: the output buffer only ever holds
//!   whole commands, and each batch waits for exactly as many replies as it
//!   has commands.
//! - A link that failed (reset, EOF, a reply that is not RESP, a call that
//!   timed out) is dead for good: every batch waiting on it fails with
//!   [`LinkError::Lost`], which says whether its commands may have run, and
//!   nothing is sent on it again. The owner connects a new one.
//! - The socket is shut down when the link dies, so no reply can reach a
//!   later batch.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use dashi_rt::{io as rio, JoinHandle, RtError, Runtime};

use crate::resp::{self, Cmd, Frame};

/// Where a Redis server listens.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Addr {
    /// `host:port`.
    Tcp(String, u16),
    /// A Unix socket path.
    Unix(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Addr::Tcp(h, p) => write!(f, "{h}:{p}"),
            Addr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// What a link needs to log in: credentials and database. The password is
/// never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Login {
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: u32,
    pub(crate) name: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The connection failed or timed out. `sent`: the batch was handed to
    /// the socket, so the server may have run it.
    Lost { detail: String, sent: bool },
    /// The server refused the login (a wrong password, an unknown db).
    Login(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(d) => write!(f, "cannot connect: {d}"),
            LinkError::Lost { detail, .. } => write!(f, "connection lost: {detail}"),
            LinkError::Login(d) => write!(f, "login refused: {d}"),
        }
    }
}

impl LinkError {
    /// True when the server may have run the commands.
    pub(crate) fn maybe_ran(&self) -> bool {
        matches!(self, LinkError::Lost { sent: true, .. })
    }
}

type Reply = Result<Vec<Frame>, LinkError>;

/// Called on the core with every frame that answers no command (pub/sub
/// messages on a subscribed link).
pub(crate) type PushHandler = Box<dyn Fn(Frame) + Send>;

/// A handle to one connection, usable from any thread.
pub(crate) struct Link {
    rt: Arc<Runtime>,
    core: usize,
    id: u64,
    dead: Arc<AtomicBool>,
    shut: Shut,
    pub(crate) addr: Addr,
    timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("core", &self.core)
            .field("dead", &self.is_dead())
            .finish()
    }
}

/// A second handle on the socket, to shut it down from any thread.
enum Shut {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Shut {
    fn shutdown(&self) {
        let _ = match self {
            Shut::Tcp(s) => s.shutdown(Shutdown::Both),
            Shut::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The links this core drives.
    static LINKS: RefCell<HashMap<u64, Rc<CoreLink>>> = RefCell::new(HashMap::new());
}

impl Link {
    /// Connects, logs in (AUTH, SELECT, CLIENT SETNAME) with blocking calls
    /// on this thread, then hands the socket to core `core`. Every step is
    /// bounded by `timeout`.
    pub(crate) fn connect(
        rt: &Arc<Runtime>,
        core: usize,
        addr: &Addr,
        login: &Login,
        timeout: Duration,
        push: Option<PushHandler>,
    ) -> Result<Link, LinkError> {
        let connect_err = |e: io::Error| LinkError::Connect(format!("{addr}: {e}"));
        let (fd, shut, core_shut): (OwnedFd, Shut, Shut) = match addr {
            Addr::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut stream = None;
                for sa in (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(connect_err)?
                {
                    match TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let mut s = stream.ok_or_else(|| connect_err(last))?;
                s.set_nodelay(true).map_err(connect_err)?;
                handshake(&mut s, login, timeout, addr)?;
                let shut = Shut::Tcp(s.try_clone().map_err(connect_err)?);
                let core_shut = Shut::Tcp(s.try_clone().map_err(connect_err)?);
                (s.into(), shut, core_shut)
            }
            Addr::Unix(path) => {
                let mut s = UnixStream::connect(path).map_err(connect_err)?;
                handshake(&mut s, login, timeout, addr)?;
                let shut = Shut::Unix(s.try_clone().map_err(connect_err)?);
                let core_shut = Shut::Unix(s.try_clone().map_err(connect_err)?);
                (s.into(), shut, core_shut)
            }
        };
        let id = NEXT_LINK.fetch_add(1, SeqCst);
        let dead = Arc::new(AtomicBool::new(false));
        let fd = Arc::new(fd);
        let core_dead = dead.clone();
        // The driver runs for the link's life; its handle is not kept: a
        // link ends when its socket does.
        let started = rt.spawn(core, move || {
            let link = Rc::new(CoreLink {
                fd,
                shut: core_shut,
                out: RefCell::new(Vec::new()),
                waiting: RefCell::new(VecDeque::new()),
                driver: RefCell::new(None),
                failed: RefCell::new(None),
                dead: core_dead,
                push,
            });
            LINKS.with(|l| l.borrow_mut().insert(id, link.clone()));
            drive(link, id)
        });
        drop(started);
        Ok(Link {
            rt: rt.clone(),
            core,
            id,
            dead,
            shut,
            addr: addr.clone(),
            timeout,
        })
    }

    /// True once the link failed; a new one must be connected.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(SeqCst)
    }

    /// Ends the link: waiting batches fail as lost.
    pub(crate) fn kill(&self) {
        self.dead.store(true, SeqCst);
        self.shut.shutdown();
    }

    /// Sends `cmds` as one batch; the handle resolves with one reply per
    /// command (error replies included, as frames).
    pub(crate) fn call(&self, cmds: Vec<Cmd>) -> JoinHandle<Reply> {
        let id = self.id;
        let timeout = self.timeout;
        self.rt.spawn(self.core, move || submit(id, cmds, timeout))
    }

    /// [`Link::call`] and waits for the replies, at most the link's timeout
    /// (then the link is killed: a late reply must not reach a later batch).
    pub(crate) fn call_wait(&self, cmds: Vec<Cmd>) -> Reply {
        let mut h = self.call(cmds);
        self.finish(&mut h)
    }

    /// Waits for a handle from [`Link::call`] (see [`Link::call_wait`]).
    pub(crate) fn finish(&self, h: &mut JoinHandle<Reply>) -> Reply {
        // The core enforces the timeout too; this bound covers a core that
        // stopped.
        match h.wait_timeout(self.timeout + Duration::from_secs(1)) {
            Some(Ok(r)) => {
                if r.is_err() {
                    self.kill();
                }
                r
            }
            Some(Err(e)) => {
                self.kill();
                Err(rt_lost(e))
            }
            None => {
                self.kill();
                Err(LinkError::Lost {
                    detail: format!("no reply from {} within {:?}", self.addr, self.timeout),
                    sent: true,
                })
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A runtime failure seen by a caller: the batch may have been sent.
pub(crate) fn rt_lost(e: RtError) -> LinkError {
    LinkError::Lost {
        detail: format!("the transport's runtime failed: {e}"),
        sent: true,
    }
}

/// Logs in with blocking calls: `AUTH` (when a password is set), `SELECT`
/// (when the db is not 0) and `CLIENT SETNAME`.
fn handshake<S: Read + Write>(
    s: &mut S,
    login: &Login,
    timeout: Duration,
    addr: &Addr,
) -> Result<(), LinkError>
where
    S: SetTimeouts,
{
    let lost = |e: io::Error| LinkError::Connect(format!("{addr}: {e}"));
    s.set_timeouts(Some(timeout)).map_err(lost)?;
    let mut cmds = Vec::new();
    if let Some(p) = &login.password {
        let mut c = Cmd::new("AUTH");
        if let Some(u) = &login.user {
            c.push(u.clone());
        }
        c.push(p.clone());
        cmds.push(c);
    }
    if login.db != 0 {
        cmds.push(Cmd::new("SELECT").int(i64::from(login.db)));
    }
    if !login.name.is_empty() {
        cmds.push(Cmd::new("CLIENT").arg("SETNAME").arg(login.name.clone()));
    }
    let mut out = Vec::new();
    for c in &cmds {
        c.encode(&mut out);
    }
    s.write_all(&out).map_err(lost)?;
    let mut buf = BytesMut::with_capacity(256);
    let mut chunk = [0u8; 256];
    let mut answered = 0;
    while answered < cmds.len() {
        match resp::decode(&mut buf).map_err(LinkError::Connect)? {
            Some(Frame::Error(e)) => {
                return Err(LinkError::Login(format!("{addr}: {e}")));
            }
            Some(_) => answered += 1,
            None => {
                let n = loop {
                    match s.read(&mut chunk) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r.map_err(lost)?,
                    }
                };
                if n == 0 {
                    return Err(LinkError::Connect(format!(
                        "{addr}: the server closed the connection during login"
                    )));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    // The core's operations wait without a socket timeout.
    s.set_timeouts(None).map_err(lost)?;
    Ok(())
}

/// Socket timeouts for the blocking login.
trait SetTimeouts {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()>;
}

impl SetTimeouts for TcpStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

impl SetTimeouts for UnixStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

/// The core's side of a link.
struct CoreLink {
    fd: Arc<OwnedFd>,
    /// Shuts the socket down when the link fails on the core, so the
    /// `recv` in flight completes.
    shut: Shut,
    /// Encoded commands not yet handed to the socket.
    out: RefCell<Vec<u8>>,
    /// Batches awaiting replies, oldest first.
    waiting: RefCell<VecDeque<Waiting>>,
    /// The driver, woken when `out` gets bytes.
    driver: RefCell<Option<Waker>>,
    /// Why the link died, once it did.
    failed: RefCell<Option<String>>,
    dead: Arc<AtomicBool>,
    push: Option<PushHandler>,
}

struct Waiting {
    want: usize,
    got: Vec<Frame>,
    /// True once the batch's bytes went to the socket.
    sent: bool,
    slot: Rc<Slot>,
}

#[derive(Default)]
struct Slot {
    result: RefCell<Option<Reply>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn complete(&self, r: Reply) {
        *self.result.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

impl CoreLink {
    /// Marks the link dead and fails every waiting batch.
    fn fail(&self, why: String) {
        if self.failed.borrow().is_none() {
            tracing::debug!(reason = %why, "redis link closed");
            *self.failed.borrow_mut() = Some(why.clone());
        }
        self.dead.store(true, SeqCst);
        self.shut.shutdown();
        let waiting: Vec<Waiting> = self.waiting.borrow_mut().drain(..).collect();
        for w in waiting {
            w.slot.complete(Err(LinkError::Lost {
                detail: why.clone(),
                sent: w.sent,
            }));
        }
        self.out.borrow_mut().clear();
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    fn on_frame(&self, frame: Frame) {
        let mut waiting = self.waiting.borrow_mut();
        match waiting.front_mut() {
            Some(w) => {
                w.got.push(frame);
                if w.got.len() == w.want {
                    let w = waiting.pop_front().expect("front exists");
                    drop(waiting);
                    w.slot.complete(Ok(w.got));
                }
            }
            None => {
                drop(waiting);
                match &self.push {
                    Some(p) => p(frame),
                    None => self.fail("a reply that answers no command".into()),
                }
            }
        }
    }
}

/// Appends a batch and waits for its replies (on the link's core).
async fn submit(id: u64, cmds: Vec<Cmd>, timeout: Duration) -> Reply {
    let Some(link) = LINKS.with(|l| l.borrow().get(&id).cloned()) else {
        return Err(LinkError::Lost {
            detail: "the connection is closed".into(),
            sent: false,
        });
    };
    if let Some(why) = link.failed.borrow().clone() {
        return Err(LinkError::Lost {
            detail: why,
            sent: false,
        });
    }
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let slot = Rc::new(Slot::default());
    {
        let mut out = link.out.borrow_mut();
        for c in &cmds {
            c.encode(&mut out);
        }
    }
    link.waiting.borrow_mut().push_back(Waiting {
        want: cmds.len(),
        got: Vec::with_capacity(cmds.len()),
        sent: false,
        slot: slot.clone(),
    });
    if let Some(w) = link.driver.borrow().as_ref() {
        w.wake_by_ref();
    }
    let wait = SlotWait { slot: &slot };
    let timer = rio::sleep(timeout);
    let r = select_first(wait, timer).await;
    match r {
        Some(reply) => reply,
        None => {
            let why = format!("no reply within {timeout:?}");
            link.fail(why.clone());
            slot.result
                .borrow_mut()
                .take()
                .unwrap_or(Err(LinkError::Lost {
                    detail: why,
                    sent: true,
                }))
        }
    }
}

struct SlotWait<'a> {
    slot: &'a Rc<Slot>,
}

impl Future for SlotWait<'_> {
    type Output = Reply;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        if let Some(r) = self.slot.result.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Polls `a` and `b`; `Some` with `a`'s output if it finishes first, `None`
/// if `b` does.
async fn select_first<A: Future, B: Future>(a: A, b: B) -> Option<A::Output> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if b.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

type IoFuture = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;

const READ_CHUNK: usize = 64 << 10;

/// The link's driver: keeps one `recv` in flight, and one `send` whenever
/// there are bytes to send, until the link dies.
async fn drive(link: Rc<CoreLink>, id: u64) {
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut recv: Option<IoFuture> = None;
    let mut send: Option<IoFuture> = None;
    let mut spare: Vec<u8> = Vec::new();
    std::future::poll_fn(|cx| {
        loop {
            if link.failed.borrow().is_some() {
                return Poll::Ready(());
            }
            *link.driver.borrow_mut() = Some(cx.waker().clone());
            let mut progressed = false;
            if send.is_none() {
                let mut out = link.out.borrow_mut();
                if !out.is_empty() {
                    let mut buf = std::mem::take(&mut spare);
                    std::mem::swap(&mut buf, &mut out);
                    drop(out);
                    for w in link.waiting.borrow_mut().iter_mut() {
                        w.sent = true;
                    }
                    let fd = link.fd.clone();
                    send = Some(Box::pin(async move { rio::send(&fd, buf).await }));
                }
            }
            if let Some(f) = send.as_mut() {
                if let Poll::Ready((res, mut buf)) = f.as_mut().poll(cx) {
                    send = None;
                    progressed = true;
                    match res {
                        Ok(n) if n == buf.len() => {
                            buf.clear();
                            spare = buf;
                        }
                        Ok(n) => {
                            // A partial send: the rest goes ahead of
                            // anything appended since.
                            buf.drain(..n);
                            let mut out = link.out.borrow_mut();
                            buf.extend_from_slice(&out);
                            *out = buf;
                        }
                        Err(e) => {
                            link.fail(format!("send: {e}"));
                            continue;
                        }
                    }
                }
            }
            if recv.is_none() {
                let fd = link.fd.clone();
                let buf = vec![0u8; READ_CHUNK];
                recv = Some(Box::pin(async move { rio::recv(&fd, buf).await }));
            }
            if let Some(f) = recv.as_mut() {
                if let Poll::Ready((res, buf)) = f.as_mut().poll(cx) {
                    recv = None;
                    progressed = true;
                    match res {
                        Ok(0) => {
                            link.fail("the server closed the connection".into());
                            continue;
                        }
                        Ok(n) => {
                            input.extend_from_slice(&buf[..n]);
                            loop {
                                match resp::decode(&mut input) {
                                    Ok(Some(frame)) => link.on_frame(frame),
                                    Ok(None) => break,
                                    Err(e) => {
                                        link.fail(e);
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            link.fail(format!("recv: {e}"));
                            continue;
                        }
                    }
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    // In-flight operations keep the descriptor until their completions.
    drop(recv);
    drop(send);
    LINKS.with(|l| l.borrow_mut().remove(&id));
}
