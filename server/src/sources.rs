//! Where the rows of the connectors tocsin runs itself go (`FROM HOST`, `FROM SNMP`,
//! `FROM SNMP TRAP`: every kind whose [`SourceConnector::run`] gives a task): the ingest path,
//! for the source and its companions as they were when the task started, so that a task that
//! outlived its source cannot write into one created again under its name. The tasks are started
//! and stopped by [`crate::tasks::reconcile`].
//!
//! [`SourceConnector::run`]: tocsin_connectors::source::SourceConnector::run

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use tocsin_connectors::source::{Output, PushError, Running, SourceConnector, Task};

use crate::ingest::{IngestError, Provenance};
use crate::state::AppRef;

/// A source's rows into the ingest path.
struct IngestOutput {
    app: AppRef,
    /// The generation of the source and of each companion when the task started.
    generations: HashMap<String, Option<u64>>,
    /// Whether the rows go to the other replicas: not for a collector, which every replica
    /// runs itself.
    replicated: bool,
}

#[async_trait::async_trait]
impl Output for IngestOutput {
    async fn push(&self, relation: &str, batch: RecordBatch) -> Result<(), PushError> {
        let generation = self.generations.get(relation).copied().flatten();
        let rows = (1..=batch.num_rows()).collect();
        match self
            .app
            .ingest
            .push_to(
                relation,
                generation,
                batch,
                rows,
                true,
                Provenance::Local {
                    replicated: self.replicated,
                },
            )
            .await
        {
            Ok(o) => {
                if !o.rejected.is_empty() {
                    tracing::warn!(
                        "source {relation}: {} row(s) refused: {:?}",
                        o.rejected.len(),
                        o.rejected.first()
                    );
                }
                Ok(())
            }
            Err(e @ (IngestError::Refused(_) | IngestError::Stopped)) => {
                Err(PushError::Gone(e.to_string()))
            }
            Err(e) => Err(PushError::NotStored(e.to_string())),
        }
    }

    fn now(&self) -> i64 {
        self.app.tocsin.engine().clock().now() as i64
    }
}

/// The task of source `name` of `kind` (with its `companions`), if the connector runs one.
pub fn task(
    app: &AppRef,
    kind: &dyn SourceConnector,
    name: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    companions: Vec<String>,
    interval: Option<Duration>,
    options: Vec<(String, String)>,
) -> Option<Task> {
    let mut generations = HashMap::new();
    for relation in std::iter::once(name.to_string()).chain(companions) {
        let generation = app.ingest.generation(&relation);
        generations.insert(relation, generation);
    }
    kind.run(Running {
        name: name.to_string(),
        schema,
        interval: interval.unwrap_or(Duration::from_secs(10)),
        options,
        output: Arc::new(IngestOutput {
            app: app.clone(),
            generations,
            replicated: !kind.collecting(),
        }),
        counters: app.metrics.source(name),
        limits: app.limits.labels,
    })
}
