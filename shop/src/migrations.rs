//! The shop's read models, as a refinery migration set of its own (`migrations/shop`), with
//! its own history table: an application that adopts the client never gets them.

use pg_eventstore_client::{AppliedMigration, EventStore, Result};

refinery::embed_migrations!("../migrations/shop");

/// The shop's history table.
pub const HISTORY_TABLE: &str = "shop_schema_history";

/// The shop's migration set, for [`EventStore::migrate_set`].
pub fn runner() -> refinery::Runner {
    migrations::runner()
}

/// Applies the store's migrations, then the shop's (`shop.users`, `shop.orders`,
/// `shop.anomalies`); returns what it applied of both.
pub async fn migrate(store: &EventStore) -> Result<Vec<AppliedMigration>> {
    let mut applied = store.migrate().await?;
    applied.extend(store.migrate_set(runner(), HISTORY_TABLE).await?);
    Ok(applied)
}
