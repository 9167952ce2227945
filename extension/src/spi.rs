//! A thin layer over SPI with plans prepared once per backend.
//!
//! The append path runs a handful of fixed statements on every call; parsing and planning them
//! each time would cost more than executing them, so each statement is prepared on first use
//! and kept (`SPI_keepplan`) for the life of the backend. The plan cache re-plans them when the
//! tables change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::pg_sys;

/// One statement with fixed argument types.
pub(crate) struct Statement {
    pub(crate) sql: &'static CStr,
    pub(crate) arg_types: &'static [pg_sys::Oid],
}

thread_local! {
    static PLANS: RefCell<HashMap<usize, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// An open SPI connection; disconnects when dropped. On an ERROR, Postgres cleans up the
/// connection itself as part of the abort.
pub(crate) struct Connection(());

impl Connection {
    pub(crate) fn open() -> Self {
        // SAFETY: called from a SQL-callable function, inside a transaction.
        let status = unsafe { pg_sys::SPI_connect() };
        assert_eq!(status, pg_sys::SPI_OK_CONNECT as i32, "SPI_connect failed");
        Connection(())
    }

    fn plan(&self, statement: &Statement) -> pg_sys::SPIPlanPtr {
        let key = statement.sql.as_ptr() as usize;
        if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).copied()) {
            return plan;
        }
        let mut arg_types = statement.arg_types.to_vec();
        // SAFETY: connected; the SQL is a NUL-terminated constant and the types match it.
        let plan = unsafe {
            let plan = pg_sys::SPI_prepare(
                statement.sql.as_ptr(),
                arg_types.len() as i32,
                arg_types.as_mut_ptr(),
            );
            assert!(
                !plan.is_null(),
                "SPI_prepare failed for {:?}",
                statement.sql
            );
            pg_sys::SPI_keepplan(plan);
            plan
        };
        PLANS.with(|plans| plans.borrow_mut().insert(key, plan));
        plan
    }

    /// Runs `statement` with a fresh snapshot (READ COMMITTED) or the transaction's snapshot
    /// (REPEATABLE READ and SERIALIZABLE), as any statement of the calling transaction would.
    pub(crate) fn execute(
        &self,
        statement: &Statement,
        args: &[Option<pg_sys::Datum>],
    ) -> Rows<'_> {
        self.run(statement, args, false)
    }

    /// Runs a read-only `statement` with the latest committed state, whatever the isolation
    /// level: what the transaction's snapshot may predate.
    pub(crate) fn read_latest(
        &self,
        statement: &Statement,
        args: &[Option<pg_sys::Datum>],
    ) -> Rows<'_> {
        self.run(statement, args, true)
    }

    fn run(&self, statement: &Statement, args: &[Option<pg_sys::Datum>], latest: bool) -> Rows<'_> {
        assert_eq!(
            args.len(),
            statement.arg_types.len(),
            "argument count of {:?}",
            statement.sql
        );
        let plan = self.plan(statement);
        let mut values: Vec<pg_sys::Datum> = args
            .iter()
            .map(|arg| arg.unwrap_or(pg_sys::Datum::from(0usize)))
            .collect();
        let nulls: Vec<std::ffi::c_char> = args
            .iter()
            .map(|arg| if arg.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
            .collect();
        // SAFETY: connected; `values` and `nulls` match the plan's arguments; the latest
        // snapshot is registered for the statement and released after it.
        let status = unsafe {
            if latest {
                let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
                let status = pg_sys::SPI_execute_snapshot(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    snapshot,
                    std::ptr::null_mut(),
                    true,
                    false,
                    0,
                );
                pg_sys::UnregisterSnapshot(snapshot);
                status
            } else {
                pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0)
            }
        };
        assert!(
            status >= 0,
            "SPI failed with status {status} for {:?}",
            statement.sql
        );
        // SAFETY: SPI_tuptable belongs to the statement just run and lives until the next one.
        unsafe {
            Rows {
                table: pg_sys::SPI_tuptable,
                count: pg_sys::SPI_processed as usize,
                _connection: std::marker::PhantomData,
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: paired with the SPI_connect in `open`.
        unsafe {
            pg_sys::SPI_finish();
        }
    }
}

/// The rows a statement returned; valid until the next statement on the connection.
pub(crate) struct Rows<'c> {
    table: *mut pg_sys::SPITupleTable,
    count: usize,
    _connection: std::marker::PhantomData<&'c Connection>,
}

impl Rows<'_> {
    /// Rows returned, or for INSERT without RETURNING, rows inserted.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Column `column` (1-based) of row `row`, or `None` for SQL NULL.
    pub(crate) fn datum(&self, row: usize, column: i32) -> Option<pg_sys::Datum> {
        assert!(
            !self.table.is_null() && row < self.count,
            "row {row} of {}",
            self.count
        );
        let mut is_null = false;
        // SAFETY: `row` is in range and the table is alive.
        let datum = unsafe {
            let tuple = *(*self.table).vals.add(row);
            pg_sys::SPI_getbinval(tuple, (*self.table).tupdesc, column, &mut is_null)
        };
        (!is_null).then_some(datum)
    }

    /// An `int8` column.
    pub(crate) fn i64(&self, row: usize, column: i32) -> Option<i64> {
        self.datum(row, column).map(|datum| datum.value() as i64)
    }
}
