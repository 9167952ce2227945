//! The `eventstore` command as a library: the generic subcommands (run, migrate, append,
//! read, tail, rebuild, replay, stats, groups) for any database, and [`main`], through which
//! an application builds its own daemon binary with its own projections:
//!
//! ```no_run
//! # mod my_read_models {
//! #     pub struct Projection;
//! #     impl pg_eventstore_client::projection::Projection for Projection {
//! #         fn name(&self) -> &str { "mine" }
//! #         fn event_types(&self) -> Vec<String> { vec![] }
//! #         fn schema(&self) -> &str { "mine" }
//! #         fn tables(&self) -> Vec<String> { vec![] }
//! #         fn apply<'a>(&'a self, _: &'a mut sqlx::PgConnection, _: &'a str, _: &'a [pg_eventstore_client::RecordedEvent])
//! #             -> futures_util::future::BoxFuture<'a, Result<(), pg_eventstore_client::projection::ApplyError>> { Box::pin(async { Ok(()) }) }
//! #     }
//! #     pub fn migrations() -> refinery::Runner { refinery::Runner::new(&[]) }
//! # }
//! use pg_eventstore_cli::App;
//!
//! fn main() -> std::process::ExitCode {
//!     pg_eventstore_cli::main(
//!         App::new("my-daemon")
//!             .projection(my_read_models::Projection)
//!             .migrations(my_read_models::migrations, "my_read_models_history"),
//!     )
//! }
//! ```
#![deny(missing_docs)]

mod output;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use pg_eventstore_client::notifier;
use pg_eventstore_client::projection::{
    self, Daemon, DaemonOptions, Progress, Projection, ReplayUntil,
};
use pg_eventstore_client::{
    AppliedMigration, EventData, EventStore, ExpectedVersion, Install, ReadAllOptions,
    ReadStreamOptions, SubscriptionOptions,
};
use tracing_subscriber::EnvFilter;

/// What can go wrong in a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something that cannot be done (before any database work).
    #[error("{0}")]
    Usage(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] pg_eventstore_client::Error),
    /// The gRPC server could not start or failed.
    #[error(transparent)]
    Serve(#[from] pg_eventstore_server::ServeError),
}

/// A command's result.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// The options every subcommand takes.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// The database, as postgres://user@host:port/database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = false)]
    pub database_url: Option<String>,
}

/// The generic subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the projection daemon until SIGINT or SIGTERM: catch every projection up, then
    /// follow the log. Several daemons may run; each projection runs in one of them at a
    /// time, and another takes over when that one stops or dies.
    Run(RunArgs),
    /// Apply the migrations not yet applied: the store's (the extension, the projection
    /// checkpoints), then this program's read models. A database without the store gets
    /// the extension when the server offers it (pg_available_extensions), and the portable
    /// form (plain SQL and PL/pgSQL, installed by the database's owner) otherwise.
    Migrate(MigrateArgs),
    /// Append events to a stream.
    Append(AppendArgs),
    /// Print events of a stream, a category or the global log.
    Read(ReadArgs),
    /// Print events as they are appended, until Ctrl-C.
    Tail(TailArgs),
    /// Empty a projection's tables and apply the log from the start, with a progress bar.
    Rebuild(RebuildArgs),
    /// Build a projection's tables as they were at a position or a time into a separate
    /// schema, leaving the live tables untouched.
    Replay(ReplayArgs),
    /// Print streams, events, each projection's position, lag and failure, the groups, and
    /// the oldest transaction in flight.
    Stats(StatsArgs),
    /// List persistent subscription groups, or inspect and settle their parked events.
    Groups(GroupsArgs),
    /// Print the portable install script (plain SQL and PL/pgSQL, for servers where the
    /// extension cannot be installed), as committed in sql/portable/.
    PortableSql,
    /// Send the portable form's wake-ups until SIGINT or SIGTERM: poll the readable head and
    /// NOTIFY eventstore when it moved, at most once per interval. `run` does this too.
    /// Several may run; one notifies, the others stand by. Exits at once where the
    /// extension sends the wake-ups itself.
    Notify(NotifyArgs),
    /// Serve EventStoreDB's (KurrentDB's) gRPC protocol until SIGINT or SIGTERM, so that
    /// applications written against its clients use this database unchanged
    /// (esdb://127.0.0.1:2113?tls=false, or esdb://role:password@…?tls=true with --tls-cert
    /// and --tls-key, where each call runs as its PostgreSQL role). Runs
    /// the portable form's notifier where needed. The same port serves the stream browser
    /// (http://127.0.0.1:2113/ui), /metrics and /health.
    Serve(ServeArgs),
}

