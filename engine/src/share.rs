//! Sharing aggregations among views and rules.
//!
//! Alerting workloads hold many rules that aggregate the same rows the same way and differ only in
//! the condition they apply to the result (`HAVING avg(cpu) > 90` for one team, `> 95` for
//! another). Every `Reduce` below the root of a view's or rule's plan therefore becomes a *shared
//! relation*: a dataflow of its own that maintains the aggregation and arranges its output, which
//! every plan containing the same subplan imports instead of aggregating again. A thousand such
//! rules maintain one aggregation and a thousand cheap filters of its changes.
//!
//! Two subplans are the same when their plans are equal ([`Plan`]'s derived `Eq` and `Hash`: every
//! operator, expression, literal, type and the names of what they read). A shared relation lives while any
//! view, rule or other shared relation uses it; the last user's `DROP` drops it.

use std::collections::HashMap;

use crate::plan::{shared_name, MfpStep, Node, Plan};

struct SharedRelation {
    /// The subplan it stands for, as the users' plans have it.
    key: Plan,
    /// The plan the shared relation's dataflow runs (itself rewritten to use shared relations).
    plan: Plan,
    /// Views, rules and shared relations using it.
    users: usize,
    /// The names of the shared relations its plan uses.
    uses: Vec<String>,
}

/// What [`Shares::share`] made of a plan.
pub(crate) struct Shared {
    /// The plan with shared subplans replaced by relations.
    pub plan: Plan,
    /// The names of the shared relations `plan` uses; give them back with [`Shares::release`].
    pub uses: Vec<String>,
    /// Shared relations to create first, in order (inputs before their users).
    pub create: Vec<(String, Plan)>,
}

/// The shared relations of an engine: by internal name, and the name of each subplan.
#[derive(Default)]
pub(crate) struct Shares {
    by_name: HashMap<String, SharedRelation>,
    by_plan: HashMap<Plan, String>,
    next: u64,
}

impl Shares {
    /// Replaces every `Reduce` below the root of `plan` by a shared relation, creating the ones
    /// that do not exist yet. A `Reduce` whose rows the root only renames or computes columns from
    /// (no filter in between) is not shared: its output is the relation's output row for row, and
    /// a second arrangement of it would double the work.
    pub fn share(&mut self, plan: &Plan) -> Shared {
        let mut uses = Vec::new();
        let mut create = Vec::new();
        let plan = self.rewrite(plan, false, &mut uses, &mut create);
        Shared { plan, uses, create }
    }

    fn rewrite(
        &mut self,
        plan: &Plan,
        share_here: bool,
        uses: &mut Vec<String>,
        create: &mut Vec<(String, Plan)>,
    ) -> Plan {
        if share_here && matches!(plan.node, Node::Reduce { .. }) {
            let name = match self.by_plan.get(plan) {
                Some(name) => {
                    let name = name.clone();
                    self.by_name.get_mut(&name).expect("shared").users += 1;
                    name
                }
                None => {
                    let mut inner_uses = Vec::new();
                    let inner = self.rewrite_children(plan, false, &mut inner_uses, create);
                    self.next += 1;
                    let name = shared_name(self.next);
                    create.push((name.clone(), inner.clone()));
                    self.by_plan.insert(plan.clone(), name.clone());
                    self.by_name.insert(
                        name.clone(),
                        SharedRelation {
                            key: plan.clone(),
                            plan: inner,
                            users: 1,
                            uses: inner_uses,
                        },
                    );
                    name
                }
            };
            uses.push(name.clone());
            return Plan {
                node: Node::Relation { name },
                schema: plan.schema.clone(),
            };
        }
        self.rewrite_children(plan, share_here, uses, create)
    }

    /// Rewrites the inputs of `plan`; `share_here` says whether `plan` itself could have been
    /// shared (it is below a filter or a stateful operator).
    fn rewrite_children(
        &mut self,
        plan: &Plan,
        share_here: bool,
        uses: &mut Vec<String>,
        create: &mut Vec<(String, Plan)>,
    ) -> Plan {
        // Below a map that filters nothing, an input is in the same place as the map.
        let filters =
            |steps: &[MfpStep]| steps.iter().any(|s| !matches!(s, MfpStep::Project { .. }));
        let mut sub = |p: &Plan, share: bool| Box::new(self.rewrite(p, share, uses, create));
        let node = match &plan.node {
            Node::Source { .. } | Node::Relation { .. } | Node::Constant { .. } => {
                plan.node.clone()
            }
            Node::Mfp { input, steps } => Node::Mfp {
                input: sub(input, share_here || filters(steps)),
                steps: steps.clone(),
            },
            Node::Reduce { input, keys, aggs } => Node::Reduce {
                input: sub(input, true),
                keys: *keys,
                aggs: aggs.clone(),
            },
            Node::Join {
                left,
                right,
                left_keys,
                right_keys,
                kind,
                filter,
            } => Node::Join {
                left: sub(left, true),
                right: sub(right, true),
                left_keys: left_keys.clone(),
                right_keys: right_keys.clone(),
                kind: *kind,
                filter: filter.clone(),
            },
            Node::TopK {
                input,
                group,
                order,
                offset,
                limit,
            } => Node::TopK {
                input: sub(input, true),
                group: group.clone(),
                order: order.clone(),
                offset: *offset,
                limit: *limit,
            },
            Node::Window {
                input,
                partition,
                order,
                funcs,
            } => Node::Window {
                input: sub(input, true),
                partition: partition.clone(),
                order: order.clone(),
                funcs: funcs.clone(),
            },
            Node::Union { inputs } => Node::Union {
                inputs: inputs.iter().map(|p| *sub(p, share_here)).collect(),
            },
        };
        Plan {
            node,
            schema: plan.schema.clone(),
        }
    }

    /// Gives back the uses [`Shares::share`] returned; returns the internal names of the shared
    /// relations nobody uses any more, users before the relations they read.
    pub fn release(&mut self, uses: &[String]) -> Vec<String> {
        let mut dropped = Vec::new();
        let mut stack: Vec<String> = uses.to_vec();
        while let Some(name) = stack.pop() {
            let Some(s) = self.by_name.get_mut(&name) else {
                continue;
            };
            s.users -= 1;
            if s.users == 0 {
                let s = self.by_name.remove(&name).expect("present");
                self.by_plan.remove(&s.key);
                dropped.push(name);
                stack.extend(s.uses);
            }
        }
        dropped
    }

    /// The plan of a shared relation and its number of users.
    pub fn get(&self, name: &str) -> Option<(&Plan, usize)> {
        self.by_name.get(name).map(|s| (&s.plan, s.users))
    }

    /// The internal names of every shared relation `uses` reaches, directly or not.
    pub fn closure(&self, uses: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut stack: Vec<&String> = uses.iter().collect();
        while let Some(name) = stack.pop() {
            if let Some(s) = self.by_name.get(name) {
                if !out.contains(name) {
                    out.push(name.clone());
                    stack.extend(&s.uses);
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}
