//! Bounds on arguments. Anything outside them is refused with 22023 before any work is done.

/// Longest stream name, in bytes. Stream names are btree keys, which Postgres caps at about
/// a third of a page.
pub(crate) const MAX_STREAM_BYTES: usize = 1024;

/// Longest event type name, in bytes.
pub(crate) const MAX_TYPE_BYTES: usize = 1024;

/// Largest `max_count` a read accepts.
pub(crate) const MAX_READ_COUNT: i32 = 100_000;

/// Bits of a position that number the events within one transaction; the bits above them
/// hold the transaction id: `position = xid << 20 | index` (see src/position.rs).
pub(crate) const POSITION_INDEX_BITS: u32 = 20;

/// Most events one transaction can append.
pub(crate) const MAX_EVENTS_PER_TRANSACTION: u64 = 1 << POSITION_INDEX_BITS;