/// The options of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The address and port to listen on.
    #[arg(long, default_value = pg_eventstore_server::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// Listen on an address other than loopback without TLS, where nothing authenticates
    /// callers (over TLS, every call carries a PostgreSQL role and its password).
    #[arg(long)]
    insecure: bool,
    /// Serve over TLS (esdb://…?tls=true) with this PEM certificate chain; needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Do not serve the stream browser's pages (/metrics and /health stay).
    #[arg(long)]
    no_ui: bool,
}

/// The options of `notify`.
#[derive(Args)]
pub struct NotifyArgs {
    /// Milliseconds between reads of the head (and so at most one NOTIFY per interval).
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
}

/// The options of `migrate`.
#[derive(Args)]
pub struct MigrateArgs {
    /// Install the portable form even where the extension is available.
    #[arg(long, conflicts_with = "to_extension")]
    portable: bool,
    /// Move a database that has the portable form to the extension, keeping every event,
    /// position, group and checkpoint (in one transaction; needs a superuser, and writers
    /// stopped). Then apply the pending migrations.
    #[arg(long)]
    to_extension: bool,
}

/// The options of `run`.
#[derive(Args)]
pub struct RunArgs {
    /// Run only these projections (default: all of this binary's).
    #[arg(long = "projection", value_name = "NAME")]
    projections: Vec<String>,
    /// Events read per round trip while catching up (for a projection that folds its rows
    /// in memory, as the shop's does; otherwise also the events applied per transaction).
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,
    /// Seconds a catching-up daemon folds events in memory before it writes them and the
    /// checkpoint in one transaction; 0 writes after every batch.
    #[arg(long, default_value_t = 5.0)]
    write_every: f64,
    /// Seconds between attempts to take over a projection another daemon runs.
    #[arg(long, default_value_t = 2.0)]
    takeover_interval: f64,
    /// Seconds between re-reads without a wake-up.
    #[arg(long, default_value_t = 1.0)]
    poll_interval: f64,
    /// Seconds before a failing event is tried again (doubling up to a minute).
    #[arg(long, default_value_t = 5.0)]
    retry_interval: f64,
    /// The name recorded as the projections' owner (default: hostname:pid).
    #[arg(long)]
    owner: Option<String>,
    /// Apply pending migrations before starting.
    #[arg(long)]
    migrate: bool,
}

/// The options of `append`.
#[derive(Args)]
pub struct AppendArgs {
    /// The stream, e.g. order-42.
    stream: String,
    /// The event type (with --data), e.g. order-placed.
    #[arg(
        long = "type",
        value_name = "TYPE",
        requires = "data",
        conflicts_with = "events"
    )]
    event_type: Option<String>,
    /// The event's data, as JSON.
    #[arg(long, requires = "event_type")]
    data: Option<String>,
    /// The event's metadata, a JSON object.
    #[arg(long, requires = "event_type")]
    metadata: Option<String>,
    /// The event's id (default: a new UUID).
    #[arg(long, requires = "event_type")]
    id: Option<uuid::Uuid>,
    /// Several events at once, a JSON array of {"type", "data", "metadata"?, "id"?}.
    #[arg(long, conflicts_with = "event_type")]
    events: Option<String>,
    /// any, no-stream, stream-exists, or the stream's last version.
    #[arg(long, default_value = "any")]
    expected_version: String,
}

