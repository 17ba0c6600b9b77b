//! `FROM HTTP` and `FROM WEBSOCKET`: sources whose rows clients push, in the columns the source
//! declares. The two differ only in the endpoint a user is told to use; both take every format.

use std::sync::Arc;

use arrow::datatypes::Schema;

use crate::source::{Columns, Derived, Options, SourceConnector};

/// A push source kind, by the name written after `FROM`.
pub struct Push(pub &'static str);

impl SourceConnector for Push {
    fn name(&self) -> &'static str {
        self.0
    }
    fn columns(&self) -> Columns {
        Columns::Declared
    }
    fn example(&self) -> &'static str {
        match self.0 {
            "HTTP" => "CREATE SOURCE example (host TEXT, cpu DOUBLE) FROM HTTP",
            _ => "CREATE SOURCE example (host TEXT, cpu DOUBLE) FROM WEBSOCKET WITH (format = 'ndjson', retain = '10 minutes')",
        }
    }
    fn derive(&self, _: &Options) -> crate::Result<Derived> {
        Ok(Derived {
            schema: Arc::new(Schema::empty()),
            companions: Vec::new(),
        })
    }
}
