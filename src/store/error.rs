//! The store's error type: what went wrong, in terms a handler can act on, whichever backend runs.

/// An error from the store. Handlers map [`StoreError::Unavailable`] to `503` (try
/// again) and everything else to `500`; neither variant names the backend's types.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy right now (connection refused or
    /// lost, pool exhausted, database locked, shutting down): the request may succeed
    /// if it is tried again later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The writer has stopped (the service is shutting down).
    #[error("the store's writer has stopped")]
    Closed,
    /// Anything else: a failed statement, corrupt data, a bug.
    #[error("database error: {0}")]
    Internal(String),
}

impl StoreError {
    /// True when trying again later may succeed (the HTTP layer answers `503`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if db.code().is_some_and(|c| unavailable_code(&c)) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// SQLSTATE classes and codes (PostgreSQL) or result codes (SQLite, as sqlx
/// reports them) that mean "not now" rather than "never": connection exceptions
/// (08), operator intervention such as a shutdown (57P01-57P03), too many
/// connections (53300), serialization failures and deadlocks (40001, 40P01),
/// SQLite's BUSY (5) and LOCKED (6).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "5" | "6"
        )
}

impl From<&rusqlite::Error> for StoreError {
    fn from(e: &rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen,
            ) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_errors_are_unavailable_others_internal() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(StoreError::from(sqlx::Error::Io(std::io::Error::other("reset"))).is_unavailable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
        assert!(StoreError::Closed.is_unavailable());
    }

    #[test]
    fn sqlite_busy_is_unavailable_constraint_is_internal() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(StoreError::from(&busy).is_unavailable());
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        );
        assert!(!StoreError::from(&constraint).is_unavailable());
    }

    #[test]
    fn postgres_connection_codes_are_unavailable() {
        for c in ["08006", "08001", "57P01", "53300", "40001"] {
            assert!(unavailable_code(c), "{c}");
        }
        for c in ["23505", "42P01", "22P02"] {
            assert!(!unavailable_code(c), "{c}");
        }
    }
}
