//! `DROP SOURCE | VIEW | RULE | SINK | SILENCE`.

use crate::*;

impl Tocsin {
    /// `DROP ...`: refused while others depend on it; a source's companions go with it.
    pub(crate) async fn drop_object(
        &self,
        kind: ObjectKind,
        name: String,
        if_exists: bool,
    ) -> Result<StatementResult> {
        let mut catalog = self.catalog.lock().await;
        match catalog.entries.get(&name) {
            None if if_exists => {
                return Ok(StatementResult::Ddl {
                    statement: format!("DROP {}", kind.as_str()),
                    name,
                })
            }
            None => {
                return Err(SqlError::plan(format!(
                    "{} \"{name}\" does not exist",
                    kind.as_str().to_lowercase()
                )))
            }
            Some(e) if e.kind() != kind => {
                return Err(SqlError::plan(format!(
                    "\"{name}\" is a {}, not a {}",
                    e.kind().as_str().to_lowercase(),
                    kind.as_str().to_lowercase()
                )))
            }
            Some(e) if e.system => {
                return Err(SqlError::plan(format!(
                    "\"{name}\" is one of tocsin's own relations and cannot be dropped"
                )))
            }
            Some(_) => {}
        }
        // Rules that name it (as a sink, or in `inhibit`) keep it.
        let named_by: Option<(&str, NamesIn)> = match kind {
            ObjectKind::Sink => Some(("send to it", |o| &o.sinks)),
            ObjectKind::Rule => Some(("name it in inhibit", |o| &o.inhibit)),
            _ => None,
        };
        if let Some((how, names)) = named_by {
            let users: Vec<&str> = catalog
                .entries
                .values()
                .filter(|e| {
                    matches!(&e.def, ObjectDef::Rule { options, .. } if names(options).contains(&name))
                })
                .map(|e| e.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(SqlError::plan(format!(
                    "cannot drop {} \"{name}\": rule(s) {} {how}; drop or re-create them first",
                    kind.as_str().to_lowercase(),
                    users.join(", ")
                )));
            }
        }
        if let Some(ObjectDef::Source {
            owner: Some(owner), ..
        }) = catalog.entries.get(&name).map(|e| &e.def)
        {
            return Err(SqlError::plan(format!(
                "\"{name}\" belongs to source {owner}: DROP SOURCE {owner} drops both"
            )));
        }
        // A source's companions go with it.
        let mut dropped = catalog.companions(&name);
        dropped.push(name.clone());
        let users: Vec<&str> = catalog
            .entries
            .values()
            .filter(|e| !dropped.contains(&e.name))
            .filter(|e| {
                e.plan()
                    .is_some_and(|p| p.dependencies().iter().any(|d| dropped.contains(d)))
            })
            .map(|e| e.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(SqlError::plan(format!(
                "cannot drop \"{name}\": {} depend(s) on {}",
                users.join(", "),
                if dropped.len() > 1 {
                    format!("it or on {}", dropped[..dropped.len() - 1].join(", "))
                } else {
                    "it".to_string()
                }
            )));
        }
        for d in &dropped {
            if matches!(
                kind,
                ObjectKind::Source | ObjectKind::View | ObjectKind::Rule
            ) {
                self.engine.drop_object(d)?;
            }
            catalog.entries.remove(d);
        }
        Ok(StatementResult::Ddl {
            statement: format!("DROP {}", kind.as_str()),
            name,
        })
    }
}

/// Where a rule's options name other objects.
type NamesIn = fn(&RuleOptions) -> &Vec<String>;
