//! Wake-ups for subscribers on channel `eventstore`, without a NOTIFY per append.
//!
//! `NOTIFY` serializes every notifying commit on a cluster-wide lock, so appends do not
//! notify themselves. When the library is in `shared_preload_libraries`, an appending
//! transaction instead records, at commit, the newest position it wrote in a shared-memory
//! slot of its database and sets the latch of that database's wake-up worker. The worker
//! (one background process per database that appends, started on the first append) reads
//! `eventstore.head_position()` and sends `NOTIFY eventstore, '<head>'` when it moved, at most
//! once per `eventstore.wakeup_interval` milliseconds (default 3). It keeps polling briefly while committed events are not yet
//! readable (an older transaction is still running), so a wake-up is sent when they become
//! readable even if nothing else commits.
//!
//! Without preloading there is no shared memory: each appending transaction then queues one
//! `NOTIFY eventstore` with an empty payload itself (correct, but notifying commits are
//! serialized). `eventstore.wakeup_mode()` says which of the two is in effect.
//!
//! Workers of databases where no session has run `LISTEN eventstore` do no work: the utility
//! hook counts listening sessions per database.
//!
//! A worker holds a connection to its database, which `DROP DATABASE`, `ALTER DATABASE` and
//! `CREATE DATABASE ... TEMPLATE` refuse to work around; a utility hook asks the worker of
//! such a database to exit first. Idle workers exit after [`IDLE_EXIT_SECS`].

use std::cell::Cell;
use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PgLwLock};

/// Databases that can have a wake-up worker at once; others fall back to per-transaction
/// NOTIFY.
const MAX_DATABASES: usize = 64;
/// `eventstore.wakeup_interval`: the shortest time between two wake-ups of one database, in
/// milliseconds. Each wake-up is a small transaction of the worker; under a steady stream of
/// commits this bounds them to a few hundred per second.
static WAKEUP_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(3);
/// The longest pause between checks while committed events are not yet readable.
const MAX_LAGGING_POLL_MS: u64 = 100;
/// A worker with nothing to do for this long exits; the next append starts a new one.
const IDLE_EXIT_SECS: u64 = 60;
/// A worker registered this long ago that never reported running is presumed failed.
const START_TIMEOUT_SECS: i64 = 10;
const CHANNEL: &CStr = c"eventstore";

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Free,
    Starting,
    Running,
}

/// One database's wake-up state. The plain fields change under the exclusive lock; the
/// atomics are updated by committing backends under the shared lock, so commits of
/// different backends never wait for one another here.
#[derive(Default)]
struct Slot {
    database: u32,
    state: State,
    /// Set by the utility hook: the worker must exit.
    stop: bool,
    /// `pgprocno` of the running worker, whose latch commits set.
    procno: i32,
    /// `GetCurrentTimestamp()` when the worker was registered.
    registered_at: i64,
    /// The newest position committed in this database.
    committed: AtomicI64,
    /// Transactions that appended and have not ended yet; the worker does not exit idle
    /// while one could still commit.
    open_transactions: AtomicU32,
}

impl Slot {
    fn holds(&self, database: u32) -> bool {
        self.state != State::Free && self.database == database
    }

    fn reset(&mut self, database: u32) {
        *self = Slot {
            database,
            ..Slot::default()
        };
    }

