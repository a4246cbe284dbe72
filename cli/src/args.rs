//! The command contract. Other tools and scripts rely on these exact names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "dashi",
    version,
    about = "Publish, consume, inspect and benchmark dashi queues",
    after_help = "URLs: memory://[NAME], with ?max_body_size=, prefetch_count=, prefetch_bytes=, visibility_timeout="
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish messages (declaring the exchange, queue and binding named).
    Publish(PublishArgs),
    /// Consume messages and print them.
    Consume(ConsumeArgs),
    /// Show queue depths by lane, bytes, unacked, consumers and counters.
    Stat(StatArgs),
    /// Drop every ready message of a queue.
    Purge(PurgeArgs),
    /// Measure throughput and latency, optionally next to peers.
    Bench(BenchArgs),
    /// A bench consumer in its own process (run by `bench --consumer-processes`).
    #[command(hide = true)]
    BenchConsumer(BenchConsumerArgs),
    /// Run producers and consumers under seeded faults (processes killed,
    /// connections cut) and audit that nothing confirmed was lost or
    /// delivered twice unmarked.
    Torture(TortureArgs),
    /// A torture producer or consumer in its own process (run by `torture`).
    #[command(hide = true)]
    TortureChild(TortureChildArgs),
    /// The filesystem that loses power (run by `torture --faults power-loss`).
    #[command(hide = true)]
    TortureFs(TortureFsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TortureArgs {
    /// Transport URL (memory:// runs its producers and consumers as threads
    /// of this process; the others as child processes).
    pub(crate) url: String,
    /// How long faults are injected; then the queue is drained and audited.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub(crate) seconds: u64,
    /// Seed of the fault schedule and of every worker's choices (default:
    /// from the clock; printed either way).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Producers at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) producers: u32,
    /// Consumers at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) consumers: u32,
    /// Faults to inject, comma-separated: kill (SIGKILL a worker process and
    /// start another; on memory:// a worker drops its connection mid-work),
    /// and on redis:// also client-kill (CLIENT KILL every client), pause
    /// (CLIENT PAUSE WRITE past the timeouts), script-flush (SCRIPT FLUSH);
    /// on local:// power-loss (every process killed at once and every write
    /// not covered by a completed fdatasync discarded: the store's directory
    /// is a FUSE filesystem over DIR.disk that drops them; needs root).
    #[arg(long, default_value = "kill")]
    pub(crate) faults: String,
    /// power-loss: the share (0 to 1) of written but unsynced 512-byte
    /// sectors that reach the disk at a cut, chosen by the seed (0: all lost,
    /// as LazyFS; above 0: torn pages, sectors old and new).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub(crate) power_loss_keep: f64,
    /// Aim half the kills at named points, comma-separated: a worker is
    /// armed for the point, stops when it gets there, and is killed there.
    /// The workers' own (any transport): mid-pipeline (publishes handed
    /// over, no confirm waited for), confirmed-unsaid, delivered-unsaid,
    /// before-ack; on local://, in a build with the failpoints feature, the
    /// log protocol's: segment::reserved, segment::named, segment::written,
    /// lane::write_segment_mapped, lane::rotating, durability::sync (a group
    /// commit about to fdatasync), and in consumers lane::claimed (a claim
    /// made and counted, the rest of its run not) and
    /// lane::settled_uncounted (an ack made, the unacked figure not yet
    /// moved); `all` for every one the run can reach.
    #[arg(long, default_value = "")]
    pub(crate) kill_points: String,
    /// Churn workers: processes (threads on memory://) that declare, fill,
    /// read and delete queues of their own beside the torture queue, over
    /// and over, killed like the others.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub(crate) churn: u32,
    /// Mean time between two faults, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) fault_interval_ms: u64,
    /// Body size in bytes (at least 32: the body carries its id and a
    /// pattern the consumer checks).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(32..=16_777_216))]
    pub(crate) size: u32,
    /// Publishes in flight per producer (confirms waited for together).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub(crate) pipeline: u32,
    /// Queue to use (declared with priorities 0..=2).
    #[arg(long, default_value = "dashi-torture")]
    pub(crate) queue: String,
    /// Longest wait, after the faults stop, for every confirmed message to
    /// be delivered (redis:// restores a dead consumer's deliveries after
    /// its visibility_timeout).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) drain_seconds: u64,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TortureChildArgs {
    pub(crate) url: String,
    #[arg(long)]
    pub(crate) role: String,
    #[arg(long)]
    pub(crate) tag: String,
    #[arg(long)]
    pub(crate) seed: u64,
    #[arg(long)]
    pub(crate) queue: String,
    #[arg(long)]
    pub(crate) size: u32,
    #[arg(long)]
    pub(crate) pipeline: u32,
    /// The torture process's pid: the worker ends when its parent is no
    /// longer this one (compared, not assumed to be 1: in a container the
    /// torture process may be pid 1, and an orphan may go to a subreaper).
    #[arg(long)]
    pub(crate) parent: u32,
}

#[derive(Debug, Args)]
pub(crate) struct TortureFsArgs {
    /// The directory that keeps what survives.
    #[arg(long)]
    pub(crate) backing: PathBuf,
    /// Where to mount.
    #[arg(long)]
    pub(crate) mount: PathBuf,
    #[arg(long, value_parser = parse_share)]
    pub(crate) keep: f64,
    #[arg(long)]
    pub(crate) seed: u64,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

#[derive(Debug, Args)]
pub(crate) struct BenchConsumerArgs {
    pub(crate) url: String,
    #[arg(long)]
    pub(crate) queue: String,
}

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    Direct,
    Topic,
    Fanout,
    Headers,
}

impl From<Kind> for dashi::ExchangeKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Direct => dashi::ExchangeKind::Direct,
            Kind::Topic => dashi::ExchangeKind::Topic,
            Kind::Fanout => dashi::ExchangeKind::Fanout,
            Kind::Headers => dashi::ExchangeKind::Headers,
        }
    }
}

