//! Tables: relations whose rows are replaced in place by key, for state that tocsin maintains
//! itself (the current alert instances). A write puts rows (each replacing the row with the same
//! key, as a retraction and an insertion) and deletes keys, so a table holds one row per key
//! however often its rows change, and its arrangement compacts the history away. A table has no
//! retention and no `ts` requirement: rows stay until they are replaced or deleted.
//!
//! Every worker has the table's input (so every worker's frontier moves on), but all writes go to
//! the first worker, which holds the rows by key.

use std::collections::HashMap;

use differential_dataflow::input::InputSession;

use crate::render::Time;
use crate::row::Row;

/// Rows to put into a table, each replacing the row with the same key, and the keys whose rows
/// leave it. A key is the row's key columns, in the order the table was created with.
#[derive(Clone, Debug, Default)]
pub struct TableWrite {
    pub put: Vec<Row>,
    pub delete: Vec<Row>,
}

impl TableWrite {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// One worker's side of a table.
pub(crate) struct Table {
    input: InputSession<Time, Row, isize>,
    /// The key columns.
    key: Vec<usize>,
    /// The current rows by key (only on the worker that takes the writes).
    rows: HashMap<Row, Row>,
}

impl Table {
    pub fn new(input: InputSession<Time, Row, isize>, key: Vec<usize>) -> Self {
        Table {
            input,
            key,
            rows: HashMap::new(),
        }
    }

    fn key_of(&self, row: &Row) -> Row {
        self.key.iter().map(|&i| row[i].clone()).collect()
    }

    /// Applies a write at `time` (at least the input's time).
    pub fn write(&mut self, time: Time, write: TableWrite) {
        let time = time.max(*self.input.time());
        for key in write.delete {
            if let Some(old) = self.rows.remove(&key) {
                self.input.update_at(old, time, -1);
            }
        }
        for row in write.put {
            let key = self.key_of(&row);
            match self.rows.insert(key, row.clone()) {
                Some(old) if old == row => continue,
                Some(old) => self.input.update_at(old, time, -1),
                None => {}
            }
            self.input.update_at(row, time, 1);
        }
        self.input.flush();
    }

    /// Every later write has a time at least `upper`.
    pub fn advance(&mut self, upper: Time) {
        if upper > *self.input.time() {
            self.input.advance_to(upper);
            self.input.flush();
        }
    }

    /// Rows held now (on the worker that takes the writes).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Datum;

    fn row(k: &str, v: i64) -> Row {
        vec![Datum::text(k), Datum::Int(v)].into_boxed_slice()
    }

    fn key(k: &str) -> Row {
        vec![Datum::text(k)].into_boxed_slice()
    }

    #[test]
    fn a_put_replaces_the_row_of_its_key_and_a_delete_removes_it() {
        timely::execute_directly(|worker| {
            let (input, probe, out) = worker.dataflow::<Time, _, _>(|scope| {
                let mut input = InputSession::<Time, Row, isize>::new();
                let coll = input.to_collection(scope);
                let out = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
                let sink = out.clone();
                let probe = coll
                    .inspect(move |(r, t, d)| sink.borrow_mut().push((r.clone(), *t, *d)))
                    .probe()
                    .0;
                (input, probe, out)
            });
            let mut t = Table::new(input, vec![0]);
            t.write(
                1,
                TableWrite {
                    put: vec![row("a", 1), row("b", 1)],
                    delete: vec![],
                },
            );
            t.write(
                2,
                TableWrite {
                    put: vec![row("a", 2), row("b", 1)],
                    delete: vec![],
                },
            );
            t.write(
                3,
                TableWrite {
                    put: vec![],
                    delete: vec![key("b"), key("zz")],
                },
            );
            t.advance(4);
            while probe.less_than(&4) {
                worker.step();
            }
            let mut seen = out.borrow().clone();
            seen.sort();
            assert_eq!(
                seen,
                vec![
                    (row("a", 1), 1, 1),
                    (row("a", 1), 2, -1),
                    (row("a", 2), 2, 1),
                    (row("b", 1), 1, 1),
                    (row("b", 1), 3, -1),
                ],
                "an unchanged put writes nothing; deleting an unknown key does nothing"
            );
            assert_eq!(t.len(), 1);
        });
    }
}