/// The options of `read`.
#[derive(Args)]
pub struct ReadArgs {
    /// Read this stream.
    #[arg(long, conflicts_with = "category")]
    stream: Option<String>,
    /// Read this category (the streams CATEGORY-*).
    #[arg(long)]
    category: Option<String>,
    /// Global log and categories: start after this position.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Streams: start at this version.
    #[arg(long)]
    from_version: Option<u64>,
    /// Streams: newest first.
    #[arg(long, requires = "stream")]
    backwards: bool,
    /// Only these event types (comma-separated).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// The options of `tail`.
#[derive(Args)]
pub struct TailArgs {
    /// Follow this stream.
    #[arg(long, conflicts_with = "category")]
    stream: Option<String>,
    /// Follow this category.
    #[arg(long)]
    category: Option<String>,
    /// Only these event types (comma-separated).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Start after this position (default: the head, so only new events).
    #[arg(long, conflicts_with = "from_start")]
    after: Option<u64>,
    /// Start from the beginning of the log.
    #[arg(long)]
    from_start: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// The options of `rebuild`.
#[derive(Args)]
pub struct RebuildArgs {
    /// The projection.
    projection: String,
    /// Events applied per transaction.
    #[arg(long, default_value_t = projection::REBUILD_BATCH_SIZE)]
    batch_size: u32,
    /// Ask nothing: the tables are emptied at once.
    #[arg(long, short)]
    yes: bool,
}

/// The options of `replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// The projection.
    projection: String,
    /// The schema to build the tables in (created; must not exist unless --replace).
    #[arg(long)]
    schema: String,
    /// Apply events through this global position.
    #[arg(long, conflicts_with = "time", required_unless_present = "time")]
    position: Option<u64>,
    /// Apply events through the last one recorded at or before this time (RFC 3339, e.g.
    /// 2026-11-23T10:15:00Z).
    #[arg(long)]
    time: Option<DateTime<Utc>>,
    /// Drop the schema first if it exists.
    #[arg(long)]
    replace: bool,
    /// Events applied per statement batch.
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,
}

/// The options of `stats`.
#[derive(Args)]
pub struct StatsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// How events and stats are printed.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Aligned text for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// `eventstore groups`.
#[derive(Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    action: Option<GroupAction>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    format: Format,
}

#[derive(Subcommand)]
enum GroupAction {
    /// Every group with its position, in-flight, parked and lag counts (the default).
    List,
    /// The parked events of a group, with their reasons.
    Parked {
        /// The group.
        group: String,
    },
    /// Give parked events back to the group (all, or those at --position).
    ReplayParked {
        /// The group.
        group: String,
        /// Only the events at these positions (comma-separated).
        #[arg(long = "position", value_delimiter = ',')]
        positions: Vec<u64>,
    },
    /// Delete parked events (all, or those at --position).
    DropParked {
        /// The group.
        group: String,
        /// Only the events at these positions (comma-separated).
        #[arg(long = "position", value_delimiter = ',')]
        positions: Vec<u64>,
    },
}

/// The generic command line: global options and a [`Command`].
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// A migration set of the program's read models.
#[derive(Clone, Copy)]
struct MigrationSet {
    runner: fn() -> refinery::Runner,
    history_table: &'static str,
}

/// What a daemon binary runs: its projections and their migrations.
#[derive(Clone)]
pub struct App {
    name: String,
    projections: Vec<Arc<dyn Projection>>,
    migrations: Vec<MigrationSet>,
}