/// What the exchange / queue / binding flags of publish and consume name.
#[derive(Debug, Clone, Args)]
pub(crate) struct Topology {
    /// Exchange to declare and use (default: the default exchange "").
    #[arg(long)]
    pub(crate) exchange: Option<String>,
    /// Exchange type.
    #[arg(
        long = "type",
        value_enum,
        default_value = "direct",
        requires = "exchange"
    )]
    pub(crate) kind: Kind,
    /// Highest priority of the queue (0..=255).
    #[arg(long)]
    pub(crate) max_priority: Option<u8>,
    /// Binding key of the queue on the exchange.
    #[arg(long, requires = "exchange")]
    pub(crate) binding_key: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Transport URL.
    pub(crate) url: String,
    #[command(flatten)]
    pub(crate) topology: Topology,
    /// Routing key (default: the queue name with the default exchange, else "").
    #[arg(long)]
    pub(crate) routing_key: Option<String>,
    /// Queue to declare (and bind to --exchange).
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Priority of each message (higher = more urgent).
    #[arg(long)]
    pub(crate) priority: Option<u8>,
    /// How many messages.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u64,
    /// Body of this many bytes.
    #[arg(long, group = "payload")]
    pub(crate) size: Option<usize>,
    /// Body text.
    #[arg(long, group = "payload")]
    pub(crate) body: Option<String>,
    /// Body read from a file.
    #[arg(long, group = "payload")]
    pub(crate) body_file: Option<PathBuf>,
    /// Header K=V (repeatable).
    #[arg(long = "header", value_name = "K=V")]
    pub(crate) headers: Vec<String>,
    /// Content type.
    #[arg(long)]
    pub(crate) content_type: Option<String>,
    /// Fail when no queue takes the message.
    #[arg(long)]
    pub(crate) mandatory: bool,
    /// Publishes awaiting their confirm at once (1 = each publish waits for
    /// its own; more lets many share one sync).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub(crate) pipeline: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").args(["ack", "no_ack", "reject", "requeue", "leave_unacked"])))]
pub(crate) struct ConsumeArgs {
    /// Transport URL.
    pub(crate) url: String,
    /// Queue to consume (declared if missing).
    #[arg(long)]
    pub(crate) queue: String,
    #[command(flatten)]
    pub(crate) topology: Topology,
    /// Stop after this many messages (0 = until --timeout).
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    pub(crate) timeout: Option<f64>,
    /// Prefetch window in messages.
    #[arg(long)]
    pub(crate) prefetch: Option<u32>,
    /// Ack each message (the default).
    #[arg(long)]
    pub(crate) ack: bool,
    /// Consume in no-ack mode.
    #[arg(long)]
    pub(crate) no_ack: bool,
    /// Reject each message without requeue (dead-letter).
    #[arg(long)]
    pub(crate) reject: bool,
    /// Reject each message with requeue.
    #[arg(long)]
    pub(crate) requeue: bool,
    /// Exit without acking and without closing the channel, as a crashed
    /// consumer would.
    #[arg(long)]
    pub(crate) leave_unacked: bool,
    /// One JSON object per message per line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatArgs {
    /// Transport URL.
    pub(crate) url: String,
    /// Only this queue.
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Transport URL.
    pub(crate) url: String,
    /// Queue to purge.
    #[arg(long)]
    pub(crate) queue: String,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Transport URL.
    pub(crate) url: String,
    /// Messages in all.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) messages: u64,
    /// Body size in bytes (at least 8: the send time rides in the body).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Producer threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) producers: usize,
    /// Consumer threads.
    #[arg(long, default_value_t = 1)]
    pub(crate) consumers: usize,
    /// Priority levels used round-robin (1 = no priorities, up to 256).
    #[arg(long, default_value_t = 1)]
    pub(crate) priorities: u16,
    /// Also run the peers and limits that fit the transport, in this run.
    #[arg(long)]
    pub(crate) compare: bool,
    /// Run each consumer in its own process (for transports shared between
    /// processes, e.g. local://).
    #[arg(long)]
    pub(crate) consumer_processes: bool,
    /// Publishes each producer keeps awaiting their confirm (1 = the
    /// synchronous publish, each waiting for its own confirm).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub(crate) pipeline: u32,
    /// Publish at this many messages per second in all (default: as fast as
    /// possible). A paced run measures wake-up latency rather than backlog.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub(crate) rate: Option<f64>,
    /// Publish every message first, then consume and ack them all, and
    /// report each phase's rate (latency then includes the wait in the
    /// queue). Peers run the same two phases.
    #[arg(long, conflicts_with = "rate")]
    pub(crate) phases: bool,
    /// JSON output.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write an SVG chart of throughput and latency here.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
}
