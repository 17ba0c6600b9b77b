//! `SUBSCRIBE`: following a relation or a query as it changes.

use crate::*;

impl Tocsin {
    /// `SUBSCRIBE TO name` or `SUBSCRIBE TO (SELECT ...)`: the snapshot, then every change.
    pub(crate) async fn subscribe_to(&self, target: SubscribeTarget) -> Result<StatementResult> {
        let plan = {
            let catalog = self.catalog.lock().await;
            match target {
                SubscribeTarget::Name(name) => read_plan(&catalog, name)?,
                SubscribeTarget::Query(q) => self.plan_continuous(&catalog, &q).await?,
            }
        };
        Ok(StatementResult::Subscribe(
            self.engine.subscribe(plan).await?,
        ))
    }
}

/// The plan that reads a relation as it is.
pub(crate) fn read_plan(catalog: &Catalog, name: String) -> Result<Plan> {
    let e = catalog
        .entries
        .get(&name)
        .filter(|e| e.is_relation())
        .ok_or_else(|| SqlError::plan(format!("relation \"{name}\" does not exist")))?;
    let node = if e.kind() == ObjectKind::Source {
        Node::Source { name }
    } else {
        Node::Relation { name }
    };
    Ok(Plan {
        node,
        schema: e.schema.clone(),
    })
}