impl App {
    /// A program named `name` (its `--help` and messages use it), with no projections yet.
    /// Its migrations start with those of `serve` (the persistent subscriptions' table).
    pub fn new(name: impl Into<String>) -> App {
        App {
            name: name.into(),
            projections: Vec::new(),
            migrations: vec![MigrationSet {
                runner: pg_eventstore_server::migrations,
                history_table: pg_eventstore_server::HISTORY_TABLE,
            }],
        }
    }

    /// Runs `projection` in the daemon, and lets rebuild, replay and stats name it.
    #[must_use]
    pub fn projection(mut self, projection: impl Projection) -> App {
        self.projections.push(Arc::new(projection));
        self
    }

    /// Applies this migration set (`refinery::embed_migrations!`'s `migrations::runner`)
    /// after the store's, recording it in `history_table`.
    #[must_use]
    pub fn migrations(
        mut self,
        runner: fn() -> refinery::Runner,
        history_table: &'static str,
    ) -> App {
        self.migrations.push(MigrationSet {
            runner,
            history_table,
        });
        self
    }

    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies the store's migrations, then the program's; returns what was applied, each
    /// with the history table of its set.
    pub async fn migrate(
        &self,
        store: &EventStore,
        install: Install,
    ) -> Result<Vec<(&'static str, AppliedMigration)>> {
        let mut applied: Vec<_> = store
            .migrate_with(install)
            .await?
            .into_iter()
            .map(|migration| (pg_eventstore_client::HISTORY_TABLE, migration))
            .collect();
        applied.extend(self.migrate_application(store).await?);
        Ok(applied)
    }

    /// Applies this program's own migration sets (the read models), not the store's.
    async fn migrate_application(
        &self,
        store: &EventStore,
    ) -> Result<Vec<(&'static str, AppliedMigration)>> {
        let mut applied = Vec::new();
        for set in &self.migrations {
            let done = store.migrate_set((set.runner)(), set.history_table).await?;
            applied.extend(
                done.into_iter()
                    .map(|migration| (set.history_table, migration)),
            );
        }
        Ok(applied)
    }

    /// Connects to the database of `global`.
    pub async fn connect(&self, global: &GlobalArgs) -> Result<EventStore> {
        let url = global
            .database_url
            .as_deref()
            .ok_or_else(|| CliError::Usage("set DATABASE_URL or pass --database-url".to_owned()))?;
        Ok(EventStore::connect(url).await?)
    }

    /// Runs one generic subcommand.
    pub async fn execute(&self, global: &GlobalArgs, command: Command) -> Result<()> {
        if let Command::PortableSql = command {
            print!("{}", pg_eventstore_client::portable::install_script()?);
            return Ok(());
        }
        if command.is_daemon() {
            outlive_stdout();
        }
        let store = self.connect(global).await?;
        match command {
            Command::Run(args) => self.daemon(store, args).await,
            Command::Migrate(args) if args.to_extension => {
                let (switched, applied) = store.switch_to_extension().await?;
                println!(
                    "moved the store to the pg_eventstore extension: {} events, {} groups",
                    switched.events, switched.groups
                );
                for migration in applied {
                    println!(
                        "applied V{}__{} ({})",
                        migration.version,
                        migration.name,
                        pg_eventstore_client::HISTORY_TABLE
                    );
                }
                // The store's set ran above; this program's own sets are left.
                for (set, migration) in self.migrate_application(&store).await? {
                    println!("applied V{}__{} ({set})", migration.version, migration.name);
                }
                Ok(())
            }
            Command::Migrate(args) => {
                let install = if args.portable {
                    Install::Portable
                } else {
                    Install::Auto
                };
                let applied = self.migrate(&store, install).await?;
                if applied.is_empty() {
                    println!("the database is up to date");
                }
                for (set, migration) in applied {
                    println!("applied V{}__{} ({set})", migration.version, migration.name);
                }
                Ok(())
            }
            Command::Append(args) => append(&store, args).await,
            Command::Read(args) => read(&store, args).await,
            Command::Tail(args) => tail(&store, args).await,
            Command::Rebuild(args) => self.rebuild(&store, args).await,
            Command::Replay(args) => self.replay(&store, args).await,
            Command::Stats(args) => {
                let health = store.health().await?;
                let known: Vec<&dyn Projection> = self.projections.iter().map(|p| &**p).collect();
                let projections = projection::status(&store, &known).await?;
                let groups = store.groups().await?;
                match args.format {
                    Format::Text => {
                        print!("{}", output::stats_text(&health, &projections, &groups));
                    }
                    Format::Json => {
                        println!("{}", output::stats_json(&health, &projections, &groups));
                    }
                }
                Ok(())
            }
            Command::Groups(args) => groups(&store, args).await,
            Command::Notify(args) => {
                if !notifier::needed(&store).await? {
                    println!(
                        "this database's wake-ups come from the extension; no notifier is needed"
                    );
                    return Ok(());
                }
                if args.interval_ms == 0 {
                    return Err(CliError::Usage(
                        "--interval-ms must be at least 1".to_owned(),
                    ));
                }
                tracing::info!("notifier running; SIGINT or SIGTERM stops it");
                notifier::run(
                    &store,
                    Duration::from_millis(args.interval_ms),
                    shutdown_signal(),
                )
                .await;
                Ok(())
            }
            Command::Serve(args) => serve(store, self.projections.clone(), args).await,
            Command::PortableSql => unreachable!("printed before connecting"),
        }
    }

