//! Typed errors of the storage layer, and the mapping from driver errors to them.

use sqlx::error::ErrorKind;

/// Everything a store operation can fail with.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The row addressed by id, prefix or kid does not exist.
    #[error("not found")]
    NotFound,
    /// A unique value is already taken. The payload names the field that clashed:
    /// `email`, `username`, `phone`, `prefix`, `kid`, `session`, `refresh_token` or `id`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller passed something the store refuses (unsupported URL, unknown key state,
    /// non-positive rate-limit window).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A stored value could not be decoded (e.g. a JSON column edited by hand).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Applying the embedded migrations failed.
    #[error("migration: {0}")]
    Migration(String),
    /// Preparing the SQLite file's directory failed.
    #[error("io: {0}")]
    Io(String),
    /// Any other database failure (connection, timeout, lock, syntax).
    #[error("database: {0}")]
    Db(String),
}

/// Unique constraints and the field name reported for each: the SQLite spelling
/// (`table.column` in "UNIQUE constraint failed: …"), the PostgreSQL constraint name
/// (named indexes in the migration, `<table>_pkey` for primary keys), and the field.
const UNIQUE_FIELDS: &[(&str, &str, &str)] = &[
    ("users.email", "users_email_key", "email"),
    ("users.username", "users_username_key", "username"),
    ("users.phone", "users_phone_key", "phone"),
    ("users.id", "users_pkey", "id"),
    ("api_keys.prefix", "api_keys_prefix_key", "prefix"),
    ("api_keys.id", "api_keys_pkey", "id"),
    ("sessions.id", "sessions_pkey", "session"),
    (
        "refresh_tokens.hash",
        "refresh_tokens_pkey",
        "refresh_token",
    ),
    ("signing_keys.kid", "signing_keys_pkey", "kid"),
];

/// Names the field behind a unique violation, from whatever the backend tells us.
fn conflict_field(constraint: Option<&str>, message: &str) -> String {
    for (sqlite, postgres, field) in UNIQUE_FIELDS {
        if constraint == Some(*postgres) || message.contains(sqlite) {
            return (*field).to_string();
        }
    }
    // Unknown constraint (a later migration forgot to extend the table above): still a
    // conflict, named as precisely as the backend allows.
    constraint.unwrap_or(message).to_string()
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
                StoreError::Conflict(conflict_field(db.constraint(), db.message()))
            }
            other => StoreError::Db(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::conflict_field;

    #[test]
    fn store_conflict_names_field_from_either_backend() {
        assert_eq!(
            conflict_field(None, "UNIQUE constraint failed: users.email"),
            "email"
        );
        assert_eq!(
            conflict_field(Some("users_username_key"), "duplicate key value"),
            "username"
        );
        assert_eq!(
            conflict_field(Some("refresh_tokens_pkey"), "duplicate key value"),
            "refresh_token"
        );
        assert_eq!(conflict_field(Some("other_key"), "dup"), "other_key");
    }
}
