//! What an append expects of the stream's current version.

use std::fmt;

use crate::{Error, Result};

/// The optimistic-concurrency check of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version (SQL `NULL`).
    Any,
    /// The stream must not exist yet (SQL `-1`).
    NoStream,
    /// The stream must exist (SQL `-2`).
    StreamExists,
    /// The stream's last event must have this version (the first event is version 0).
    Exact(u64),
}

impl ExpectedVersion {
    /// The `expected_version` argument of `eventstore.append` (`NULL` for any, the values of
    /// `eventstore.no_stream()` and `eventstore.stream_exists()`, or the version);
    /// [`Error::InvalidArgument`] for a version beyond `bigint`.
    pub fn to_sql(self) -> Result<Option<i64>> {
        match self {
            ExpectedVersion::Any => Ok(None),
            ExpectedVersion::NoStream => Ok(Some(-1)),
            ExpectedVersion::StreamExists => Ok(Some(-2)),
            ExpectedVersion::Exact(version) => i64::try_from(version).map(Some).map_err(|_| {
                Error::InvalidArgument(format!("expected version {version} is out of range"))
            }),
        }
    }

    /// The expectation that the stream is exactly where `version` says (`None`: absent).
    pub fn from_stream_version(version: Option<u64>) -> Self {
        version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}
