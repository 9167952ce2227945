//! Validates the `events` argument of `append` and turns each event into column values.
//!
//! The JSON is walked in its binary `jsonb` form: `data` and `metadata` are copied out as
//! `jsonb` values without ever being printed or re-parsed, which keeps large batches cheap.

use std::collections::HashMap;
use std::ffi::c_char;

use pgrx::datum::{IntoDatum, Uuid};
use pgrx::pg_sys;
use pgrx::pg_sys::{jbvType, JsonbIteratorToken};

use crate::error::{invalid_parameter, raise};
use crate::limits::MAX_TYPE_BYTES;

const FIELDS_HINT: &str =
    "An event is a JSON object {\"type\": text, \"data\": any JSON, \"metadata\": object?, \"id\": uuid?}.";

/// One event ready to be stored.
pub(crate) struct NewEvent {
    pub(crate) id: uuid::Uuid,
    /// Whether the caller chose the id (and may therefore be retrying).
    pub(crate) id_supplied: bool,
    /// `text`
    pub(crate) event_type: pg_sys::Datum,
    /// `jsonb`
    pub(crate) data: pg_sys::Datum,
    /// `jsonb`
    pub(crate) metadata: pg_sys::Datum,
}

impl NewEvent {
    pub(crate) fn id_datum(&self) -> pg_sys::Datum {
        Uuid::from_bytes(*self.id.as_bytes())
            .into_datum()
            .expect("a uuid is never NULL")
    }
}

/// Parses and validates `events`, a detoasted `jsonb` datum. Refuses with 22023, naming the
/// event and the field, anything that is not a non-empty array of well-formed events, including
/// two events with the same id.
pub(crate) fn parse(events: pg_sys::Datum) -> Vec<NewEvent> {
    // SAFETY: `events` is a non-NULL jsonb datum; the container walk below follows jsonb.h.
    unsafe {
        let jsonb = pg_sys::pg_detoast_datum(events.cast_mut_ptr()) as *mut pg_sys::Jsonb;
        let root = &mut (*jsonb).root as *mut pg_sys::JsonbContainer;
        let header = (*root).header;
        if header & pg_sys::JB_FARRAY == 0 || header & pg_sys::JB_FSCALAR != 0 {
            raise(
                invalid_parameter("events must be a JSON array of event objects")
                    .set_hint(FIELDS_HINT),
            );
        }
        let count = header & pg_sys::JB_CMASK;
        if count == 0 {
            raise(invalid_parameter("events must contain at least one event"));
        }
        let empty_object = empty_object();
        let mut batch: Vec<NewEvent> = Vec::with_capacity(count as usize);
        let mut supplied_ids: HashMap<uuid::Uuid, u32> = HashMap::new();
        for index in 0..count {
            let element = pg_sys::getIthJsonbValueFromContainer(root, index);
            let event = parse_event(index as usize, &*element, empty_object);
            if event.id_supplied {
                if let Some(first) = supplied_ids.insert(event.id, index) {
                    raise(invalid_parameter(format!(
                        "events[{index}].id {} repeats the id of events[{first}]",
                        event.id
                    )));
                }
            }
            batch.push(event);
        }
        batch
    }
}

/// The jsonb `{}`, built once per batch as the default metadata.
///
/// # Safety
/// Calls into the server (`JsonbValueToJsonb`): only in a backend, inside a memory context
/// that outlives the batch (the function call's).
unsafe fn empty_object() -> pg_sys::Datum {
    let mut value: pg_sys::JsonbValue = std::mem::zeroed();
    value.type_ = jbvType::jbvObject;
    to_jsonb(&mut value)
}

/// Whether `value` is a jsonb object.
///
/// # Safety
/// `value` comes from a jsonb container walk, so a `jbvBinary` value's `data` points to a
/// valid container.
unsafe fn is_object(value: &pg_sys::JsonbValue) -> bool {
    value.type_ == jbvType::jbvBinary && (*value.val.binary.data).header & pg_sys::JB_FOBJECT != 0
}

/// The value of key `name` in `object`, if present.
///
/// # Safety
/// `object` points to a valid jsonb object container that lives as long as the value used.
unsafe fn field(object: *mut pg_sys::JsonbContainer, name: &str) -> Option<pg_sys::JsonbValue> {
    let mut value: pg_sys::JsonbValue = std::mem::zeroed();
    let found = pg_sys::getKeyJsonValueFromContainer(
        object,
        name.as_ptr() as *const c_char,
        name.len() as i32,
        &mut value,
    );
    (!found.is_null()).then_some(value)
}

