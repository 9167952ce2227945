//! One error type for every operation, chosen by SQLSTATE, never by message text.

use crate::ExpectedVersion;

/// What went wrong in a call to the event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version; nothing was written. Re-read the stream,
    /// decide again and retry.
    #[error("wrong expected version for stream {stream:?}: expected {expected}, actual {}", describe_version(*.actual))]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append looked (`None`: the stream does not exist).
        actual: Option<u64>,
    },
    /// The transaction conflicted with a concurrent one (SQLSTATE 40001 other than a wrong
    /// expected version, or 40P01): retry the whole transaction.
    #[error("transaction conflict ({code}): {message}")]
    TransactionConflict {
        /// The SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server refused an event or an argument (SQLSTATE 22023); nothing was written.
    #[error("invalid event or argument: {message}")]
    InvalidEvent {
        /// The server's message, naming the event and field.
        message: String,
    },
    /// An event id is already used by another event (SQLSTATE 23505); nothing was written.
    #[error("duplicate event id: {message}")]
    DuplicateEventId {
        /// The server's message, naming the id and where it is used.
        message: String,
    },
    /// A limit of the event store was exceeded (SQLSTATE 54000).
    #[error("limit exceeded: {message}")]
    LimitExceeded {
        /// The server's message.
        message: String,
    },
    /// An argument was refused before anything was sent to the server.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An event's data could not be turned into JSON.
    #[error("could not encode event data as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// A recorded event's data or metadata did not decode into the requested type.
    #[error("could not decode event at position {position} ({event_type}): {source}")]
    Decode {
        /// Position of the event in the global log.
        position: u64,
        /// Its type.
        event_type: String,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// The connection to the server failed or was lost, or the pool has none to give.
    /// Subscriptions retry these by themselves.
    #[error("connection error: {0}")]
    Connection(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[source] refinery_core::Error),
    /// No server answered the first connection of [`crate::EventStore::connect`] (nothing
    /// listening, no route, a failed TLS handshake). A server that answers and refuses (bad
    /// credentials, no such database) gives its SQLSTATE as [`Error::Database`] instead.
    #[error("cannot connect to {server}: {source}")]
    Unreachable {
        /// `host:port` (or the socket) connected to.
        server: String,
        /// What the connection attempt reported.
        #[source]
        source: sqlx::Error,
    },
    /// A persistent subscription group of that name exists already (SQLSTATE 23505 with the
    /// constraint `subscription_groups_group_name_key`, from `eventstore.create_group`).
    #[error("subscription group {0:?} already exists")]
    GroupExists(String),
    /// There is no persistent subscription group of that name (SQLSTATE 42704 from the group
    /// functions).
    #[error("subscription group {0:?} does not exist")]
    GroupNotFound(String),
    /// A projection is stopped at an event it cannot apply.
    #[error("{0}")]
    Projection(Box<crate::projection::ProjectionFailure>),
    /// Application code the client ran (a projection's `apply`) failed with an error of its
    /// own kind.
    #[error("{0}")]
    Application(Box<dyn std::error::Error + Send + Sync>),
    /// A task the client started (a group worker, a generator's writer) panicked or was
    /// cancelled.
    #[error("task failed: {0}")]
    TaskFailed(String),
}

fn describe_version(version: Option<u64>) -> String {
    version.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

impl Error {
    /// Whether retrying the same operation later may succeed: a lost connection, a server
    /// shutting down or starting, or a transaction conflict.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connection(_) | Error::Unreachable { .. } | Error::TransactionConflict { .. }
        )
    }

    /// The SQLSTATE the server reported, when the error came from the server.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::WrongExpectedVersion { .. } => Some("40001".to_owned()),
            Error::TransactionConflict { code, .. } => Some(code.clone()),
            Error::InvalidEvent { .. } => Some("22023".to_owned()),
            Error::DuplicateEventId { .. } | Error::GroupExists(_) => Some("23505".to_owned()),
            Error::GroupNotFound(_) => Some("42704".to_owned()),
            Error::LimitExceeded { .. } => Some("54000".to_owned()),
            Error::Connection(e) | Error::Database(e) | Error::Unreachable { source: e, .. } => e
                .as_database_error()
                .and_then(|db| db.code())
                .map(|code| code.into_owned()),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        let code = error
            .as_database_error()
            .and_then(|db| db.code())
            .map(|code| code.into_owned());
        let message = || {
            error
                .as_database_error()
                .map(|db| db.message().to_owned())
                .unwrap_or_default()
        };
        match code.as_deref() {
            Some(code @ ("40001" | "40P01")) => Error::TransactionConflict {
                code: code.to_owned(),
                message: message(),
            },
            Some("22023") => Error::InvalidEvent { message: message() },
            // An event id (the append's own refusal carries no constraint; the index's is
            // events_id_key). A group's name is read by `on_group` at the group calls.
            Some("23505")
                if error
                    .as_database_error()
                    .and_then(|db| db.constraint())
                    .is_none_or(|constraint| constraint != GROUP_NAME_KEY) =>
            {
                Error::DuplicateEventId { message: message() }
            }
            Some("54000") => Error::LimitExceeded { message: message() },
            Some(code) if connection_code(code) => Error::Connection(error),
            Some(_) => Error::Database(error),
            None if connection_kind(&error) => Error::Connection(error),
            None => Error::Database(error),
        }
    }
}

/// The constraint `eventstore.create_group` names when the group exists already.
const GROUP_NAME_KEY: &str = "subscription_groups_group_name_key";

/// How the errors of a call on group `group` read: 42704 is that group missing, 23505 with
/// the group-name constraint that group existing already; the rest as [`From`] says.
pub(crate) fn on_group(group: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |error| {
        let database = error.as_database_error();
        let code = database.and_then(|db| db.code());
        match (code.as_deref(), database.and_then(|db| db.constraint())) {
            (Some("42704"), _) => Error::GroupNotFound(group.to_owned()),
            (Some("23505"), Some(GROUP_NAME_KEY)) => Error::GroupExists(group.to_owned()),
            _ => Error::from(error),
        }
    }
}

/// Class 08 (connection exception), 57P01-57P03 (admin/crash shutdown, cannot connect now):
/// the server went away or is not ready yet.
fn connection_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Errors without a SQLSTATE that mean the connection, not the request, failed.
fn connection_kind(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// [`Error::is_transient`] for a sqlx error not converted (yet).
pub(crate) fn sqlx_is_transient(error: &sqlx::Error) -> bool {
    match error.as_database_error().and_then(|db| db.code()) {
        Some(code) => connection_code(&code) || code == "40001" || code == "40P01",
        None => connection_kind(error),
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