    fn find_projection(&self, name: &str) -> Result<Arc<dyn Projection>> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| {
                let known: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
                CliError::Usage(format!(
                    "unknown projection {name:?} (known: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })
    }

    async fn daemon(&self, store: EventStore, args: RunArgs) -> Result<()> {
        let shutdown = shutdown_signal();
        if args.migrate {
            for (set, migration) in self.migrate(&store, Install::Auto).await? {
                tracing::info!(set, version = migration.version, name = %migration.name, "applied migration");
            }
        }
        let mut options = DaemonOptions::default()
            .batch_size(args.batch_size)
            .write_every(seconds(args.write_every, "--write-every")?)
            .takeover_interval(seconds(args.takeover_interval, "--takeover-interval")?)
            .poll_interval(seconds(args.poll_interval, "--poll-interval")?)
            .retry_interval(seconds(args.retry_interval, "--retry-interval")?);
        if let Some(owner) = args.owner {
            options = options.owner(owner);
        }
        let projections = if args.projections.is_empty() {
            self.projections.clone()
        } else {
            args.projections
                .iter()
                .map(|name| self.find_projection(name))
                .collect::<Result<_>>()?
        };
        if projections.is_empty() {
            return Err(CliError::Usage(format!(
                "{} runs no projections",
                self.name
            )));
        }
        // The portable form's wake-ups come from a notifier; the daemon runs one, stopped
        // with the daemon.
        let notifier = spawn_notifier_if_needed(&store).await?;
        let mut daemon = Daemon::new(store, options);
        for projection in projections {
            daemon = daemon.with_shared(projection);
        }
        tracing::info!("projection daemon started; SIGINT or SIGTERM stops it");
        let outcome = daemon.run(shutdown).await;
        if let Some(notifier) = notifier {
            notifier.abort();
        }
        Ok(outcome?)
    }

    async fn rebuild(&self, store: &EventStore, args: RebuildArgs) -> Result<()> {
        let projection = self.find_projection(&args.projection)?;
        if !args.yes {
            eprintln!(
                "rebuilding {}: its tables ({}) are emptied now and refilled from the log",
                projection.name(),
                projection
                    .tables()
                    .iter()
                    .map(|t| format!("{}.{t}", projection.schema()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let bar = progress_bar();
        let started = Instant::now();
        let done = projection::rebuild(store, &*projection, args.batch_size, |progress| {
            show(&bar, progress)
        })
        .await;
        bar.finish();
        let done = done?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "rebuilt {}: {done} events in {seconds:.1} s ({:.0} events/s)",
            projection.name(),
            done as f64 / seconds.max(1e-9)
        );
        Ok(())
    }

    async fn replay(&self, store: &EventStore, args: ReplayArgs) -> Result<()> {
        let projection = self.find_projection(&args.projection)?;
        let until = match (args.position, args.time) {
            (Some(position), _) => ReplayUntil::Position(position),
            (None, Some(time)) => ReplayUntil::Time(time),
            (None, None) => return Err(CliError::Usage("give --position or --time".to_owned())),
        };
        let bar = progress_bar();
        let report = projection::replay(
            store,
            &*projection,
            &args.schema,
            until,
            args.replace,
            args.batch_size,
            |progress| show(&bar, progress),
        )
        .await;
        bar.finish();
        let report = report?;
        println!(
        "replayed {} into schema {} through position {} ({} events); the live tables are untouched",
        projection.name(),
        report.schema,
        report.position,
        report.events
    );
        for table in projection.tables() {
            println!("  {}.{table}", report.schema);
        }
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives meanwhile is not lost.
/// Starts the portable form's notifier when the database needs one (it stands by while
/// another process's notifier holds the lock); the caller aborts it when it stops.
async fn spawn_notifier_if_needed(
    store: &EventStore,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    if !notifier::needed(store).await? {
        return Ok(None);
    }
    let store = store.clone();
    Ok(Some(tokio::spawn(async move {
        notifier::run(&store, notifier::DEFAULT_INTERVAL, std::future::pending()).await;
    })))
}

async fn serve(
    store: EventStore,
    projections: Vec<Arc<dyn Projection>>,
    args: ServeArgs,
) -> Result<()> {
    let options = pg_eventstore_server::ServeOptions {
        listen: args.listen,
        insecure: args.insecure,
        ui: !args.no_ui,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| pg_eventstore_server::TlsFiles { cert, key }),
    };
    let listener = pg_eventstore_server::Listener::bind(&options).await?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError::Usage(format!("cannot read the listening address: {error}")))?;
    let notifier = spawn_notifier_if_needed(&store).await?;
    let ui = listener
        .ui_url()
        .map_err(|error| CliError::Usage(format!("cannot read the listening address: {error}")))?;
    // Scripts wait for this line, the first, to know the port is open.
    announce(format_args!(
        "serving esdb://{address}?tls={}",
        listener.is_tls()
    ));
    if let Some(ui) = &ui {
        announce(format_args!("stream browser at {ui}"));
    }
    tracing::info!(%address, "serving gRPC and HTTP; SIGINT or SIGTERM stops it");
    let outcome = listener.serve(store, projections, shutdown_signal()).await;
    if let Some(notifier) = notifier {
        notifier.abort();
    }
    Ok(outcome?)
}

/// Lets a daemon outlive the reader of its stdout. [`run_command`] lets a broken pipe end a
/// command, as it ends any Unix tool; a daemon instead ignores SIGPIPE, so that a write to a
/// closed pipe or socket fails with `EPIPE` where it is made and the daemon goes on.
fn outlive_stdout() {
    // SAFETY: sigaction(2) through signal(3), setting a disposition, no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Writes a line of `serve`'s announcement to stdout. A script that read the line it waited
/// for may close its end of the pipe: the server goes on serving (`println!` would panic on
/// the broken pipe and stop it).
fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(error) = written {
        tracing::warn!(%error, "cannot write to stdout; serving on");
    }
}

fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            Some(()) = async { interrupt.as_mut()?.recv().await } => tracing::info!("SIGINT received"),
            Some(()) = async { terminate.as_mut()?.recv().await } => tracing::info!("SIGTERM received"),
            else => std::future::pending::<()>().await,
        }
    }
}

fn parse_expected(text: &str) -> Result<ExpectedVersion> {
    Ok(match text {
        "any" => ExpectedVersion::Any,
        "no-stream" => ExpectedVersion::NoStream,
        "stream-exists" => ExpectedVersion::StreamExists,
        number => ExpectedVersion::Exact(number.parse().map_err(|_| {
            CliError::Usage(format!(
                "expected version {number:?} is not any, no-stream, stream-exists or a version"
            ))
        })?),
    })
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|error| CliError::Usage(format!("{what} is not JSON: {error}")))
}

async fn append(store: &EventStore, args: AppendArgs) -> Result<()> {
    let expected = parse_expected(&args.expected_version)?;
    let events: Vec<EventData> = match (&args.event_type, &args.data, &args.events) {
        (Some(event_type), Some(data), None) => {
            let mut event = EventData::json(event_type.clone(), parse_json("--data", data)?);
            if let Some(metadata) = &args.metadata {
                event = event.metadata(&parse_json("--metadata", metadata)?)?;
            }
            if let Some(id) = args.id {
                event = event.id(id);
            }
            vec![event]
        }
        (None, None, Some(events)) => {
            #[derive(serde::Deserialize)]
            struct Input {
                #[serde(rename = "type")]
                event_type: String,
                data: serde_json::Value,
                #[serde(default)]
                metadata: Option<serde_json::Value>,
                #[serde(default)]
                id: Option<uuid::Uuid>,
            }
            let inputs: Vec<Input> = serde_json::from_value(parse_json("--events", events)?)
                .map_err(|error| {
                    CliError::Usage(format!(
                        "--events must be an array of {{\"type\", \"data\", \"metadata\"?, \"id\"?}}: {error}"
                    ))
                })?;
            inputs
                .into_iter()
                .map(|input| {
                    let mut event = EventData::json(input.event_type, input.data);
                    if let Some(metadata) = input.metadata {
                        event = event.metadata(&metadata)?;
                    }
                    if let Some(id) = input.id {
                        event = event.id(id);
                    }
                    Ok(event)
                })
                .collect::<Result<_>>()?
        }
        _ => {
            return Err(CliError::Usage(
                "give --type and --data, or --events".to_owned(),
            ))
        }
    };
    let result = store.append(&args.stream, expected, events).await?;
    println!(
        "appended {}@{}..{} at positions {}..{}",
        args.stream,
        result.first_version,
        result.last_version,
        result.first_position,
        result.last_position
    );
    Ok(())
}

fn types_filter(types: &[String]) -> Option<Vec<String>> {
    (!types.is_empty()).then(|| types.to_vec())
}

async fn read(store: &EventStore, args: ReadArgs) -> Result<()> {
    let types = types_filter(&args.types);
    let mut events = if let Some(stream) = &args.stream {
        let mut options = if args.backwards {
            ReadStreamOptions::backwards()
        } else {
            ReadStreamOptions::forwards()
        };
        if let Some(version) = args.from_version {
            options = options.from_version(version);
        }
        // Stream reads page by version; types are filtered here.
        let wanted = types.clone();
        store
            .read_stream(stream, options)
            .try_filter(move |event| {
                std::future::ready(
                    wanted
                        .as_ref()
                        .is_none_or(|t| t.contains(&event.event_type)),
                )
            })
            .take(usize::try_from(args.limit).unwrap_or(usize::MAX))
            .boxed()
    } else {
        let mut options = ReadAllOptions::default()
            .after(args.after)
            .limit(args.limit);
        if let Some(types) = types {
            options = options.event_types(types);
        }
        match &args.category {
            Some(category) => store.read_category(category, options),
            None => store.read_all(options),
        }
    };
    let mut printed = 0;
    while let Some(event) = events.try_next().await? {
        output::print_event(&event, args.format);
        printed += 1;
    }
    if args.format == Format::Text {
        eprintln!("({printed} events)");
    }
    Ok(())
}

async fn tail(store: &EventStore, args: TailArgs) -> Result<()> {
    let after = match (args.after, args.from_start) {
        (Some(after), _) => after,
        (None, true) => 0,
        (None, false) => store.head_position().await?,
    };
    let mut options = SubscriptionOptions::default().after(after);
    if let Some(types) = types_filter(&args.types) {
        options = options.event_types(types);
    }
    let mut subscription = match (&args.stream, &args.category) {
        (Some(stream), _) => store.subscribe_to_stream(stream, options),
        (None, Some(category)) => store.subscribe_to_category(category, options),
        (None, None) => store.subscribe_to_all(options),
    };
    eprintln!("following after position {after}; Ctrl-C stops");
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            event = subscription.next() => match event {
                Some(event) => output::print_event(&event?, args.format),
                None => return Ok(()),
            },
            () = &mut stop => return Ok(()),
        }
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events \
             {per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    bar
}

fn show(bar: &ProgressBar, progress: Progress) {
    bar.set_length(progress.total.max(progress.done));
    bar.set_position(progress.done);
}

fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| CliError::Usage(format!("{what} {value} is not a duration in seconds")))
}

