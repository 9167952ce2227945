//! Events on their way in ([`EventData`]) and stored ones ([`RecordedEvent`]).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use crate::{Error, Result};

/// The columns of `eventstore.recorded_event`, in order: the one list the client's queries
/// select ([`RecordedEvent::from_row`] reads them by name).
macro_rules! recorded_event_columns {
    () => {
        "position, stream, version, type, data, metadata, id, recorded_at"
    };
}
pub(crate) use recorded_event_columns;

/// Metadata key of the correlation id: the id shared by every event of one business
/// conversation.
pub const CORRELATION_ID: &str = "$correlationId";
/// Metadata key of the causation id: the id of the event or command that caused this one.
pub const CAUSATION_ID: &str = "$causationId";

/// A new event to append: a type name, JSON data, optional metadata and an optional id.
///
/// ```
/// use pg_eventstore_client::EventData;
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct UserCreated<'a> {
///     username: &'a str,
///     #[serde(rename = "fullName")]
///     full_name: &'a str,
/// }
///
/// let event = EventData::new("user-created", &UserCreated { username: "ada", full_name: "Ada Lovelace" })?
///     .correlation_id(uuid::Uuid::now_v7());
/// assert_eq!(event.event_type(), "user-created");
/// # Ok::<(), pg_eventstore_client::Error>(())
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct EventData {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
}

impl EventData {
    /// An event of type `event_type` whose data is `data` serialized to JSON.
    pub fn new<T: Serialize + ?Sized>(event_type: impl Into<String>, data: &T) -> Result<Self> {
        Ok(EventData {
            event_type: event_type.into(),
            data: serde_json::value::to_raw_value(data).map_err(Error::Encode)?,
            metadata: None,
            id: None,
        })
    }

    /// An event whose data is already JSON.
    pub fn json(event_type: impl Into<String>, data: Value) -> Self {
        EventData {
            event_type: event_type.into(),
            data: serde_json::value::to_raw_value(&data).expect("a JSON value serializes"),
            metadata: None,
            id: None,
        }
    }

    /// An event whose data is JSON text already checked by the caller (for example parsed
    /// into a [`RawValue`] from bytes received): it is sent as it is.
    pub fn raw(event_type: impl Into<String>, data: Box<RawValue>) -> Self {
        EventData {
            event_type: event_type.into(),
            data,
            metadata: None,
            id: None,
        }
    }

    /// Gives the event this id. Without one the server assigns a fresh UUID; with one, a
    /// retried append of the same events is recognised and not written twice.
    #[must_use]
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets one metadata field. Default: no metadata (stored as `{}`).
    #[must_use]
    pub fn metadata_field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata
            .get_or_insert_with(Map::new)
            .insert(key.into(), value.into());
        self
    }

    /// Replaces the metadata with `metadata`, which must serialize to a JSON object.
    pub fn metadata<T: Serialize + ?Sized>(mut self, metadata: &T) -> Result<Self> {
        match serde_json::to_value(metadata).map_err(Error::Encode)? {
            Value::Object(map) => {
                self.metadata = Some(map);
                Ok(self)
            }
            other => Err(Error::InvalidArgument(format!(
                "event metadata must be a JSON object, not {other}"
            ))),
        }
    }

    /// Sets the correlation id (metadata `$correlationId`).
    #[must_use]
    pub fn correlation_id(self, id: Uuid) -> Self {
        self.metadata_field(CORRELATION_ID, id.to_string())
    }

    /// Sets the causation id (metadata `$causationId`).
    #[must_use]
    pub fn causation_id(self, id: Uuid) -> Self {
        self.metadata_field(CAUSATION_ID, id.to_string())
    }

    /// Marks this event as caused by `cause`: its causation id is `cause`'s id, and its
    /// correlation id is `cause`'s correlation id (or `cause`'s id when it has none).
    #[must_use]
    pub fn caused_by(self, cause: &RecordedEvent) -> Self {
        let correlation = cause.correlation_id().unwrap_or(cause.id);
        self.causation_id(cause.id).correlation_id(correlation)
    }

    /// The event's type name.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The event's data as JSON text.
    pub fn data_json(&self) -> &str {
        self.data.get()
    }
}

/// An event as stored in the log.
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    /// Position in the global log: increasing in commit-visibility order, with gaps.
    pub position: u64,
    /// The stream the event belongs to.
    pub stream: String,
    /// Version within the stream: 0, 1, 2, ...
    pub version: u64,
    /// The event's type name.
    pub event_type: String,
    /// The event's data, as stored (decode with [`RecordedEvent::decode`]).
    pub data: Box<RawValue>,
    /// The event's metadata object, as stored.
    pub metadata: Box<RawValue>,
    /// The event's id.
    pub id: Uuid,
    /// When the appending statement started.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Decodes the event's data into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.data.get()).map_err(|source| self.decode_error(source))
    }

    /// Decodes the event's metadata into `T`.
    pub fn decode_metadata<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.metadata.get()).map_err(|source| self.decode_error(source))
    }

    /// The metadata's `$correlationId`, when it holds a UUID.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.metadata_uuid(CORRELATION_ID)
    }

    /// The metadata's `$causationId`, when it holds a UUID.
    pub fn causation_id(&self) -> Option<Uuid> {
        self.metadata_uuid(CAUSATION_ID)
    }

    /// The category of the event's stream: the text before the first `-`.
    pub fn category(&self) -> &str {
        self.stream.split('-').next().unwrap_or_default()
    }

    fn metadata_uuid(&self, key: &str) -> Option<Uuid> {
        #[derive(Deserialize)]
        struct Ids {
            #[serde(rename = "$correlationId")]
            correlation: Option<String>,
            #[serde(rename = "$causationId")]
            causation: Option<String>,
        }
        let ids: Ids = serde_json::from_str(self.metadata.get()).ok()?;
        let text = if key == CORRELATION_ID {
            ids.correlation
        } else {
            ids.causation
        };
        text?.parse().ok()
    }

    fn decode_error(&self, source: serde_json::Error) -> Error {
        Error::Decode {
            position: self.position,
            event_type: self.event_type.clone(),
            source,
        }
    }

    /// Builds an event from a row with the columns of `eventstore.recorded_event`.
    pub fn from_row(row: &PgRow) -> Result<Self> {
        let position: i64 = row.try_get("position")?;
        let version: i64 = row.try_get("version")?;
        let Json(data): Json<Box<RawValue>> = row.try_get("data")?;
        let metadata: Option<Json<Box<RawValue>>> = row.try_get("metadata")?;
        let metadata = match metadata {
            Some(Json(metadata)) => metadata,
            None => RawValue::from_string("{}".to_owned()).expect("valid JSON"),
        };
        Ok(RecordedEvent {
            position: u64::try_from(position).map_err(|_| negative("position", position))?,
            stream: row.try_get("stream")?,
            version: u64::try_from(version).map_err(|_| negative("version", version))?,
            event_type: row.try_get("type")?,
            data,
            metadata,
            id: row.try_get("id")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }
}

fn negative(column: &str, value: i64) -> Error {
    Error::Database(sqlx::Error::Decode(
        format!("{column} {value} is negative").into(),
    ))
}

/// Where an append put its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the first event appended.
    pub first_version: u64,
    /// Version of the last event appended: the stream's version now.
    pub last_version: u64,
    /// Global position of the first event.
    pub first_position: u64,
    /// Global position of the last event.
    pub last_position: u64,
}
