//! `eventstore`: the projection daemon and the operator's tool for pg_eventstore.

mod generate;
mod output;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use pg_eventstore_client::projection::{
    self, Daemon, DaemonOptions, Progress, Projection, ReplayUntil, ShopProjection,
};
use pg_eventstore_client::{
    Error, EventData, EventStore, ExpectedVersion, ReadAllOptions, ReadStreamOptions,
    SubscriptionOptions,
};
use tracing_subscriber::EnvFilter;

/// pg_eventstore: an event store inside PostgreSQL. Runs the projection daemon that keeps
/// the read models current, and reads, appends and inspects events.
#[derive(Parser)]
#[command(name = "eventstore", version)]
struct Cli {
    /// The database, as postgres://user@host:port/database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = false)]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the projection daemon until SIGINT or SIGTERM: catch every projection up, then
    /// follow the log. Several daemons may run; each projection runs in one of them at a
    /// time, and another takes over when that one stops or dies.
    Run(RunArgs),
    /// Apply the migrations (the extension, the read models, the checkpoints) not yet
    /// applied to the database.
    Migrate,
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
    /// Print streams, events, each projection's position, lag and failure, and the oldest
    /// transaction in flight.
    Stats(StatsArgs),
    /// Append a generated workload of the seed shop: users registering, renaming and
    /// leaving; orders placed, paid, shipped and cancelled (with a few events that make no
    /// sense, as real systems have).
    Generate(generate::GenerateArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Run only these projections (default: all built-in ones: shop).
    #[arg(long = "projection", value_name = "NAME")]
    projections: Vec<String>,
    /// Events applied per transaction while catching up.
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,
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

#[derive(Args)]
struct AppendArgs {
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

#[derive(Args)]
struct ReadArgs {
    /// Read this stream.
    #[arg(long, conflicts_with = "category")]
    stream: Option<String>,
    /// Read this category (streams <category>-*).
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

#[derive(Args)]
struct TailArgs {
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

#[derive(Args)]
struct RebuildArgs {
    /// The projection (shop).
    projection: String,
    /// Events applied per transaction.
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,
    /// Ask nothing: the tables are emptied at once.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// The projection (shop).
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

#[derive(Args)]
struct StatsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// Aligned text for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// The projections this binary knows.
fn builtin() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(ShopProjection)]
}

fn find_projection(name: &str) -> Result<Arc<dyn Projection>, Error> {
    builtin()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let known: Vec<String> = builtin().iter().map(|p| p.name().to_owned()).collect();
            Error::InvalidArgument(format!(
                "unknown projection {name:?} (known: {})",
                known.join(", ")
            ))
        })
}

fn seconds(value: f64, what: &str) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is not a duration")))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eventstore: {error}");
            if let Some(code) = error.sqlstate() {
                eprintln!("  SQLSTATE {code}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let url = cli.database_url.ok_or_else(|| {
        Error::InvalidArgument("set DATABASE_URL or pass --database-url".to_owned())
    })?;
    let store = EventStore::connect(&url).await?;
    match cli.command {
        Command::Run(args) => daemon(store, args).await,
        Command::Migrate => {
            let applied = store.migrate().await?;
            if applied.is_empty() {
                println!("the database is up to date");
            }
            for migration in applied {
                println!("applied V{}__{}", migration.version, migration.name);
            }
            Ok(())
        }
        Command::Append(args) => append(&store, args).await,
        Command::Read(args) => read(&store, args).await,
        Command::Tail(args) => tail(&store, args).await,
        Command::Rebuild(args) => rebuild(&store, args).await,
        Command::Replay(args) => replay(&store, args).await,
        Command::Stats(args) => {
            let projections = builtin();
            let known: Vec<&dyn Projection> = projections.iter().map(|p| &**p).collect();
            let stats = projection::stats(&store, &known).await?;
            match args.format {
                Format::Text => print!("{}", output::stats_text(&stats)),
                Format::Json => println!("{}", output::stats_json(&stats)),
            }
            Ok(())
        }
        Command::Generate(args) => generate::run(&store, args).await,
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives meanwhile is not lost.
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

async fn daemon(store: EventStore, args: RunArgs) -> Result<(), Error> {
    let shutdown = shutdown_signal();
    if args.migrate {
        for migration in store.migrate().await? {
            tracing::info!(version = migration.version, name = %migration.name, "applied migration");
        }
    }
    let mut options = DaemonOptions::default()
        .batch_size(args.batch_size)
        .takeover_interval(seconds(args.takeover_interval, "takeover interval")?)
        .poll_interval(seconds(args.poll_interval, "poll interval")?)
        .retry_interval(seconds(args.retry_interval, "retry interval")?);
    if let Some(owner) = args.owner {
        options = options.owner(owner);
    }
    let mut daemon = Daemon::new(store, options);
    let projections = if args.projections.is_empty() {
        builtin()
    } else {
        args.projections
            .iter()
            .map(|name| find_projection(name))
            .collect::<Result<_, _>>()?
    };
    for projection in projections {
        daemon = daemon.with_shared(projection);
    }
    tracing::info!("projection daemon started; SIGINT or SIGTERM stops it");
    daemon.run(shutdown).await
}

fn parse_expected(text: &str) -> Result<ExpectedVersion, Error> {
    Ok(match text {
        "any" => ExpectedVersion::Any,
        "no-stream" => ExpectedVersion::NoStream,
        "stream-exists" => ExpectedVersion::StreamExists,
        number => ExpectedVersion::Exact(number.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "expected version {number:?} is not any, no-stream, stream-exists or a version"
            ))
        })?),
    })
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text)
        .map_err(|error| Error::InvalidArgument(format!("{what} is not JSON: {error}")))
}

async fn append(store: &EventStore, args: AppendArgs) -> Result<(), Error> {
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
                    Error::InvalidArgument(format!(
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
                .collect::<Result<_, Error>>()?
        }
        _ => {
            return Err(Error::InvalidArgument(
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

async fn read(store: &EventStore, args: ReadArgs) -> Result<(), Error> {
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

async fn tail(store: &EventStore, args: TailArgs) -> Result<(), Error> {
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

async fn rebuild(store: &EventStore, args: RebuildArgs) -> Result<(), Error> {
    let projection = find_projection(&args.projection)?;
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

async fn replay(store: &EventStore, args: ReplayArgs) -> Result<(), Error> {
    let projection = find_projection(&args.projection)?;
    let until = match (args.position, args.time) {
        (Some(position), _) => ReplayUntil::Position(position),
        (None, Some(time)) => ReplayUntil::Time(time),
        (None, None) => unreachable!("clap requires one"),
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
