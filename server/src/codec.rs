//! How events cross between the protocol's messages and the store's rows.
//!
//! The store keeps data as `jsonb` and metadata as a `jsonb` object; the protocol carries
//! both as bytes, with a content type. So that SQL users can query what EventStoreDB
//! clients write, and nothing a client writes changes on its way back:
//! - Data sent as `application/json` that is JSON is stored as that JSON value (the key order
//!   and spacing of `jsonb`, as for every event of the store). Any other data, and JSON that
//!   does not parse, is stored as a JSON string holding the base64 of its exact bytes, with
//!   the metadata key `$contentType` naming the content type it is read back with.
//! - Custom metadata that is a JSON object becomes the event's metadata object, so
//!   `$correlationId` and `$causationId` work as for events appended through SQL. Unless the
//!   object's compact, key-sorted JSON is exactly the bytes sent, the bytes are kept as well,
//!   under `$customMetadata`. Other UTF-8 text is kept under `$customMetadata`; bytes that
//!   are not UTF-8 are kept as base64 under `$customMetadataBase64`.
//! - Events appended through SQL read back as `application/json`, with their metadata object
//!   (if not empty) as compact, key-sorted JSON.
//!
//! The keys `$contentType`, `$customMetadata` and `$customMetadataBase64` are therefore
//! reserved in the metadata of events read through the protocol.

use std::collections::HashMap;

use base64::Engine as _;
use pg_eventstore_client::{EventData, RecordedEvent};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::proto::shared::{self, StreamIdentifier};
use crate::proto::streams::read_resp::read_event::RecordedEvent as WireEvent;

/// Metadata key naming the content type of data stored as base64.
pub const CONTENT_TYPE_KEY: &str = "$contentType";
/// Metadata key holding custom metadata's exact text.
pub const CUSTOM_METADATA_KEY: &str = "$customMetadata";
/// Metadata key holding custom metadata's exact bytes, base64, when they are not UTF-8.
pub const CUSTOM_METADATA_BASE64_KEY: &str = "$customMetadataBase64";

/// The content type of JSON data.
pub const JSON: &str = "application/json";
/// The content type of every other data.
pub const OCTET_STREAM: &str = "application/octet-stream";

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a message cannot be stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// A proposed event lacks `type` or `content-type` in its metadata.
    #[error("event {index} lacks the metadata properties type and content-type")]
    MissingMetadata {
        /// The event's index in the append, from 0.
        index: usize,
    },
    /// A proposed event has no id.
    #[error("event {index} has no id")]
    MissingId {
        /// The event's index.
        index: usize,
    },
    /// An id that is not a UUID.
    #[error("{0:?} is not a UUID")]
    BadUuid(String),
    /// A stream name that is not UTF-8, or none.
    #[error("the stream name is missing or not UTF-8")]
    BadStreamName,
}

/// The stream name a `StreamIdentifier` carries.
pub fn stream_name(identifier: Option<&StreamIdentifier>) -> Result<String, CodecError> {
    let identifier = identifier.ok_or(CodecError::BadStreamName)?;
    String::from_utf8(identifier.stream_name.clone()).map_err(|_| CodecError::BadStreamName)
}

/// A `StreamIdentifier` for `stream`.
pub fn stream_identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: stream.as_bytes().to_vec(),
    }
}

/// The UUID a protocol `UUID` carries, in either form.
pub fn uuid_of(id: &shared::Uuid) -> Result<Uuid, CodecError> {
    match &id.value {
        Some(shared::uuid::Value::String(text)) => {
            Uuid::parse_str(text).map_err(|_| CodecError::BadUuid(text.clone()))
        }
        Some(shared::uuid::Value::Structured(parts)) => Ok(Uuid::from_u64_pair(
            parts.most_significant_bits as u64,
            parts.least_significant_bits as u64,
        )),
        None => Err(CodecError::BadUuid(String::new())),
    }
}

/// A protocol `UUID` for `id`: the string form, or the structured one when asked for.
pub fn wire_uuid(id: Uuid, structured: bool) -> shared::Uuid {
    let value = if structured {
        let (most, least) = id.as_u64_pair();
        shared::uuid::Value::Structured(shared::uuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })
    } else {
        shared::uuid::Value::String(id.hyphenated().to_string())
    };
    shared::Uuid { value: Some(value) }
}

