//! The alert store: alert instances and the notification outbox in one durable file,
//! `alerts/alerts.log` in the data dir, as checksummed records (see [`crate::records`]).
//!
//! Every change is a record: an instance put or deleted, a notification queued for a sink, a
//! notification delivered. A batch of changes is written and fsynced before anything it implies
//! is sent, so a crash loses nothing that was promised. When the file holds much more than the
//! live state, it is rewritten (to a new file, fsynced, renamed over the old one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tocsin_connectors::sink::Notification;

use crate::records::{read_records, RecordWriter};

/// Where an alert instance is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
        }
    }
}

/// One alert instance, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub values: BTreeMap<String, serde_json::Value>,
    pub state: State,
    /// When the rule's row appeared.
    pub active_since: i64,
    pub firing_since: Option<i64>,
    /// While firing: when the row went away (resolution waits `keep_firing_for` from here).
    pub gone_since: Option<i64>,
    /// The firing notification went out (to every sink of the rule), so a resolve follows.
    pub notified: bool,
    /// When the last firing notification or reminder went out.
    pub last_notified: Option<i64>,
    /// Reminders sent since firing.
    pub repeats: u32,
    /// A silence matched it when it was last looked at.
    #[serde(default)]
    pub silenced: bool,
    /// An inhibiting rule's alert held it back when it was last looked at.
    #[serde(default)]
    pub inhibited: bool,
    /// When it last changed: its row's `updated_at` in `tocsin_alerts`.
    #[serde(default)]
    pub published: i64,
}

impl Instance {
    /// A new pending instance whose row appeared at `now`.
    pub fn pending(
        rule: &str,
        labels: BTreeMap<String, String>,
        values: BTreeMap<String, serde_json::Value>,
        now: i64,
    ) -> Instance {
        Instance {
            rule: rule.to_string(),
            labels,
            values,
            state: State::Pending,
            active_since: now,
            firing_since: None,
            gone_since: None,
            notified: false,
            last_notified: None,
            repeats: 0,
            silenced: false,
            inhibited: false,
            published: now,
        }
    }
}

/// A queued notification for one sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub seq: u64,
    pub sink: String,
    /// When it was queued (a grouping sink waits `group_wait` from its group's first).
    #[serde(default)]
    pub queued_at: i64,
    pub notification: Notification,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Put {
        key: String,
        instance: Instance,
    },
    Del {
        key: String,
    },
    Out(Queued),
    Done {
        seq: u64,
    },
    Seq {
        next: u64,
    },
    /// A grouping sink sent a group's message at `at`.
    Group {
        sink: String,
        key: String,
        at: i64,
    },
}

/// What a batch of changes does to the store.
#[derive(Default)]
pub struct Changes {
    /// Instances put (`Some`) or deleted (`None`), in order.
    pub instances: Vec<(String, Option<Instance>)>,
    pub out: Vec<Queued>,
    pub done: Vec<u64>,
    /// Groups sent: (sink, group key, when).
    pub groups: Vec<(String, String, i64)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.out.is_empty()
            && self.done.is_empty()
            && self.groups.is_empty()
    }
}

pub struct Store {
    dir: PathBuf,
    writer: RecordWriter,
    /// Records written since the file was last rewritten.
    records: u64,
    pub instances: HashMap<String, Instance>,
    pub outbox: BTreeMap<u64, Queued>,
    /// The outbox's sequence numbers by sink.
    pub by_sink: HashMap<String, BTreeSet<u64>>,
    /// When each group of a grouping sink was last sent: by (sink, group key).
    pub groups: HashMap<(String, String), i64>,
    /// The next outbox sequence number.
    pub next_seq: u64,
}

const FILE: &str = "alerts.log";

