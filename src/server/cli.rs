//! `sqlrsync-server` command line: serve, namespace, keys, verify, backup
//! (the replica commands that look at one replica are in
//! [`super::cli_replica`]; retention, prune and replica delete in
//! [`super::cli_maintenance`]; backup, restore and `replica expect` in
//! [`super::cli_ops`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use super::app::{ServeConfig, run};
use super::keys::{self, KeyKind, PendingKey};
use super::names;
use super::store::{self, Meta, Store};

/// A self-hosted SQLRsync server: keeps every version of the SQLite
/// databases that `sqlrsync` clients push, storing each changed page once,
/// and serves pulls, subscriptions and web pages.
///
/// Quick start:
///
///   sqlrsync-server namespace create acme --data-dir ./data   # prints an admin key
///   sqlrsync-server serve --data-dir ./data --listen 127.0.0.1:8462
///   SQLRSYNC_ADMIN_KEY=<key> sqlrsync ./app.db acme/app.db --server ws://127.0.0.1:8462
#[derive(Debug, Parser)]
#[command(name = "sqlrsync-server", version, about, verbatim_doc_comment)]
pub struct ServerCli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the websocket API (/sapi/push, /sapi/pull, /sapi/subscribe) and the web pages.
    ///
    /// Prints `sqlrsync-server listening on ADDR` on stdout once it accepts
    /// connections (port 0 picks a free port). Logs go to stderr (set
    /// SQLRSYNC_LOG or RUST_LOG, e.g. `debug`). SIGTERM or Ctrl-C stops it
    /// gracefully: running pushes are aborted without storing anything,
    /// pulls are closed, and the store stays consistent.
    Serve(Box<ServeArgs>),
    /// Manage namespaces (each has its own Account Admin keys).
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// List, create and revoke keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Replicas of a namespace: path, visibility, latest version, created,
    /// expected push interval; and setting their visibility and interval.
    #[command(subcommand)]
    Replica(ReplicaCmd),
    /// The versions of a replica: number, time, size, pages changed,
    /// versionHash, message (one line each, newest first).
    Versions {
        /// NS/PATH of the replica.
        path: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Retention policies: which versions to keep, per namespace or replica.
    #[command(subcommand)]
    Retention(super::cli_maintenance::RetentionCmd),
    /// Apply the retention policies now and compact the packs, printing
    /// what was dropped and freed (`--dry-run`: only print). Not while a
    /// server runs: it does this itself (serve --prune-every).
    Prune(super::cli_maintenance::PruneArgs),
    /// Re-read the whole store: every stored page against its checksum and
    /// every version against its versionHash. Exits non-zero on any damage.
    Verify(DataDirArg),
    /// Make a data dir that `serve` refused to start on servable again:
    /// sets aside (in DATA_DIR/lost+found/, never deletes) what the
    /// metadata does not account for, and turns version files newer than
    /// the metadata knows into versions. Not while a server runs.
    Repair(DataDirArg),
    /// Write a consistent copy of the data dir into DEST (a new folder),
    /// also while a server serves it: the metadata, the pack bytes it
    /// references and each replica's latest file, checked as copied.
    Backup {
        #[command(flatten)]
        data: DataDirArg,
        /// The backup's folder; must not exist yet, nor be in the data dir.
        dest: PathBuf,
    },
    /// Make a backup a data dir again: copied into NEWDIR (new or empty),
    /// then checked as `serve` and `verify` check; removed if it fails.
    Restore {
        /// A folder written by `sqlrsync-server backup`.
        backup: PathBuf,
        /// The new data dir.
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// Directory holding everything the server stores.
    #[arg(long, env = "SQLRSYNC_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArg,
    /// Read these settings from a TOML file: each key a flag's long name
    /// (`max-connections = 512`, `listen = ["127.0.0.1:8462"]`); flags and
    /// their environment variables override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines as `text` (coloured only on a terminal) or `json` (one
    /// object per line, for log collectors)
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Address to listen on; may be given several times. `https://ADDR`
    /// serves TLS there (needs --tls-cert), `http://ADDR` plain; a bare ADDR
    /// is TLS when --tls-cert is given. [default: 127.0.0.1:8462]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Vec<ListenSpec>,
    /// PEM certificate chain: serve https:// and wss:// (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most concurrent push and pull sessions; more are refused with 503.
    /// Subscribers and downloads have budgets of their own.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_connections: usize,
    /// Most concurrent subscribers (a few KB of memory each); more are
    /// refused with 503. They never take a push or pull slot.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_subscribers: usize,
    /// Percent of each budget (push and pull sessions, subscribers,
    /// downloads) that one client address may hold (an IPv6 client: its
    /// /64). Behind a reverse proxy every client has the proxy's address:
    /// set 100 there and limit clients at the proxy.
    #[arg(long, default_value_t = 25, value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub address_share: u8,
    /// Most concurrent web downloads; more are refused with 503.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_downloads: usize,
    /// Seconds a web download may wait for its client to take any data
    /// before the connection is closed.
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub download_timeout: u64,
    /// Largest websocket frame accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub max_frame: usize,
    /// Never offer or send frames over 4101 bytes, even to clients that
    /// offer to take them (by default our own client and server agree on
    /// 16 KiB frames; see SERVER.md "Extensions").
    #[arg(long)]
    pub compat_frames: bool,
    /// zstd level for stored pages (0 stores them uncompressed).
    #[arg(long, default_value_t = store::DEFAULT_COMPRESSION, value_name = "LEVEL",
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub compression: i32,
    /// Largest database a client may push (page size x page count), in
    /// bytes or with a binary unit: 512MiB, 64GiB, 1TiB. Larger pushes are
    /// refused when they announce themselves, before any page is stored.
    #[arg(long, default_value = "64GiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_db_size: u64,
    /// Seconds a push or pull may go without a frame in either direction
    /// (and a subscriber without answering the pings) before it is ended.
    #[arg(long, env = "SQLRSYNC_SERVER_IDLE_TIMEOUT", default_value_t = 600, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// Seconds a new connection has to send its HTTP request (and a push
    /// its first frame) before it is closed.
    #[arg(long, default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,
    /// Longest wait, in milliseconds, before checking a key from an address
    /// that sent wrong keys: after 3 wrong keys each check waits 50 ms,
    /// doubling up to this (0: never wait; refusals are still logged in
    /// summary). A right key clears the address's record.
    #[arg(long, default_value_t = 1000, value_name = "MILLIS")]
    pub max_key_delay: u64,
    /// Who may read /metrics (Prometheus text; it names namespaces):
    /// `local` clients on a loopback address, `public` anyone, `off` no
    /// one. /healthz is always served.
    #[arg(long, value_enum, default_value_t = super::metrics::Access::Local, value_name = "WHO")]
    pub metrics: super::metrics::Access,
    /// Dead-man notifications: run this program when a replica with an
    /// expected push interval (`replica expect`) goes that long without a
    /// push, and when pushes resume. Split into words as a shell would,
    /// but run without one; the notice is in SQLRSYNC_NOTIFY_* variables
    #[arg(long, value_name = "CMD", value_parser = super::notify::parse_command)]
    pub notify_command: Option<super::notify::CommandLine>,
    /// Dead-man notifications: POST a JSON notice to this http:// or
    /// https:// URL (see --notify-command)
    #[arg(long, value_name = "URL", value_parser = super::notify::parse_webhook)]
    pub notify_webhook: Option<http::Uri>,
    /// How often the expected push intervals are checked
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub notify_check_every: std::time::Duration,
    /// How often to apply the retention policies (`retention set`) and
    /// compact the packs, e.g. 1h, 30m; `off` never (then only
    /// `sqlrsync-server prune` does, with the server stopped)
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_every)]
    pub prune_every: Every,
}

