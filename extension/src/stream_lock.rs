//! Serializes appends to one stream, and only to that stream.
//!
//! An append takes an exclusive transaction-scoped lock on its stream before reading the
//! stream's version, so concurrent appends to one stream see each other's versions while
//! appends to different streams never wait for one another. The lock is an advisory lock tag
//! with `objsubid` 0x4553 ("ES"), so it shows in `pg_locks` and cannot collide with the
//! `pg_advisory_lock` keys of applications (those use objsubid 1 and 2).

use pgrx::pg_sys;

/// `locktag_field4` of stream locks.
const STREAM_LOCK_CLASS: u16 = 0x4553;

/// FNV-1a: stable across builds, so backends running different builds of this library during
/// an upgrade still agree on the lock of a stream.
fn stream_hash(stream: &str) -> u64 {
    stream
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Blocks until this transaction holds the append lock of `stream`; released at commit or
/// rollback (or when the enclosing savepoint rolls back).
pub(crate) fn lock_stream(stream: &str) {
    let hash = stream_hash(stream);
    let tag = pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the whole life of a backend that runs SQL.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (hash >> 32) as u32,
        locktag_field3: hash as u32,
        locktag_field4: STREAM_LOCK_CLASS,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: a valid tag; waiting honours lock_timeout, statement_timeout and deadlock checks.
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::stream_hash;

    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(stream_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stream_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(stream_hash("order-1"), stream_hash("order-2"));
    }
}
