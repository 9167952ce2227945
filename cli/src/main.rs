//! `eventstore`: the projection daemon and the operator's tool for pg_eventstore, with the
//! seed shop's read models built in (`shop.users`, `shop.orders`) and its workload
//! generator.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use pg_eventstore_cli::{run_command, App, CliError, Command, GlobalArgs};
use pg_eventstore_shop::{ShopProjection, Workload};

/// pg_eventstore: an event store inside PostgreSQL. Runs the projection daemon that keeps
/// the read models current, and reads, appends and inspects events.
#[derive(Parser)]
#[command(name = "eventstore", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: EventstoreCommand,
}

#[derive(Subcommand)]
enum EventstoreCommand {
    #[command(flatten)]
    Store(Command),
    /// Append a generated workload of the seed shop: users registering, renaming and
    /// leaving; orders placed, paid, shipped and cancelled (with a few events that make no
    /// sense, as real systems have).
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// Users to register.
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// Orders to place.
    #[arg(long, default_value_t = 1000)]
    orders: u32,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Seed of the random choices (same seed, same events).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Prefix of the generated ids, so that several runs can share a database.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// mimalloc, not glibc's malloc: a projection catching up allocates for every event it
/// decodes and every row it writes, and with glibc half of its CPU time went to malloc and
/// free (perf, shop projection over 1M events).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let app = App::new("eventstore")
        .projection(ShopProjection)
        .migrations(
            pg_eventstore_shop::migrations,
            pg_eventstore_shop::HISTORY_TABLE,
        );
    let level = match &cli.command {
        EventstoreCommand::Store(command) => command.default_log_level(),
        EventstoreCommand::Generate(_) => "warn",
    };
    run_command("eventstore", level, async move {
        match cli.command {
            EventstoreCommand::Store(command) => app.execute(&cli.global, command).await,
            EventstoreCommand::Generate(args) => generate(&app, &cli.global, args).await,
        }
    })
}

async fn generate(app: &App, global: &GlobalArgs, args: GenerateArgs) -> Result<(), CliError> {
    if args.users == 0 && args.orders > 0 {
        return Err(CliError::Usage("orders need at least one user".to_owned()));
    }
    let store = app.connect(global).await?;
    let workload = Workload {
        users: args.users,
        orders: args.orders,
        writers: args.writers,
        seed: args.seed,
        prefix: args.prefix,
    };
    let started = Instant::now();
    let appended = pg_eventstore_shop::generate(&store, &workload).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "generated {} users and {} orders: {appended} events in {seconds:.1} s ({:.0} events/s)",
        workload.users,
        workload.orders,
        appended as f64 / seconds.max(1e-9)
    );
    Ok(())
}