    fn end_transaction(&self) {
        let _ = self
            .open_transactions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

struct Slots([Slot; MAX_DATABASES]);

impl Default for Slots {
    fn default() -> Self {
        Slots(std::array::from_fn(|_| Slot::default()))
    }
}

// SAFETY: plain data and atomics, no pointers.
unsafe impl PGRXSharedMemory for Slots {}

// SAFETY: `PgLwLock::new` requires the lock to be set up by `pg_shmem_init!` before use;
// `init` does that in `_PG_init` during `shared_preload_libraries`, and every use is behind
// `preloaded()`, which is only true then.
static SLOTS: PgLwLock<Slots> = unsafe { PgLwLock::new(c"pg_eventstore wake-ups") };

/// Sessions that ran `LISTEN eventstore`, per database, so a worker whose database has no
/// listener does no work at all. Counted by the utility hook; a full table makes every worker
/// notify regardless.
#[derive(Clone, Copy, Default)]
struct ListenerCount {
    database: u32,
    sessions: u32,
}

#[derive(Clone, Copy)]
struct Listeners {
    counts: [ListenerCount; MAX_LISTENING_DATABASES],
    overflowed: bool,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            counts: [ListenerCount::default(); MAX_LISTENING_DATABASES],
            overflowed: false,
        }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Listeners {}

// SAFETY: as for `SLOTS`: set up by `pg_shmem_init!` in `_PG_init`, used only when preloaded.
static LISTENERS: PgLwLock<Listeners> = unsafe { PgLwLock::new(c"pg_eventstore listeners") };
const MAX_LISTENING_DATABASES: usize = 64;

/// Whether `_PG_init` ran during `shared_preload_libraries`, so `SLOTS` exists. Set in the
/// postmaster and inherited by every backend it forks.
static mut PRELOADED: bool = false;

static mut PREVIOUS_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

thread_local! {
    /// The newest position this transaction appended, once it has registered its commit
    /// callback; `None` outside such a transaction.
    static TRANSACTION_HEAD: Cell<Option<i64>> = const { Cell::new(None) };
    /// Whether `transaction_end` is registered in this backend.
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Whether this session is counted in `LISTENERS`.
    static LISTENING: Cell<bool> = const { Cell::new(false) };
    /// Whether the exit callback that uncounts this session is registered.
    static EXIT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C-unwind" {
    #[link_name = "Async_Notify"]
    fn async_notify_unguarded(channel: *const c_char, payload: *const c_char);
}

/// `Async_Notify` of commands/async.h, which pgrx does not bind.
unsafe fn async_notify(channel: &CStr, payload: &CStr) {
    // SAFETY: the boundary turns a Postgres ERROR into a Rust panic pgrx can rethrow.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            async_notify_unguarded(channel.as_ptr(), payload.as_ptr())
        })
    }
}

