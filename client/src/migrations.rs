//! Refinery migrations run over a sqlx connection: the store's own set
//! (`migrations/eventstore`: the extension and the projection checkpoints), and any other set
//! an application embeds with `refinery::embed_migrations!` (the shop's read models, say),
//! each with a history table of its own.
//!
//! refinery has no sqlx driver, so [`MigrationConnection`] implements its async traits on a
//! sqlx `PgConnection`: each migration runs in its own transaction, together with its row in
//! the history table.

use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use refinery_core::Migration;
use sqlx::{Connection, Executor, PgConnection, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{Error, Result};

refinery::embed_migrations!("../migrations/eventstore");

/// The store's history table, named apart from refinery's default so an application's own
/// refinery migrations in the same database keep theirs.
pub const HISTORY_TABLE: &str = "eventstore_schema_history";

/// Key of the advisory lock that makes concurrent migration runs (of any set) take turns.
const MIGRATION_LOCK: i64 = 0x4553_4d49_4752_4154; // "ESMIGRAT"

/// Migrations of earlier releases' store sets that are no longer in it; their rows are
/// dropped from the history before the store's set runs, since refinery refuses a history
/// naming a migration it does not have:
/// - V2 `shop_read_models` (releases 0.1.0 and 0.2.0) also created the shop's read models:
///   those moved to the shop crate's own set (whose V1 adopts the existing tables), the
///   checkpoint table to V4 here.
/// - V3 `pg_eventstore_0_2_0` (release 0.2.0) and V5 `pg_eventstore_0_3_0` (release 0.3.0)
///   ran `ALTER EXTENSION pg_eventstore UPDATE TO` their version, which fails once V1 installs
///   a newer one; V6 updates to the installed version instead, through every step between.
const MOVED_MIGRATIONS: [(i32, &str); 3] = [
    (2, "shop_read_models"),
    (3, "pg_eventstore_0_2_0"),
    (5, "pg_eventstore_0_3_0"),
];

/// The store's own migrations, for [`crate::EventStore::migrate`].
pub(crate) fn store_runner() -> refinery::Runner {
    migrations::runner()
}

/// A migration applied by [`crate::EventStore::migrate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The `V{n}` number of the file.
    pub version: i32,
    /// The name after `V{n}__`.
    pub name: String,
}

struct MigrationConnection<'c>(&'c mut PgConnection);

impl AsyncTransaction for MigrationConnection<'_> {
    type Error = sqlx::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<String> = queries.map(str::to_owned).collect();
        apply(self.0, queries).await
    }
}

/// Runs `queries` in one transaction. A boxed future of its own: written inline in the trait
/// method, the compiler cannot prove the future `Send` for every lifetime.
fn apply(
    connection: &mut PgConnection,
    queries: Vec<String>,
) -> futures_util::future::BoxFuture<'_, Result<usize, sqlx::Error>> {
    Box::pin(async move {
        let mut transaction = Connection::begin(connection).await?;
        for query in &queries {
            // No arguments: the simple query protocol, which takes several statements.
            Executor::execute(&mut *transaction, query.as_str()).await?;
        }
        transaction.commit().await?;
        Ok(queries.len())
    })
}

impl AsyncQuery<Vec<Migration>> for MigrationConnection<'_> {
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
        let rows = Executor::fetch_all(&mut *self.0, query).await?;
        rows.iter()
            .map(|row| {
                let applied_on: String = row.try_get(2)?;
                let applied_on = OffsetDateTime::parse(&applied_on, &Rfc3339)
                    .map_err(|e| sqlx::Error::Decode(e.into()))?;
                let checksum: String = row.try_get(3)?;
                let checksum = checksum
                    .parse::<u64>()
                    .map_err(|e| sqlx::Error::Decode(e.into()))?;
                Ok(Migration::applied(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    applied_on,
                    checksum,
                ))
            })
            .collect()
    }
}

impl AsyncMigrate for MigrationConnection<'_> {}

/// Whether `name` can be a history table: refinery writes it into its SQL unquoted.
fn check_table_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63;
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "migration history table {name:?} must be a lower-case SQL identifier"
        )))
    }
}

/// Applies the migrations of `runner` not yet recorded in `history_table`, one transaction
/// each, holding an advisory lock so concurrent callers take turns.
pub(crate) async fn run(
    connection: &mut PgConnection,
    runner: refinery::Runner,
    history_table: &str,
) -> Result<Vec<AppliedMigration>> {
    check_table_name(history_table)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *connection)
        .await?;
    let report = run_locked(connection, runner, history_table).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *connection)
        .await;
    let report = report?;
    unlocked?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| AppliedMigration {
            version: m.version(),
            name: m.name().to_owned(),
        })
        .collect())
}

async fn run_locked(
    connection: &mut PgConnection,
    runner: refinery::Runner,
    history_table: &str,
) -> Result<refinery::Report> {
    if history_table == HISTORY_TABLE {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(HISTORY_TABLE)
            .fetch_one(&mut *connection)
            .await?;
        if exists {
            for (version, name) in MOVED_MIGRATIONS {
                let removed = sqlx::query(&format!(
                    "DELETE FROM {HISTORY_TABLE} WHERE version = $1 AND name = $2"
                ))
                .bind(version)
                .bind(name)
                .execute(&mut *connection)
                .await?;
                if removed.rows_affected() > 0 {
                    tracing::info!(
                        "{HISTORY_TABLE}: V{version}__{name} of an earlier release is superseded"
                    );
                }
            }
        }
    }
    let mut runner = runner;
    runner
        .set_migration_table_name(history_table)
        .run_async(&mut MigrationConnection(&mut *connection))
        .await
        .map_err(Error::Migration)
}