/// A proposed event as the store's [`EventData`]; `index` is its place in the append.
pub fn event_data(
    index: usize,
    id: Option<&shared::Uuid>,
    metadata: &HashMap<String, String>,
    custom_metadata: &[u8],
    data: Vec<u8>,
) -> Result<EventData, CodecError> {
    let id = uuid_of(id.ok_or(CodecError::MissingId { index })?)?;
    let (Some(event_type), Some(content_type)) =
        (metadata.get("type"), metadata.get("content-type"))
    else {
        return Err(CodecError::MissingMetadata { index });
    };
    let mut object = custom_metadata_object(custom_metadata);
    let json = (content_type == JSON)
        .then(|| serde_json::from_slice::<Box<RawValue>>(&data).ok())
        .flatten();
    let event = match json {
        Some(value) => {
            // The reserved key must not make stored JSON read as base64.
            if let Some(object) = object.as_mut() {
                object.remove(CONTENT_TYPE_KEY);
            }
            EventData::raw(event_type.clone(), value)
        }
        None => {
            let stored = if content_type == JSON {
                JSON
            } else {
                OCTET_STREAM
            };
            object
                .get_or_insert_with(Map::new)
                .insert(CONTENT_TYPE_KEY.to_owned(), Value::from(stored));
            let text = serde_json::to_string(&BASE64.encode(&data)).expect("a string serializes");
            EventData::raw(
                event_type.clone(),
                RawValue::from_string(text).expect("a JSON string"),
            )
        }
    };
    let event = event.id(id);
    Ok(match object {
        Some(object) => event
            .metadata(&object)
            .expect("a JSON object is event metadata"),
        None => event,
    })
}

/// The metadata object to store for `custom` bytes (`None`: none).
fn custom_metadata_object(custom: &[u8]) -> Option<Map<String, Value>> {
    if custom.is_empty() {
        return None;
    }
    let mut object = match serde_json::from_slice::<Value>(custom) {
        Ok(Value::Object(object)) => object,
        _ => {
            let mut object = Map::new();
            match std::str::from_utf8(custom) {
                Ok(text) => object.insert(CUSTOM_METADATA_KEY.to_owned(), Value::from(text)),
                Err(_) => object.insert(
                    CUSTOM_METADATA_BASE64_KEY.to_owned(),
                    Value::from(BASE64.encode(custom)),
                ),
            };
            return Some(object);
        }
    };
    object.remove(CUSTOM_METADATA_BASE64_KEY);
    object.remove(CUSTOM_METADATA_KEY);
    let canonical = serde_json::to_vec(&object).expect("a JSON object serializes");
    if canonical != custom || object.contains_key(CONTENT_TYPE_KEY) {
        let text = std::str::from_utf8(custom).expect("parsed JSON is UTF-8");
        object.insert(CUSTOM_METADATA_KEY.to_owned(), Value::from(text));
    }
    Some(object)
}

/// What a stored event's data and metadata are on the wire.
pub struct Payload {
    /// The content type.
    pub content_type: &'static str,
    /// The data's bytes.
    pub data: Vec<u8>,
    /// The custom metadata's bytes.
    pub custom_metadata: Vec<u8>,
}

/// The wire form of a stored event's data and metadata.
pub fn payload(event: &RecordedEvent) -> Payload {
    let metadata = event.metadata.get();
    if metadata == "{}" {
        return Payload {
            content_type: JSON,
            data: event.data.get().as_bytes().to_vec(),
            custom_metadata: Vec::new(),
        };
    }
    let mut object: Map<String, Value> = serde_json::from_str(metadata).unwrap_or_default();
    let stored = object.remove(CONTENT_TYPE_KEY);
    let (content_type, data) = match stored.as_ref().and_then(Value::as_str) {
        Some(stored) => match serde_json::from_str::<String>(event.data.get())
            .ok()
            .and_then(|text| BASE64.decode(text).ok())
        {
            Some(bytes) => (if stored == JSON { JSON } else { OCTET_STREAM }, bytes),
            // Not what this server stores: hand the JSON out as it is.
            None => (JSON, event.data.get().as_bytes().to_vec()),
        },
        None => (JSON, event.data.get().as_bytes().to_vec()),
    };
    let custom_metadata = if let Some(Value::String(text)) = object.get(CUSTOM_METADATA_KEY) {
        text.as_bytes().to_vec()
    } else if let Some(bytes) = object
        .get(CUSTOM_METADATA_BASE64_KEY)
        .and_then(Value::as_str)
        .and_then(|text| BASE64.decode(text).ok())
    {
        bytes
    } else if object.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&object).expect("a JSON object serializes")
    };
    Payload {
        content_type,
        data,
        custom_metadata,
    }
}

/// `recorded_at` as the protocol's `created`: 100-ns ticks since the Unix epoch.
pub fn ticks(event: &RecordedEvent) -> i64 {
    event.recorded_at.timestamp_micros() * 10
}