/// `--prune-every`: a period, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct Every(pub Option<std::time::Duration>);

fn parse_every(s: &str) -> Result<Every, String> {
    if s == "off" {
        return Ok(Every(None));
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("use a period above 0, or `off`".into());
    }
    Ok(Every(Some(d)))
}

/// One `--listen` value.
#[derive(Debug, Clone, Copy)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    /// Some(true) for `https://`, Some(false) for `http://`, None bare.
    pub tls: Option<bool>,
}

fn parse_listen(s: &str) -> Result<ListenSpec, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (Some(true), r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (Some(false), r)
    } else {
        (None, s)
    };
    let addr = rest.trim_end_matches('/').parse().map_err(|_| {
        format!("{s:?} is not an address to listen on (e.g. 127.0.0.1:8462, https://0.0.0.0:443)")
    })?;
    Ok(ListenSpec { addr, tls })
}

/// A size in bytes: digits with an optional K, M, G or T (binary units;
/// `KiB`, `KB` and `K` all mean 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 1048576, 512MiB, 64GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("unknown unit in {s:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// Raises the soft limit on open files to the hard limit: every connection
/// is a descriptor, and the common soft limit of 1024 would let a few
/// hundred idle sockets stop the server from opening its own files.
/// Returns the soft limit now in force.
pub(super) fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                tracing::debug!(
                    from = lim.rlim_cur,
                    to = lim.rlim_max,
                    "raised the open-file limit"
                );
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCmd {
    /// Create a namespace; prints its new Account Admin key alone on the last line.
    Create {
        /// Namespace name: letters, digits, '_' and '-'.
        name: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// List namespaces with their replica counts.
    List {
        #[command(flatten)]
        data: DataDirArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReplicaCmd {
    /// The replicas of a namespace (tab-separated).
    List {
        /// The namespace.
        namespace: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// One replica: path, uid, visibility, created, latest version and its
    /// size, versions, last push and its message, and the keys naming it.
    Show {
        /// NS/PATH of the replica.
        path: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Move a replica to another path of its namespace; its versions and
    /// keys go with it. A running server serves it under the new path from
    /// its next request, and the old path is not found.
    Rename {
        /// NS/PATH of the replica.
        path: String,
        /// NS/NEWPATH: the same namespace, a path no replica has.
        new_path: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Expect a push at least this often (dead-man notification): a server
    /// run with --notify-command or --notify-webhook tells when the
    /// interval passes with no push, once, and again when pushes resume.
    Expect {
        /// NS/PATH of the replica.
        path: String,
        /// The interval (90s, 1h, 1d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration,
              required_unless_present = "off", conflicts_with = "off")]
        every: Option<std::time::Duration>,
        /// No expected interval any more.
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Make a replica private, unlisted or public; effective at once on a
    /// running server.
    Visibility {
        /// NS/PATH of the replica.
        path: String,
        /// private, unlisted or public.
        #[arg(value_parser = ["private", "unlisted", "public"])]
        visibility: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Delete a replica with all its versions and keys (needs --yes); its
    /// stored pages are freed by the next prune.
    Delete(super::cli_maintenance::DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List the keys of a namespace (ids and kinds; keys themselves are never stored).
    List {
        /// The namespace.
        namespace: String,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Create a key; prints it alone on the last line.
    Create {
        /// The namespace.
        namespace: String,
        /// admin, account-pull, replica-push or replica-pull.
        #[arg(long, value_name = "KIND")]
        kind: String,
        /// Remote path of the replica (for replica-push and replica-pull).
        #[arg(long, value_name = "PATH")]
        replica: Option<String>,
        /// A note to tell the key apart in `keys list` (who has it, what for).
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
        /// The key stops working after this long (4h, 30m, 7d), as
        /// sqlrsync.com's admin keys do
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Replace a key: a new one of the same kind, replica and label is
    /// printed, and the old one stops working after the grace period.
    Rotate {
        /// The namespace.
        namespace: String,
        /// Key id or key.
        key: String,
        /// How long the old key keeps working (0 for at once)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Revoke a key, by the id `keys list` shows or by the key itself;
    /// the keys the server minted for sessions it opened go with it.
    Revoke {
        /// The namespace.
        namespace: String,
        /// Key id or key.
        key: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// `4h`, `30m`, `7d`, `0`.
pub(super) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::client::follow::parse_duration(s)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let argv = match super::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sqlrsync-server: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = ServerCli::parse_from(argv);
    // Everything the server writes (versions, packs, key hashes) is for
    // its own user only, whatever umask it was started with.
    // SAFETY: umask only sets the process's file-mode mask.
    unsafe {
        libc::umask(0o077);
    }
    let json_logs = matches!(&cli.command, Command::Serve(a) if a.log_format == "json");
    init_logging(json_logs);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sqlrsync-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: coloured only on a terminal (a file or journald gets
/// plain lines), or JSON lines on request.
fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = std::env::var("SQLRSYNC_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_ansi(colour).try_init()
    };
}

fn dispatch(cli: ServerCli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Namespace(NamespaceCmd::Create { name, data }) => namespace_create(&name, &data),
        Command::Namespace(NamespaceCmd::List { data }) => namespace_list(&data),
        Command::Keys(KeysCmd::List { namespace, data }) => keys_list(&namespace, &data),
        Command::Keys(KeysCmd::Create {
            namespace,
            kind,
            replica,
            label,
            expires,
            data,
        }) => keys_create(&namespace, &kind, replica, label.as_deref(), expires, &data),
        Command::Keys(KeysCmd::Rotate {
            namespace,
            key,
            grace,
            data,
        }) => keys_rotate(&namespace, &key, grace, &data),
        Command::Keys(KeysCmd::Revoke {
            namespace,
            key,
            data,
        }) => keys_revoke(&namespace, &key, &data),
        Command::Replica(ReplicaCmd::List { namespace, data }) => replica_list(&namespace, &data),
        Command::Replica(ReplicaCmd::Show { path, data }) => super::cli_replica::show(&path, &data),
        Command::Replica(ReplicaCmd::Rename {
            path,
            new_path,
            data,
        }) => super::cli_replica::rename(&path, &new_path, &data),
        Command::Replica(ReplicaCmd::Visibility {
            path,
            visibility,
            data,
        }) => {
            let meta = Store::open_meta(&data.data_dir)?;
            let r = meta
                .replica(&path)?
                .with_context(|| format!("no replica {path}"))?;
            meta.set_visibility(r.id, &visibility)?;
            println!("{path} is {visibility} (was {})", r.visibility);
            Ok(ExitCode::SUCCESS)
        }
        Command::Replica(ReplicaCmd::Delete(a)) => super::cli_maintenance::delete(a),
        Command::Retention(c) => super::cli_maintenance::retention(c),
        Command::Prune(a) => super::cli_maintenance::prune(a),
        Command::Versions { path, data } => versions_list(&path, &data),
        Command::Verify(d) => verify(&d),
        Command::Repair(d) => repair(&d),
        Command::Backup { data, dest } => super::cli_ops::backup(&data.data_dir, &dest),
        Command::Restore { backup, data } => super::cli_ops::restore(&backup, &data.data_dir),
        Command::Replica(ReplicaCmd::Expect {
            path, every, data, ..
        }) => super::cli_ops::expect(&path, every, &data.data_dir),
    }
}

fn repair(d: &DataDirArg) -> Result<ExitCode> {
    if !Meta::exists(&d.data_dir) {
        bail!("{} holds no sqlrsync-server store", d.data_dir.display());
    }
    let (report, remaining) = Store::repair(&d.data_dir)?;
    for f in &report.set_aside {
        println!("set aside: {f}");
    }
    if let Some(lf) = &report.lost_found {
        println!("set-aside files are in {}", lf.display());
    }
    for a in &report.adopted {
        println!("rebuilt: {a}");
    }
    for u in &report.unresolved {
        println!("NOT FIXED: {u}");
    }
    if remaining.is_clean() {
        println!("the store is consistent; `sqlrsync-server serve` will start");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &remaining.items {
            println!("STILL: {f}");
        }
        println!("the store still does not match its metadata");
        Ok(ExitCode::FAILURE)
    }
}

fn namespace_create(name: &str, data: &DataDirArg) -> Result<ExitCode> {
    names::validate_namespace(name).map_err(anyhow::Error::msg)?;
    let meta = Store::open_meta(&data.data_dir)?;
    let admin = PendingKey::new(KeyKind::Admin, name, None);
    if !meta.create_namespace(name, &admin.record())? {
        bail!("namespace {name} already exists");
    }
    println!("created namespace {name}; its Account Admin key (shown once, keep it secret):");
    println!("{}", admin.key);
    Ok(ExitCode::SUCCESS)
}

fn namespace_list(data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    for n in meta.namespaces()? {
        println!("{}\t{} replicas\tcreated {}", n.name, n.replicas, n.created);
    }
    Ok(ExitCode::SUCCESS)
}

fn replica_list(namespace: &str, data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    ensure_namespace(&meta, namespace)?;
    println!("PATH\tVISIBILITY\tLATEST\tCREATED\tEXPECTED");
    let expected = super::cli_ops::expected_column(&meta)?;
    for r in meta.replicas_of(namespace)? {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            r.path,
            r.visibility,
            r.latest,
            r.created,
            expected(r.id)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn versions_list(path: &str, data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    let r = meta
        .replica(path)?
        .with_context(|| format!("no replica {path}"))?;
    println!("VERSION\tCREATED\tBYTES\tPAGES CHANGED\tVERSIONHASH\tMESSAGE");
    for v in meta.versions(&r)? {
        // A message may hold anything a client sent: one visible line.
        let mut message = crate::wire::one_line(&v.message).replace('\t', " ");
        if let Some(p) = &v.pruned {
            message = format!("[pruned {} by {}] {message}", p.at, p.reason);
        }
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            v.number,
            v.created,
            v.size(),
            v.changed_pages,
            v.version_hash,
            if message.is_empty() { "-" } else { &message }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn keys_list(namespace: &str, data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    ensure_namespace(&meta, namespace)?;
    println!("ID\tKIND\tREPLICA\tCREATED\tLAST USED\tMINTED BY\tLABEL\tSTATUS");
    for (k, path) in keys::list(&meta, namespace)? {
        let minted = match (k.minted_by, &k.minted_on) {
            (Some(by), Some(on)) => format!("key {by} on a {on}"),
            (Some(by), None) => format!("key {by}"),
            _ => "-".into(),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            k.id,
            k.kind.as_str(),
            path.as_deref().unwrap_or("-"),
            k.created,
            k.last_used.as_deref().unwrap_or("never"),
            minted,
            k.label.as_deref().unwrap_or("-"),
            match &k.revoked {
                None => "active".to_string(),
                Some(t) if keys::revoked_by_now(&k.revoked) => format!("revoked {t}"),
                Some(t) => format!("expires {t}"),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn keys_create(
    namespace: &str,
    kind: &str,
    replica: Option<String>,
    label: Option<&str>,
    expires: Option<std::time::Duration>,
    data: &DataDirArg,
) -> Result<ExitCode> {
    let kind = KeyKind::parse(kind).with_context(|| {
        format!("unknown key kind {kind:?}: use admin, account-pull, replica-push or replica-pull")
    })?;
    let meta = Store::open_meta(&data.data_dir)?;
    ensure_namespace(&meta, namespace)?;
    let replica_id = match (kind, replica) {
        (KeyKind::ReplicaPush | KeyKind::ReplicaPull, Some(p)) => {
            let r = meta
                .replica(&p)?
                .with_context(|| format!("no replica {p}"))?;
            if r.namespace != namespace {
                bail!("replica {p} is not in namespace {namespace}");
            }
            Some(r.id)
        }
        (KeyKind::ReplicaPush | KeyKind::ReplicaPull, None) => {
            bail!("a {} key needs --replica PATH", kind.as_str())
        }
        (_, Some(_)) => bail!("--replica is only for replica-push and replica-pull keys"),
        (_, None) => None,
    };
    let key = keys::create(&meta, kind, namespace, replica_id, label)?;
    if let Some(after) = expires {
        let id = keys::id_of(&meta, &key)?.context("the new key is gone")?;
        let at = keys::expire(&meta, namespace, id, after)?;
        eprintln!("key {id} expires {at}");
    }
    println!("new {} key for {namespace} (shown once):", kind.as_str());
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}

/// `keys rotate`: a new key like the old, and the old one's end.
fn keys_rotate(
    namespace: &str,
    key: &str,
    grace: std::time::Duration,
    data: &DataDirArg,
) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    ensure_namespace(&meta, namespace)?;
    let id = key_id(&meta, key)?;
    let (old, _) = keys::list(&meta, namespace)?
        .into_iter()
        .find(|(k, _)| k.id == id && !keys::revoked_by_now(&k.revoked))
        .with_context(|| format!("no active key {id} in namespace {namespace}"))?;
    let kind = old.kind;
    let fresh = keys::create(&meta, kind, namespace, old.replica, old.label.as_deref())?;
    let at = keys::expire(&meta, namespace, id, grace)?;
    println!("new {} key for {namespace} (shown once):", kind.as_str());
    println!("{fresh}");
    eprintln!("key {id} stops working at {at}");
    Ok(ExitCode::SUCCESS)
}

/// A key named by the id `keys list` shows, or by the key itself.
fn key_id(meta: &Meta, key: &str) -> Result<i64> {
    match key.parse::<i64>() {
        Ok(id) => Ok(id),
        Err(_) => keys::id_of(meta, key)?.context("no such key"),
    }
}

fn keys_revoke(namespace: &str, key: &str, data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    ensure_namespace(&meta, namespace)?;
    let id = key_id(&meta, key)?;
    match keys::revoke(&meta, namespace, id)? {
        1 => println!("revoked key {id}"),
        n => println!("revoked key {id} and {} keys minted from it", n - 1),
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(d: &DataDirArg) -> Result<ExitCode> {
    if !Meta::exists(&d.data_dir) {
        bail!("{} holds no sqlrsync-server store", d.data_dir.display());
    }
    // Read-only: verify may run next to a live server.
    let store = Store::open_read_only(&d.data_dir)?;
    let (damage, counts) = store.verify()?;
    for line in &damage {
        println!("DAMAGE: {line}");
    }
    println!(
        "checked {} stored pages, {} replicas, {} versions: {}",
        counts.pages,
        counts.replicas,
        counts.versions,
        if damage.is_empty() {
            "no damage".to_string()
        } else {
            format!("{} problems", damage.len())
        }
    );
    Ok(if damage.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ensure_namespace(meta: &Meta, ns: &str) -> Result<()> {
    if !meta.namespace_exists(ns)? {
        bail!("no namespace {ns}");
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Extract the helper now, so a broken install fails at start, not mid-push.
        crate::helper::path().context("extracting the embedded sqlite3_rsync helper")?;
        let tls = a.tls_cert.zip(a.tls_key);
        let listeners = bind_all(&a.listen, tls.is_some())?;
        let files = raise_open_file_limit();
        // A session is a socket (a push or pull also the helper's pipes
        // and files): a budget the descriptors cannot hold fails as
        // accept errors under load, so say so now.
        let sessions = a.max_connections * 4 + a.max_subscribers + a.max_downloads * 2;
        if files < sessions as u64 + 64 {
            tracing::warn!(
                open_files = files,
                "the open-file limit is below what --max-connections, --max-subscribers and \
--max-downloads may use; raise it (ulimit -Hn, LimitNOFILE=)"
            );
        }
        let config = ServeConfig {
            tls,
            max_sessions: a.max_connections.max(1),
            max_subscribers: a.max_subscribers.max(1),
            address_share: a.address_share,
            max_downloads: a.max_downloads.max(1),
            download_timeout: std::time::Duration::from_secs(a.download_timeout),
            max_frame: a.max_frame.max(64 * 1024),
            large_frames: !a.compat_frames,
            compression: a.compression,
            max_db_bytes: a.max_db_size,
            idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
            handshake_timeout: std::time::Duration::from_secs(a.handshake_timeout),
            max_key_delay: std::time::Duration::from_millis(a.max_key_delay),
            metrics: a.metrics,
            prune_every: a.prune_every.0,
            notify: super::notify::NotifyConfig {
                command: a.notify_command,
                webhook: a.notify_webhook,
                check_every: a
                    .notify_check_every
                    .max(std::time::Duration::from_millis(10)),
                ..super::notify::NotifyConfig::new()
            },
            ..ServeConfig::new(a.data.data_dir)
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let shown: Vec<String> = listeners
            .iter()
            .map(|l| {
                let scheme = if l.tls { "https" } else { "http" };
                format!(
                    "{scheme}://{}",
                    l.tcp
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                )
            })
            .collect();
        let mut server = tokio::spawn(run(listeners, config, shutdown_signal()?, ready_tx));
        // Announce only once the store opened and the server accepts.
        tokio::select! {
            r = ready_rx => if r.is_err() {
                // Dropped without a word: the server stopped; say why.
                return server.await?.map(|_| ExitCode::FAILURE);
            },
            r = &mut server => return r?.map(|_| ExitCode::FAILURE),
        }
        for l in &shown {
            println!("sqlrsync-server listening on {l}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        server.await??;
        Ok(ExitCode::SUCCESS)
    })
}

/// Binds every `--listen` address (the default one when none is given);
/// any that cannot be bound, or TLS without a certificate, is one line.
fn bind_all(specs: &[ListenSpec], have_tls: bool) -> Result<Vec<super::app::Listener>> {
    let default = [ListenSpec {
        addr: "127.0.0.1:8462".parse().expect("a valid address"),
        tls: None,
    }];
    let specs = if specs.is_empty() {
        &default[..]
    } else {
        specs
    };
    let mut out = Vec::new();
    for s in specs {
        let tls = s.tls.unwrap_or(have_tls);
        if tls && !have_tls {
            bail!("--listen https://{} needs --tls-cert and --tls-key", s.addr);
        }
        let tcp = std::net::TcpListener::bind(s.addr)
            .with_context(|| format!("cannot listen on {}", s.addr))?;
        out.push(super::app::Listener { tcp, tls });
    }
    Ok(out)
}

/// SIGTERM or Ctrl-C. The handlers are installed before this returns (not
/// on first poll), so a signal right after the "listening" line is caught.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
