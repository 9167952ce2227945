//! The refinery migrations in `migrations/`, run over a sqlx connection.
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

refinery::embed_migrations!("../migrations");

/// The history table, named apart from refinery's default so an application's own refinery
/// migrations in the same database keep theirs.
pub(crate) const HISTORY_TABLE: &str = "eventstore_schema_history";

/// Key of the advisory lock that makes concurrent `migrate()` calls take turns.
const MIGRATION_LOCK: i64 = 0x4553_4d49_4752_4154; // "ESMIGRAT"

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

/// Applies the embedded migrations not yet applied, one transaction each, holding an advisory
/// lock so concurrent callers take turns.
pub(crate) async fn run(connection: &mut PgConnection) -> Result<Vec<AppliedMigration>> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *connection)
        .await?;
    let report = migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(&mut MigrationConnection(&mut *connection))
        .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *connection)
        .await;
    let report = report.map_err(Error::Migration)?;
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
