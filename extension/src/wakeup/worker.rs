//! The wake-up worker of one database: a background process that sends `NOTIFY eventstore,
//! '<head>'` when the readable head moved, at most once per `eventstore.wakeup_interval`.

use std::ffi::c_char;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use super::listeners::has_listeners;
use super::settings::WAKEUP_INTERVAL_MS;
use super::slots::{State, SLOTS};
use super::{async_notify, CHANNEL};
use crate::spi::{Connection, Statement};

/// The longest pause between checks while committed events are not yet readable.
const MAX_LAGGING_POLL_MS: u64 = 100;
/// A worker with nothing to do for this long exits; the next append starts a new one.
const IDLE_EXIT_SECS: u64 = 60;

fn copy_name(target: &mut [c_char], name: &str) {
    let room = target.len() - 1;
    for (to, from) in target.iter_mut().zip(name.bytes().take(room)) {
        *to = from as c_char;
    }
}

pub(super) fn register_worker(index: usize, database: u32) -> bool {
    let mut worker = pg_sys::BackgroundWorker {
        bgw_flags: (pg_sys::BGWORKER_SHMEM_ACCESS | pg_sys::BGWORKER_BACKEND_DATABASE_CONNECTION)
            as i32,
        bgw_start_time: pg_sys::BgWorkerStartTime::BgWorkerStart_RecoveryFinished,
        bgw_restart_time: pg_sys::BGW_NEVER_RESTART,
        bgw_main_arg: pg_sys::Datum::from(index),
        ..pg_sys::BackgroundWorker::default()
    };
    copy_name(
        &mut worker.bgw_name,
        &format!("pg_eventstore wake-ups for database {database}"),
    );
    copy_name(&mut worker.bgw_type, "pg_eventstore wake-ups");
    copy_name(&mut worker.bgw_library_name, "pg_eventstore");
    copy_name(&mut worker.bgw_function_name, "eventstore_wakeup_main");
    let mut handle = std::ptr::null_mut();
    // SAFETY: worker is fully initialised; the handle is palloc'd and left to the context.
    unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut worker, &mut handle) }
}

/// The wake-up worker of one database; `arg` is its slot's index.
///
/// # Safety
/// Started by the postmaster as a background worker registered by `register_worker`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn eventstore_wakeup_main(arg: pg_sys::Datum) {
    let index = arg.value();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: the callback frees this worker's slot however the process exits.
    unsafe { pg_sys::before_shmem_exit(Some(release_slot), arg) };
    let database = SLOTS.share().0[index].database;
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    // The worker runs as the bootstrap superuser: nothing a user creates in the database may
    // stand in for what its queries name.
    // A wake-up is a hint: its commit need not wait for the WAL flush.
    // SAFETY: GUC assignments of constant strings, before any query.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    {
        let mut slots = SLOTS.exclusive();
        let slot = &mut slots.0[index];
        if slot.stop || slot.database != database || slot.state != State::Starting {
            return;
        }
        slot.state = State::Running;
        // SAFETY: MyProc is this process' PGPROC.
        slot.procno = unsafe { (*pg_sys::MyProc).pgprocno };
    }

    let mut notified = 0_i64;
    let mut handled = -1_i64;
    let mut lagging_poll_ms = 0_u64;
    let mut idle_for = Duration::ZERO;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloads the configuration files, as every process does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let (committed, open, stop) = {
            let slots = SLOTS.share();
            let slot = &slots.0[index];
            (
                slot.committed.load(Ordering::Acquire),
                slot.open_transactions.load(Ordering::Acquire),
                slot.stop,
            )
        };
        if stop {
            break;
        }
        let timeout = if committed != handled || lagging_poll_ms > 0 {
            idle_for = Duration::ZERO;
            handled = committed;
            if !has_listeners(database) {
                // Nobody to wake. A session that starts listening reads from its checkpoint
                // first, so skipping these commits loses nothing.
                lagging_poll_ms = 0;
                if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
                    break;
                }
                continue;
            }
            let (head, readable_below) =
                BackgroundWorker::transaction(move || notify_head(notified));
            notified = notified.max(head);
            // Committed events at or above the bound belong next to a transaction that is
            // still running; check again soon, backing off, until they become readable.
            let interval_ms = u64::try_from(WAKEUP_INTERVAL_MS.get()).unwrap_or(1);
            lagging_poll_ms = if readable_below <= committed {
                (lagging_poll_ms * 2).clamp(interval_ms, MAX_LAGGING_POLL_MS.max(interval_ms))
            } else {
                0
            };
            // SAFETY: a plain sleep; coalesces the commits of the next interval.
            unsafe { pg_sys::pg_usleep(std::ffi::c_long::from(WAKEUP_INTERVAL_MS.get()) * 1000) };
            Duration::from_millis(if lagging_poll_ms > 0 {
                lagging_poll_ms
            } else {
                1000
            })
        } else {
            if open == 0
                && idle_for >= Duration::from_secs(IDLE_EXIT_SECS)
                && exit_if_idle(index, committed)
            {
                break;
            }
            idle_for += Duration::from_secs(1);
            Duration::from_secs(1)
        };
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            break;
        }
    }
}

/// Marks the slot free when nothing arrived since `committed` was read; false otherwise.
fn exit_if_idle(index: usize, committed: i64) -> bool {
    let mut slots = SLOTS.exclusive();
    let slot = &mut slots.0[index];
    if slot.committed.load(Ordering::Acquire) != committed
        || slot.open_transactions.load(Ordering::Acquire) != 0
    {
        return false;
    }
    slot.reset(0);
    true
}

/// The readable head and the bound below which every committed event is readable, in one
/// statement prepared once for the life of the worker. It spells out the bodies of
/// `eventstore.head_position()` and `eventstore._visible_below()`: SQL functions with a FROM
/// are not inlined, and calling them parsed and planned their bodies on every wake-up,
/// which cost more than running them.
static HEAD: Statement = Statement {
    sql: c"SELECT (SELECT coalesce(max(e.position), 0) FROM eventstore.events AS e \
                   WHERE e.position < h.visible_below), \
                  h.visible_below \
           FROM eventstore._log_horizon AS h",
    arg_types: &[],
};

/// Sends `NOTIFY eventstore, '<head>'` when the readable head moved past `notified`, and
/// returns the head and the bound below which every committed event is readable.
fn notify_head(notified: i64) -> (i64, i64) {
    let (head, readable_below) = {
        let connection = Connection::open();
        let rows = connection.execute(&HEAD, &[]);
        (rows.i64(0, 1).unwrap_or(0), rows.i64(0, 2).unwrap_or(0))
    };
    if head > notified {
        let payload = std::ffi::CString::new(head.to_string()).expect("digits only");
        // SAFETY: NUL-terminated strings, inside a transaction.
        unsafe { async_notify(CHANNEL, &payload) };
    }
    (head, readable_below)
}

#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    let index = arg.value();
    // SAFETY: reads of backend globals.
    let procno = unsafe { (*pg_sys::MyProc).pgprocno };
    let mut slots = SLOTS.exclusive();
    let slot = &mut slots.0[index];
    // Starting: this worker exits before it ran (stop requested, or its database went away).
    if (slot.state == State::Running && slot.procno == procno) || slot.state == State::Starting {
        slot.reset(0);
    }
}
