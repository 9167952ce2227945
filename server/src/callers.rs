//! Who a call runs as.
//!
//! Over TLS every call must carry basic-auth credentials (`esdb://role:password@host…`):
//! a PostgreSQL role and its password, which PostgreSQL itself checks when the server
//! connects as that role to the store's database (its `pg_hba.conf` decides; the server
//! keeps no password store). The call then runs on a pool of that role's connections, so
//! the role's privileges ([Roles](../../README.md#roles): `eventstore_reader`,
//! `eventstore_writer`, `eventstore_consumer`, `eventstore_admin`) decide what it may do: a
//! refused privilege is PERMISSION_DENIED with `access-denied`. A call without credentials,
//! or with wrong ones, is UNAUTHENTICATED.
//!
//! Over cleartext, as in EventStoreDB's insecure mode, nothing is authenticated: calls run
//! as the role of `DATABASE_URL`, and credentials are not looked at (the Node client does
//! not even send them there). The server then listens only on loopback unless told
//! `--insecure`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pg_eventstore_client::EventStore;
use sqlx::PgPool;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// How long a role's verified pool is used before its credentials are checked again (so
/// that a changed password or a role no longer allowed to log in takes effect).
const RECHECK_AFTER: Duration = Duration::from_secs(300);
/// Connections of one role's pool.
const ROLE_CONNECTIONS: u32 = 8;
/// Roles' pools kept at most; the oldest is closed first.
const MAX_ROLES: usize = 64;

/// Why connecting as a role failed.
#[derive(Debug)]
pub(crate) enum SignInError {
    /// PostgreSQL refused the role name or password (or the role may not log in).
    Refused,
    /// Anything else: the database is unreachable, ...
    Database(sqlx::Error),
}

/// A pool of `role`'s connections to the store's database (host, port and database of
/// `base`), once PostgreSQL accepted `password`.
pub(crate) async fn connect_as(
    base: &EventStore,
    role: &str,
    password: &str,
    application_name: &str,
    connections: u32,
) -> Result<PgPool, SignInError> {
    if role.is_empty() {
        return Err(SignInError::Refused);
    }
    let options = (*base.pool().connect_options())
        .clone()
        .username(role)
        .password(password)
        .application_name(application_name);
    pg_eventstore_client::pool_options()
        .max_connections(connections)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|error| {
            let code = error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
            match code.as_deref() {
                // invalid_password, invalid_authorization_specification (no such role, or
                // one that may not log in): one answer for each, so that it tells nothing.
                Some("28P01" | "28000") => SignInError::Refused,
                _ => SignInError::Database(error),
            }
        })
}

/// The role and password of an `Authorization: Basic …` value; `None` when it is not one.
pub(crate) fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (role, password) = text.split_once(':')?;
    Some((role.to_owned(), password.to_owned()))
}

/// The store each call runs against.
pub(crate) struct Callers {
    base: EventStore,
    authenticate: bool,
    /// Verified pools by role and password.
    roles: Mutex<HashMap<(String, String), (EventStore, Instant)>>,
}

impl Callers {
    /// Calls run against `base` unless `authenticate`, when each runs as its caller's role.
    pub(crate) fn new(base: EventStore, authenticate: bool) -> Callers {
        Callers {
            base,
            authenticate,
            roles: Mutex::new(HashMap::new()),
        }
    }

    /// The store a call with `metadata` runs against, or UNAUTHENTICATED.
    pub(crate) async fn store(&self, metadata: &MetadataMap) -> Result<EventStore, Status> {
        if !self.authenticate {
            return Ok(self.base.clone());
        }
        let (role, password) = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(basic_credentials)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this server authenticates every call: connect with a PostgreSQL role \
                     and its password (esdb://role:password@host:port?tls=true)",
                )
            })?;
        let key = (role, password);
        if let Some((store, verified)) = self.roles.lock().expect("roles lock").get(&key) {
            if verified.elapsed() < RECHECK_AFTER {
                return Ok(store.clone());
            }
        }
        let pool = connect_as(
            &self.base,
            &key.0,
            &key.1,
            "eventstore serve",
            ROLE_CONNECTIONS,
        )
        .await
        .map_err(|error| match error {
            SignInError::Refused => Status::unauthenticated(
                "authentication failed: wrong role name or password, or the role may not log in",
            ),
            SignInError::Database(error) => {
                Status::unavailable(format!("cannot connect to the database: {error}"))
            }
        })?;
        let store = EventStore::from_pool(pool);
        let mut roles = self.roles.lock().expect("roles lock");
        if !roles.contains_key(&key) && roles.len() >= MAX_ROLES {
            let oldest = roles
                .iter()
                .min_by_key(|(_, (_, verified))| *verified)
                .map(|(key, _)| key.clone());
            // Calls in progress keep the pool they hold; it closes when the last one ends.
            if let Some(oldest) = oldest {
                roles.remove(&oldest);
            }
        }
        roles.insert(key, (store.clone(), Instant::now()));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_credentials() {
        assert_eq!(
            basic_credentials("Basic YWRtaW46czNjcjN0Og=="),
            Some(("admin".to_owned(), "s3cr3t:".to_owned()))
        );
        assert_eq!(
            basic_credentials("basic YTpi"),
            Some(("a".to_owned(), "b".to_owned()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials("Basic bm9jb2xvbg=="), None, "no colon");
    }
}
