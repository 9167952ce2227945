//! The seed shop on pg_eventstore: the domain the seed articles describe, built the way an
//! application adopting the client would build it.
//!
//! - [`events`]: the domain events (`user-created`, `order-placed`, ...) as typed structs,
//!   money as exact decimals.
//! - [`rules`]: the business rules as plain code over in-memory state, the order state
//!   machine among them; unit-tested without a database.
//! - [`ShopProjection`]: the read models `shop.users`, `shop.orders` and `shop.anomalies`,
//!   kept by the client's projection daemon.
//! - [`migrate`]: the read models' own migration set (`migrations/shop`).
//! - [`generate`]: a generated workload for demos, tests and benchmarks.
//!
//! The pipeline example (`cargo run -p pg_eventstore_shop --example shop_pipeline`) runs the
//! seeds' input gateway, competing workers and projection on one database.
#![deny(missing_docs)]

pub mod events;
mod generate;
mod migrations;
mod projection;
pub mod rules;

pub use events::EVENT_TYPES;
pub use generate::{generate, Workload};
pub use migrations::{migrate, runner as migrations, HISTORY_TABLE};
pub use projection::ShopProjection;