/// Called from `_PG_init`.
pub(crate) fn init() {
    GucRegistry::define_int_guc(
        c"eventstore.wakeup_interval",
        c"Shortest time between two wake-ups on channel eventstore, in milliseconds.",
        c"Used by the wake-up worker when pg_eventstore is in shared_preload_libraries.",
        &WAKEUP_INTERVAL_MS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    // SAFETY: _PG_init runs single-threaded, before any backend uses these statics.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PRELOADED = true;
        pg_shmem_init!(SLOTS);
        pg_shmem_init!(LISTENERS);
        PREVIOUS_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

fn preloaded() -> bool {
    // SAFETY: written only in _PG_init.
    unsafe { PRELOADED }
}

/// `eventstore.wakeup_mode()`: `coalesced` with the worker, `per_transaction` without.
pub(crate) fn mode() -> &'static str {
    if preloaded() {
        "coalesced"
    } else {
        "per_transaction"
    }
}

/// Records that the current transaction appended up to `last_position`, so a wake-up is sent
/// once it commits.
pub(crate) fn appended(last_position: i64) {
    if let Some(head) = TRANSACTION_HEAD.get() {
        TRANSACTION_HEAD.set(Some(head.max(last_position)));
        return;
    }
    if !preloaded() || !watch_transaction() {
        // SAFETY: constant NUL-terminated strings; duplicates within a transaction are
        // folded by Postgres.
        unsafe { async_notify(CHANNEL, c"") };
        return;
    }
    TRANSACTION_HEAD.set(Some(last_position));
    if !CALLBACK_REGISTERED.get() {
        CALLBACK_REGISTERED.set(true);
        // SAFETY: a plain function, registered once per backend for the rest of its life;
        // it does nothing in transactions that did not append.
        unsafe { pg_sys::RegisterXactCallback(Some(transaction_end), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if TRANSACTION_HEAD.get().is_none() {
        return;
    }
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => on_commit(),
        // A prepared transaction commits later, maybe in another session: subscribers see its
        // events on their next poll.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => on_abort(),
        _ => {}
    }
}

/// Counts this transaction in its database's slot, starting the database's worker when it
/// has none. False when no slot or worker is available.
fn watch_transaction() -> bool {
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    {
        // The common case: the database has a running worker.
        let slots = SLOTS.share();
        if let Some(slot) = slots
            .0
            .iter()
            .find(|s| s.holds(database) && s.state == State::Running)
        {
            slot.open_transactions.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let (index, register) = {
        let mut slots = SLOTS.exclusive();
        let start_failed_long_ago = |s: &Slot| {
            s.state == State::Starting
                && now - s.registered_at > START_TIMEOUT_SECS * 1_000_000
                && s.open_transactions.load(Ordering::Acquire) == 0
        };
        let found = slots.0.iter().position(|s| s.holds(database));
        // A worker that died before it started (its database dropped meanwhile) leaves its
        // slot Starting; such slots are reused once nothing else is free.
        let index = match found
            .or_else(|| slots.0.iter().position(|s| s.state == State::Free))
            .or_else(|| slots.0.iter().position(start_failed_long_ago))
        {
            Some(index) => index,
            None => return false,
        };
        let slot = &mut slots.0[index];
        let start_failed = slot.state == State::Starting
            && now - slot.registered_at > START_TIMEOUT_SECS * 1_000_000;
        let register = slot.state == State::Free || start_failed;
        if slot.state == State::Free || slot.database != database {
            slot.reset(database);
        }
        if register {
            slot.state = State::Starting;
            slot.registered_at = now;
            slot.stop = false;
        }
        slot.open_transactions.fetch_add(1, Ordering::AcqRel);
        (index, register)
    };
    if register && !register_worker(index, database) {
        SLOTS.exclusive().0[index].reset(0);
        return false;
    }
    true
}

fn on_commit() {
    let head = TRANSACTION_HEAD.replace(None).unwrap_or(0);
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let latch = {
        let slots = SLOTS.share();
        let Some(slot) = slots.0.iter().find(|s| s.holds(database)) else {
            return;
        };
        slot.committed.fetch_max(head, Ordering::AcqRel);
        slot.end_transaction();
        (slot.state == State::Running).then_some(slot.procno)
    };
    // Waking the worker is a context switch; without listeners it would have nothing to do.
    if let Some(procno) = latch.filter(|_| has_listeners(database)) {
        set_latch(procno);
    }
}

fn on_abort() {
    TRANSACTION_HEAD.set(None);
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    if let Some(slot) = SLOTS.share().0.iter().find(|s| s.holds(database)) {
        slot.end_transaction();
    }
}

/// Counts or uncounts this session as a listener on channel `eventstore`.
fn set_listening(listening: bool) {
    if LISTENING.get() == listening {
        return;
    }
    LISTENING.set(listening);
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let mut listeners = LISTENERS.exclusive();
    let index = listeners
        .counts
        .iter()
        .position(|c| c.sessions > 0 && c.database == database)
        .or_else(|| listeners.counts.iter().position(|c| c.sessions == 0));
    match (index, listening) {
        (Some(index), true) => {
            let count = &mut listeners.counts[index];
            count.database = database;
            count.sessions += 1;
        }
        (Some(index), false) => {
            let count = &mut listeners.counts[index];
            if count.database == database {
                count.sessions = count.sessions.saturating_sub(1);
            }
        }
        (None, _) => listeners.overflowed = true,
    }
    drop(listeners);
    if listening {
        // The worker may have skipped commits while nobody listened; let it look now.
        let procno = SLOTS
            .share()
            .0
            .iter()
            .find(|s| s.holds(database) && s.state == State::Running)
            .map(|s| s.procno);
        if let Some(procno) = procno {
            set_latch(procno);
        }
    }
    if listening && !EXIT_CALLBACK.get() {
        EXIT_CALLBACK.set(true);
        // SAFETY: registers a plain function, run when this backend exits.
        unsafe { pg_sys::before_shmem_exit(Some(uncount_at_exit), pg_sys::Datum::from(0)) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn uncount_at_exit(_code: i32, _arg: pg_sys::Datum) {
    set_listening(false);
}

/// Whether any session of `database` listens on channel `eventstore`.
fn has_listeners(database: u32) -> bool {
    let listeners = LISTENERS.share();
    listeners.overflowed
        || listeners
            .counts
            .iter()
            .any(|c| c.sessions > 0 && c.database == database)
}

fn set_latch(procno: i32) {
    let Ok(procno) = usize::try_from(procno) else {
        return;
    };
    // SAFETY: procno is the pgprocno of a live worker, an index into ProcGlobal->allProcs,
    // whose latches live as long as shared memory.
    unsafe {
        let proc_ = (*pg_sys::ProcGlobal).allProcs.add(procno);
        pg_sys::SetLatch(&raw mut (*proc_).procLatch);
    }
}

fn copy_name(target: &mut [c_char], name: &str) {
    let room = target.len() - 1;
    for (to, from) in target.iter_mut().zip(name.bytes().take(room)) {
        *to = from as c_char;
    }
}

fn register_worker(index: usize, database: u32) -> bool {
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

/// Sends `NOTIFY eventstore, '<head>'` when the readable head moved past `notified`, and
/// returns the head and the bound below which every committed event is readable.
fn notify_head(notified: i64) -> (i64, i64) {
    // A wake-up is a hint; its commit need not wait for the WAL flush.
    Spi::run("SET LOCAL synchronous_commit = off").expect("SET LOCAL succeeds");
    let (head, readable_below) =
        Spi::get_two::<i64, i64>("SELECT eventstore.head_position(), eventstore._visible_below()")
            .expect("eventstore.head_position() runs");
    let head = head.unwrap_or(0);
    let readable_below = readable_below.unwrap_or(0);
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

/// Asks the worker of database `name`, if any, to exit, because the statement needs the
/// database to have no other sessions.
fn stop_worker_of(name: *const c_char) {
    if name.is_null() {
        return;
    }
    // SAFETY: name is a NUL-terminated string of the parse tree.
    let database = unsafe { pg_sys::get_database_oid(name, true) }.to_u32();
    if database == 0 {
        return;
    }
    let latch = {
        let mut slots = SLOTS.exclusive();
        let Some(slot) = slots.0.iter_mut().find(|s| s.holds(database)) else {
            return;
        };
        slot.stop = true;
        (slot.state == State::Running).then_some(slot.procno)
    };
    if let Some(procno) = latch {
        set_latch(procno);
    }
    // DROP/ALTER/CREATE DATABASE wait up to five seconds for other sessions to leave, which
    // is ample for the worker to see the flag and exit.
}

/// The database name a `CREATE DATABASE` copies from, when it names a template.
unsafe fn template_of(options: *mut pg_sys::List) -> *const c_char {
    // SAFETY: options is the statement's list of DefElem nodes.
    unsafe {
        if options.is_null() {
            return std::ptr::null();
        }
        for i in 0..usize::try_from((*options).length).unwrap_or(0) {
            let def = (*(*options).elements.add(i))
                .ptr_value
                .cast::<pg_sys::DefElem>();
            if CStr::from_ptr((*def).defname) == c"template" && !(*def).arg.is_null() {
                return pg_sys::defGetString(def);
            }
        }
        std::ptr::null()
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the arguments are those Postgres passes to ProcessUtility.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if !node.is_null() {
            match (*node).type_ {
                pg_sys::NodeTag::T_DropdbStmt => {
                    stop_worker_of((*node.cast::<pg_sys::DropdbStmt>()).dbname)
                }
                pg_sys::NodeTag::T_AlterDatabaseStmt => {
                    stop_worker_of((*node.cast::<pg_sys::AlterDatabaseStmt>()).dbname)
                }
                pg_sys::NodeTag::T_CreatedbStmt => {
                    stop_worker_of(template_of((*node.cast::<pg_sys::CreatedbStmt>()).options))
                }
                pg_sys::NodeTag::T_RenameStmt => {
                    let rename = node.cast::<pg_sys::RenameStmt>();
                    if (*rename).renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                        stop_worker_of((*rename).subname);
                    }
                }
                _ => {}
            }
        }
        let listening = if node.is_null() {
            None
        } else {
            match (*node).type_ {
                pg_sys::NodeTag::T_ListenStmt => {
                    let name = (*node.cast::<pg_sys::ListenStmt>()).conditionname;
                    (!name.is_null() && CStr::from_ptr(name) == CHANNEL).then_some(true)
                }
                pg_sys::NodeTag::T_UnlistenStmt => {
                    let name = (*node.cast::<pg_sys::UnlistenStmt>()).conditionname;
                    (name.is_null() || CStr::from_ptr(name) == CHANNEL).then_some(false)
                }
                pg_sys::NodeTag::T_DiscardStmt => ((*node.cast::<pg_sys::DiscardStmt>()).target
                    == pg_sys::DiscardMode::DISCARD_ALL)
                    .then_some(false),
                _ => None,
            }
        };
        match PREVIOUS_UTILITY_HOOK {
            Some(previous) => previous(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
        if let Some(listening) = listening {
            set_listening(listening);
        }
    }
}
