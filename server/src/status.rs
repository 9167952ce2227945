//! The gRPC statuses and `exception` trailers the clients branch on (kurrentdb-wire.md §8).

use pg_eventstore_client::Error;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::codec::CodecError;

/// A status with the `exception` trailer and the extra trailers that go with it.
pub fn with_trailers(code: Code, message: String, trailers: &[(&'static str, &str)]) -> Status {
    let mut metadata = MetadataMap::new();
    for (key, value) in trailers {
        // Trailer values are plain ASCII text; a value that is not (a stream name with
        // other characters) is left out rather than sent broken.
        if let Ok(value) = MetadataValue::try_from(*value) {
            metadata.insert(*key, value);
        }
    }
    Status::with_metadata(code, message, metadata)
}

/// INVALID_ARGUMENT with `message`.
pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A message that cannot be stored.
pub fn codec(error: CodecError) -> Status {
    match error {
        CodecError::MissingMetadata { .. } => with_trailers(
            Code::InvalidArgument,
            error.to_string(),
            &[
                ("exception", "missing-required-metadata-property"),
                ("required-metadata-properties", "type,content-type"),
            ],
        ),
        _ => invalid(error.to_string()),
    }
}

/// The status for an error of the store.
pub fn store(error: Error) -> Status {
    let message = error.to_string();
    match &error {
        Error::InvalidEvent { .. } | Error::InvalidArgument(_) | Error::LimitExceeded { .. } => {
            invalid(message)
        }
        Error::DuplicateEventId { .. } => Status::already_exists(message),
        Error::TransactionConflict { .. } => Status::aborted(message),
        Error::Connection(_) | Error::Unreachable { .. } => Status::unavailable(message),
        _ => match error.sqlstate().as_deref() {
            Some("42501") => with_trailers(
                Code::PermissionDenied,
                message,
                &[("exception", "access-denied")],
            ),
            // A hot standby, a server shutting down or starting: another node or a later
            // call may succeed.
            Some("25006" | "57P01" | "57P02" | "57P03") => Status::unavailable(message),
            _ => Status::internal(message),
        },
    }
}