impl Store {
    /// Opens the store in `dir`, reading what it holds.
    pub fn open(dir: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut instances = HashMap::new();
        let mut outbox: BTreeMap<u64, Queued> = BTreeMap::new();
        let mut groups = HashMap::new();
        let mut next_seq = 1;
        let mut records = 0;
        if path.exists() {
            let r = read_records(&path)?;
            if let Some(t) = r.torn {
                tracing::warn!("alert store {}: cut a torn tail ({t})", path.display());
            }
            for p in r.payloads {
                records += 1;
                let rec: Record = serde_json::from_slice(&p).map_err(|e| {
                    io::Error::other(format!("record {records} cannot be read: {e}"))
                })?;
                match rec {
                    Record::Put { key, instance } => {
                        instances.insert(key, instance);
                    }
                    Record::Del { key } => {
                        instances.remove(&key);
                    }
                    Record::Out(q) => {
                        next_seq = next_seq.max(q.seq + 1);
                        outbox.insert(q.seq, q);
                    }
                    Record::Done { seq } => {
                        outbox.remove(&seq);
                    }
                    Record::Seq { next } => next_seq = next_seq.max(next),
                    Record::Group { sink, key, at } => {
                        groups.insert((sink, key), at);
                    }
                }
            }
        }
        let mut by_sink: HashMap<String, BTreeSet<u64>> = HashMap::new();
        for q in outbox.values() {
            by_sink.entry(q.sink.clone()).or_default().insert(q.seq);
        }
        let writer = RecordWriter::append_to(&path)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            writer,
            records,
            instances,
            outbox,
            by_sink,
            groups,
            next_seq,
        })
    }

    /// Applies and durably records a batch of changes (one fsync).
    pub fn apply(&mut self, changes: Changes) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut recs = Vec::new();
        for (key, instance) in changes.instances {
            match instance {
                Some(instance) => {
                    recs.push(Record::Put {
                        key: key.clone(),
                        instance: instance.clone(),
                    });
                    self.instances.insert(key, instance);
                }
                None => {
                    self.instances.remove(&key);
                    recs.push(Record::Del { key });
                }
            }
        }
        for q in changes.out {
            self.next_seq = self.next_seq.max(q.seq + 1);
            self.by_sink
                .entry(q.sink.clone())
                .or_default()
                .insert(q.seq);
            self.outbox.insert(q.seq, q.clone());
            recs.push(Record::Out(q));
        }
        for seq in changes.done {
            if let Some(q) = self.outbox.remove(&seq) {
                if let Some(seqs) = self.by_sink.get_mut(&q.sink) {
                    seqs.remove(&seq);
                    if seqs.is_empty() {
                        self.by_sink.remove(&q.sink);
                    }
                }
            }
            recs.push(Record::Done { seq });
        }
        for (sink, key, at) in changes.groups {
            self.groups.insert((sink.clone(), key.clone()), at);
            recs.push(Record::Group { sink, key, at });
        }
        for r in &recs {
            self.writer
                .append(&serde_json::to_vec(r).map_err(io::Error::other)?)?;
        }
        self.writer.sync()?;
        self.records += recs.len() as u64;
        let live = (self.instances.len() + self.outbox.len() + self.groups.len()) as u64;
        if self.records > 10_000 && self.records > 4 * live {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Rewrites the file with just the live state.
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.dir.join(format!("{FILE}.new"));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut w = RecordWriter::append_to(&tmp)?;
            let mut n = 1;
            w.append(
                &serde_json::to_vec(&Record::Seq {
                    next: self.next_seq,
                })
                .map_err(io::Error::other)?,
            )?;
            for (key, instance) in &self.instances {
                w.append(
                    &serde_json::to_vec(&Record::Put {
                        key: key.clone(),
                        instance: instance.clone(),
                    })
                    .map_err(io::Error::other)?,
                )?;
                n += 1;
            }
            for q in self.outbox.values() {
                w.append(&serde_json::to_vec(&Record::Out(q.clone())).map_err(io::Error::other)?)?;
                n += 1;
            }
            for ((sink, key), at) in &self.groups {
                let r = Record::Group {
                    sink: sink.clone(),
                    key: key.clone(),
                    at: *at,
                };
                w.append(&serde_json::to_vec(&r).map_err(io::Error::other)?)?;
                n += 1;
            }
            w.sync()?;
            self.records = n;
        }
        let path = self.dir.join(FILE);
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.writer = RecordWriter::append_to(&path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_connectors::sink::Transition;

    fn instance(state: State) -> Instance {
        Instance {
            state,
            ..Instance::pending(
                "r",
                [("host".to_string(), "a".to_string())].into(),
                Default::default(),
                1,
            )
        }
    }

    fn queued(seq: u64) -> Queued {
        Queued {
            seq,
            sink: "s".into(),
            queued_at: 0,
            notification: Notification {
                id: format!("id{seq}"),
                rule: "r".into(),
                state: Transition::Firing,
                severity: "warning".into(),
                labels: Default::default(),
                values: Default::default(),
                summary: String::new(),
                description: String::new(),
                active_since: 1,
                firing_since: Some(2),
                resolved_at: None,
                repeat: 0,
                valid_until: None,
            },
        }
    }

    #[test]
    fn survives_reopening_and_rewrites_keep_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.apply(Changes {
                instances: vec![
                    ("k1".into(), Some(instance(State::Pending))),
                    ("k2".into(), Some(instance(State::Firing))),
                ],
                out: vec![queued(1), queued(2)],
                ..Default::default()
            })
            .unwrap();
            s.apply(Changes {
                instances: vec![("k1".into(), None)],
                done: vec![1],
                ..Default::default()
            })
            .unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.instances.len(), 1);
        assert_eq!(s.instances["k2"].state, State::Firing);
        assert_eq!(s.outbox.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(s.next_seq, 3);
        s.rewrite().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.instances.len(), 1);
        assert_eq!(s.outbox.len(), 1);
        assert_eq!(s.next_seq, 3);
    }
}