async fn groups(store: &EventStore, args: GroupsArgs) -> Result<()> {
    match args.action.unwrap_or(GroupAction::List) {
        GroupAction::List => {
            let groups = store.groups().await?;
            match args.format {
                Format::Text => print!("{}", output::groups_text(&groups)),
                Format::Json => println!("{}", output::groups_json(&groups)),
            }
        }
        GroupAction::Parked { group } => {
            for parked in store.parked(&group).await? {
                match args.format {
                    Format::Text => println!(
                        "{:>20}  {}@{}  {}  attempt {}  {}",
                        parked.event.position,
                        parked.event.stream,
                        parked.event.version,
                        parked.event.event_type,
                        parked.attempt,
                        parked.reason.as_deref().unwrap_or("-")
                    ),
                    Format::Json => println!("{}", output::parked_json(&parked)),
                }
            }
        }
        GroupAction::ReplayParked { group, positions } => {
            let positions = (!positions.is_empty()).then_some(positions);
            let count = store.replay_parked(&group, positions.as_deref()).await?;
            println!("{count} parked events of {group} given back to the group");
        }
        GroupAction::DropParked { group, positions } => {
            let positions = (!positions.is_empty()).then_some(positions);
            let count = store.drop_parked(&group, positions.as_deref()).await?;
            println!("{count} parked events of {group} dropped");
        }
    }
    Ok(())
}