/// `value` as text when it is a jsonb string.
///
/// # Safety
/// A `jbvString` value's `val`/`len` describe bytes inside a container that outlives the
/// returned `&str`.
unsafe fn string(value: &pg_sys::JsonbValue) -> Option<&str> {
    if value.type_ != jbvType::jbvString {
        return None;
    }
    let bytes = std::slice::from_raw_parts(
        value.val.string.val as *const u8,
        value.val.string.len as usize,
    );
    // jsonb strings are in the server encoding, which the extension requires to be UTF8.
    std::str::from_utf8(bytes).ok()
}

/// `value` as a jsonb datum, palloc'd in the current memory context.
///
/// # Safety
/// `value` is a well-formed `JsonbValue`; only in a backend.
unsafe fn to_jsonb(value: &mut pg_sys::JsonbValue) -> pg_sys::Datum {
    pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(value))
}

/// Validates element `index` of the batch; raises 22023 naming the field.
///
/// # Safety
/// `element` comes from the batch's container walk; `empty_object` is a jsonb datum valid for
/// the call.
unsafe fn parse_event(
    index: usize,
    element: &pg_sys::JsonbValue,
    empty_object: pg_sys::Datum,
) -> NewEvent {
    if !is_object(element) {
        raise(
            invalid_parameter(format!("events[{index}] must be a JSON object"))
                .set_hint(FIELDS_HINT),
        );
    }
    let object = element.val.binary.data;
    let mut known_fields = 0;

    let event_type = match field(object, "type") {
        None => raise(
            invalid_parameter(format!("events[{index}].type is missing")).set_hint(FIELDS_HINT),
        ),
        Some(value) => {
            known_fields += 1;
            match string(&value) {
                Some(name) if !name.is_empty() && name.len() <= MAX_TYPE_BYTES => {
                    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                        name.as_ptr() as *const c_char,
                        name.len() as i32,
                    ))
                }
                _ => raise(invalid_parameter(format!(
                    "events[{index}].type must be a non-empty string of at most {MAX_TYPE_BYTES} bytes"
                ))),
            }
        }
    };

    let data = match field(object, "data") {
        None => raise(
            invalid_parameter(format!("events[{index}].data is missing"))
                .set_hint("Use {} or null for an event without data."),
        ),
        Some(mut value) => {
            known_fields += 1;
            to_jsonb(&mut value)
        }
    };

    let metadata = match field(object, "metadata") {
        None => empty_object,
        Some(value) if value.type_ == jbvType::jbvNull => {
            known_fields += 1;
            empty_object
        }
        Some(mut value) if is_object(&value) => {
            known_fields += 1;
            to_jsonb(&mut value)
        }
        Some(_) => raise(invalid_parameter(format!(
            "events[{index}].metadata must be a JSON object"
        ))),
    };

    let (id, id_supplied) = match field(object, "id") {
        None => (uuid::Uuid::now_v7(), false),
        Some(value) if value.type_ == jbvType::jbvNull => {
            known_fields += 1;
            (uuid::Uuid::now_v7(), false)
        }
        Some(value) => {
            known_fields += 1;
            match string(&value).map(uuid::Uuid::try_parse) {
                Some(Ok(id)) => (id, true),
                Some(Err(_)) => raise(invalid_parameter(format!(
                    "events[{index}].id is not a valid UUID: \"{}\"",
                    string(&value).unwrap_or_default()
                ))),
                None => raise(invalid_parameter(format!(
                    "events[{index}].id must be a UUID string"
                ))),
            }
        }
    };

    if (*object).header & pg_sys::JB_CMASK != known_fields {
        let unknown = unknown_field(object).unwrap_or_default();
        raise(
            invalid_parameter(format!(
                "events[{index}] has an unknown field \"{unknown}\""
            ))
            .set_hint(FIELDS_HINT),
        );
    }

    NewEvent {
        id,
        id_supplied,
        event_type,
        data,
        metadata,
    }
}

/// The first key of `object` that is not an event field, for the error message.
///
/// # Safety
/// `object` points to a valid jsonb object container.
unsafe fn unknown_field(object: *mut pg_sys::JsonbContainer) -> Option<String> {
    let mut iterator = pg_sys::JsonbIteratorInit(object);
    let mut value: pg_sys::JsonbValue = std::mem::zeroed();
    loop {
        match pg_sys::JsonbIteratorNext(&mut iterator, &mut value, true) {
            JsonbIteratorToken::WJB_DONE => return None,
            JsonbIteratorToken::WJB_KEY => {
                let key = string(&value).unwrap_or_default();
                if !matches!(key, "type" | "data" | "metadata" | "id") {
                    return Some(key.to_owned());
                }
            }
            _ => {}
        }
    }
}
