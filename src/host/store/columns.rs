//! How typed values sit in the store's columns.
//!
//! - States and kinds are enums stored as their snake_case names; each
//!   column has a SQL `CHECK` listing the same names (the store's tests
//!   write every variant, and refuse a name that is not one).
//! - JSON documents are TEXT; a document that does not parse is an error
//!   naming the object it belongs to, never a silent `null`.

use serde_json::Value;

/// Implements `ToSql` and `FromSql` for enums that derive strum's
/// `IntoStaticStr` and `EnumString` (snake_case, like their serde names).
macro_rules! text_enum_column {
    ($($t:ty),* $(,)?) => {
        $(
            impl rusqlite::types::ToSql for $t {
                fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                    let name: &'static str = self.into();
                    Ok(rusqlite::types::ToSqlOutput::from(name))
                }
            }

            impl rusqlite::types::FromSql for $t {
                fn column_result(
                    value: rusqlite::types::ValueRef<'_>,
                ) -> rusqlite::types::FromSqlResult<Self> {
                    let text = value.as_str()?;
                    text.parse().map_err(|_| {
                        rusqlite::types::FromSqlError::Other(
                            format!("{text:?} is not a {}", stringify!($t)).into(),
                        )
                    })
                }
            }
        )*
    };
}
pub(crate) use text_enum_column;

/// A JSON document column. Reading one that is not JSON fails, naming
/// `what` (the object and field) in the error.
pub fn json(
    row: &rusqlite::Row<'_>,
    index: usize,
    what: impl Fn() -> String,
) -> rusqlite::Result<Value> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!(
                "the stored {} is not valid JSON ({e}); the store is damaged",
                what()
            )
            .into(),
        )
    })
}