/// A stored event as the protocol's `RecordedEvent`: its position is both the commit and
/// the prepare position.
pub fn wire_event(event: &RecordedEvent, structured_ids: bool) -> WireEvent {
    let payload = payload(event);
    let mut metadata = HashMap::with_capacity(3);
    metadata.insert("type".to_owned(), event.event_type.clone());
    metadata.insert("content-type".to_owned(), payload.content_type.to_owned());
    metadata.insert("created".to_owned(), ticks(event).to_string());
    WireEvent {
        id: Some(wire_uuid(event.id, structured_ids)),
        stream_identifier: Some(stream_identifier(&event.stream)),
        stream_revision: event.version,
        prepare_position: event.position,
        commit_position: event.position,
        metadata,
        custom_metadata: payload.custom_metadata,
        data: payload.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(event: &EventData, id: Uuid) -> RecordedEvent {
        let json = serde_json::to_value(event).unwrap();
        let metadata = json
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        RecordedEvent {
            position: 7 << 20,
            stream: "s-1".to_owned(),
            version: 0,
            event_type: json["type"].as_str().unwrap().to_owned(),
            data: serde_json::value::to_raw_value(&json["data"]).unwrap(),
            metadata: serde_json::value::to_raw_value(&metadata).unwrap(),
            id,
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
        }
    }

    fn round_trip(content_type: &str, data: &[u8], custom: &[u8]) -> Payload {
        let id = Uuid::new_v4();
        let metadata = HashMap::from([
            ("type".to_owned(), "t".to_owned()),
            ("content-type".to_owned(), content_type.to_owned()),
        ]);
        let event = event_data(
            0,
            Some(&wire_uuid(id, false)),
            &metadata,
            custom,
            data.to_vec(),
        )
        .unwrap();
        payload(&stored(&event, id))
    }

    #[test]
    fn binary_data_and_any_custom_metadata_come_back_byte_for_byte() {
        let binary = [0_u8, 159, 146, 150, 255, b'{'];
        for custom in [
            &b""[..],
            br#"{"b":1,"a":[2,3]}"#,
            br#"{"a":[2,3],"b":1}"#,
            br#"{ "spaced" : true }"#,
            br#"{"$contentType":"x","$customMetadata":1}"#,
            b"plain text",
            &[0xff, 0xfe, 0],
            b"[1,2]",
        ] {
            let back = round_trip(OCTET_STREAM, &binary, custom);
            assert_eq!(back.content_type, OCTET_STREAM);
            assert_eq!(back.data, binary);
            assert_eq!(
                back.custom_metadata,
                custom,
                "{:?}",
                String::from_utf8_lossy(custom)
            );
        }
    }

    #[test]
    fn json_data_is_stored_as_json_and_unparseable_json_as_its_bytes() {
        let back = round_trip(JSON, br#"{"username":"ada"}"#, b"");
        assert_eq!(back.content_type, JSON);
        let value: Value = serde_json::from_slice(&back.data).unwrap();
        assert_eq!(value, serde_json::json!({"username": "ada"}));
        for data in [&b""[..], b"{not json", b"\xff"] {
            let back = round_trip(JSON, data, br#"{"$contentType":"text/plain"}"#);
            assert_eq!(back.content_type, JSON);
            assert_eq!(back.data, data);
            assert_eq!(back.custom_metadata, br#"{"$contentType":"text/plain"}"#);
        }
        // Other content types read back as the protocol's octet-stream.
        assert_eq!(
            round_trip("text/plain", b"hi", b"").content_type,
            OCTET_STREAM
        );
    }

    #[test]
    fn metadata_objects_stay_queryable_in_the_store() {
        let id = Uuid::new_v4();
        let metadata = HashMap::from([
            ("type".to_owned(), "t".to_owned()),
            ("content-type".to_owned(), JSON.to_owned()),
        ]);
        let custom = br#"{"$correlationId":"c","$causationId":"d"}"#;
        let event = event_data(
            0,
            Some(&wire_uuid(id, false)),
            &metadata,
            custom,
            b"{}".to_vec(),
        )
        .unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["metadata"]["$correlationId"], "c");
        assert_eq!(json["metadata"]["$causationId"], "d");
        // Canonical metadata is stored once.
        let canonical = br#"{"$causationId":"d","$correlationId":"c"}"#;
        let event = event_data(
            0,
            Some(&wire_uuid(id, false)),
            &metadata,
            canonical,
            b"1".to_vec(),
        )
        .unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["metadata"].as_object().unwrap().len(), 2);
        assert_eq!(payload(&stored(&event, id)).custom_metadata, canonical);
    }

    #[test]
    fn missing_type_or_content_type_is_refused() {
        let id = wire_uuid(Uuid::new_v4(), false);
        let metadata = HashMap::from([("type".to_owned(), "t".to_owned())]);
        let error = event_data(3, Some(&id), &metadata, b"", b"{}".to_vec()).unwrap_err();
        assert_eq!(error, CodecError::MissingMetadata { index: 3 });
        assert_eq!(
            event_data(0, None, &metadata, b"", vec![]).unwrap_err(),
            CodecError::MissingId { index: 0 }
        );
    }

    #[test]
    fn ids_convert_in_both_forms() {
        let id = Uuid::parse_str("9a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9").unwrap();
        assert_eq!(uuid_of(&wire_uuid(id, true)).unwrap(), id);
        assert_eq!(uuid_of(&wire_uuid(id, false)).unwrap(), id);
        let Some(shared::uuid::Value::Structured(parts)) = wire_uuid(id, true).value else {
            panic!("structured")
        };
        assert_eq!(parts.most_significant_bits as u64, 0x9a1b_2c3d_4e5f_6071);
        assert!(uuid_of(&shared::Uuid {
            value: Some(shared::uuid::Value::String("nope".to_owned()))
        })
        .is_err());
    }

    #[test]
    fn created_is_in_ticks() {
        let event = stored(&EventData::json("t", Value::Null), Uuid::nil());
        assert_eq!(ticks(&event), 17_000_000_001_234_560);
    }
}