/// Sets up logging to stderr (`RUST_LOG`, or `default_level`), runs `work` on a tokio
/// runtime, and turns its outcome into the exit code, printing the error and its SQLSTATE.
pub fn run_command<F>(program: &str, default_level: &str, work: F) -> ExitCode
where
    F: Future<Output = Result<()>>,
{
    // A closed pipe (`eventstore read | head`) ends the command quietly, as it ends any Unix
    // tool, rather than in a panic of println!.
    // SAFETY: restores the default disposition of SIGPIPE, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{program}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            if let CliError::Store(store) = &error {
                if let Some(code) = store.sqlstate() {
                    eprintln!("  SQLSTATE {code}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// The log level a subcommand prints at by default: `info` for the daemon, `warn` for
    /// the others.
    pub fn default_log_level(&self) -> &'static str {
        if self.is_daemon() {
            "info"
        } else {
            "warn"
        }
    }

    /// Whether it runs until it is stopped: `run`, `notify` and `serve`.
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Notify(_) | Command::Serve(_)
        )
    }
}

/// The whole program for a daemon binary of `app`: parses the command line ([`Cli`]) and
/// runs it. See the crate documentation for an example.
pub fn main(app: App) -> ExitCode {
    let cli = Cli::parse();
    let level = cli.command.default_log_level();
    let name = app.name().to_owned();
    run_command(&name, level, async move {
        app.execute(&cli.global, cli.command).await
    })
}
