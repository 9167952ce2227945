//! The utility hook: counts the sessions that `LISTEN eventstore`, and asks a database's
//! worker to exit before `DROP DATABASE`, `ALTER DATABASE` and `CREATE DATABASE ...
//! TEMPLATE`, which need the database to themselves.

use std::ffi::{c_char, CStr};

use pgrx::prelude::*;

use super::listeners::set_listening;
use super::slots::{State, SLOTS};
use super::{set_latch, CHANNEL};

static mut PREVIOUS_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook (from `_PG_init`, when preloaded).
///
/// # Safety
/// Only in `_PG_init`, which runs single-threaded before any statement.
pub(super) unsafe fn install() {
    // SAFETY: as the function's contract says.
    unsafe {
        PREVIOUS_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
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
