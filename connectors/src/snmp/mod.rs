//! SNMP: polling devices (`FROM SNMP`) and receiving traps and informs (`FROM SNMP TRAP`).
//!
//! BER encoding, PDUs, sessions and SNMPv3 USM come from the `snmp2` crate. tocsin adds what it
//! does not give: the built-in MIB names ([`mib`]), option parsing and schema derivation (this
//! module), walks with timeouts, retries and loop protection ([`poll`]), and trap decoding with
//! RFC 3584 v1→v2 translation and inform acknowledgement ([`trap`]).

pub mod connector;
pub mod mib;
pub mod poll;
pub mod trap;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::source::ts_type;
use snmp2::v3;

use mib::{dotted, mib, snake_case, Syntax};

/// Connector options as given in `WITH (...)`: key, value.
pub type Options = [(String, String)];

/// Option names of a `FROM SNMP` source (besides `format`, `retain` and `interval`).
pub const POLL_OPTIONS: &[&str] = &[
    "targets",
    "version",
    "community",
    "timeout",
    "retries",
    "max_repetitions",
    "table",
    "columns",
    "oids",
    "user",
    "auth",
    "auth_password",
    "priv",
    "priv_password",
];

/// Option names of a `FROM SNMP TRAP` source (besides `format` and `retain`).
pub const TRAP_OPTIONS: &[&str] = &["listen", "community"];

/// The SQL type of a polled column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    BigInt,
    Double,
    Text,
}

impl ColumnType {
    fn of(syntax: Syntax) -> Self {
        if syntax.is_integer() {
            ColumnType::BigInt
        } else {
            ColumnType::Text
        }
    }
    fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_lowercase().as_str() {
            "bigint" | "int" | "integer" => Some(ColumnType::BigInt),
            "double" | "float" => Some(ColumnType::Double),
            "text" => Some(ColumnType::Text),
            _ => None,
        }
    }
    fn arrow(self) -> DataType {
        match self {
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Double => DataType::Float64,
            ColumnType::Text => DataType::Utf8,
        }
    }
}

/// One polled column: where its value comes from and how it is typed.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    /// The column's sub-identifier under the table entry (table mode), or the full instance OID
    /// (GET mode).
    pub oid: Vec<u32>,
    pub ty: ColumnType,
    /// How text is rendered (hex for addresses, numeric for OIDs).
    pub syntax: Option<Syntax>,
}

/// How the index part of a table row's OID becomes columns.
#[derive(Clone, Debug)]
pub enum Index {
    /// Known index objects, in order.
    Objects(Vec<(String, Syntax)>),
    /// Unknown table: the instance suffix as dotted text, column `index`.
    Raw,
}

/// What a source polls.
#[derive(Clone, Debug)]
pub enum Polled {
    /// A table walked with GETBULK (GETNEXT for v1): one row per table row.
    Table {
        /// The table's OID; rows are `table.1.<column>.<index>`.
        table: Vec<u32>,
        /// Subtrees to walk: the whole table, or the chosen columns.
        roots: Vec<Vec<u32>>,
        index: Index,
        columns: Vec<Column>,
    },
    /// Scalars fetched with GET: one row per target per poll.
    Get { columns: Vec<Column> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2c,
    V3,
}

/// A device to poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The `device` column: the name given as `name=host:port`, else the address as written.
    pub device: String,
    pub address: String,
}

/// Everything a `FROM SNMP` source needs to poll, parsed and checked.
#[derive(Clone)]
pub struct PollConfig {
    pub targets: Vec<Target>,
    pub version: Version,
    pub community: String,
    pub timeout: Duration,
    pub retries: u32,
    pub max_repetitions: u32,
    pub security: Option<v3::Security>,
    pub polled: Polled,
    pub schema: SchemaRef,
}

impl std::fmt::Debug for PollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConfig")
            .field("targets", &self.targets.len())
            .field("version", &self.version)
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

fn get<'a>(options: &'a Options, key: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn number(key: &str, text: &str, min: u32, max: u32) -> Result<u32, String> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("invalid {key} '{text}': use a whole number from {min} to {max}"))
}

/// Parses `targets`: `host:port` or `name=host:port`, comma-separated; port 161 by default.
fn targets(text: &str) -> Result<Vec<Target>, String> {
    let mut out: Vec<Target> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (device, address) = match item.split_once('=') {
            Some((n, a)) => (n.trim().to_string(), a.trim().to_string()),
            None => (item.to_string(), item.to_string()),
        };
        let address = if address.parse::<SocketAddr>().is_ok() || address.is_empty() {
            address
        } else if let Ok(ip) = address.trim_matches(['[', ']']).parse::<IpAddr>() {
            SocketAddr::new(ip, 161).to_string()
        } else if address.contains(':') {
            address
        } else {
            format!("{address}:161")
        };
        if device.is_empty() || address.is_empty() {
            return Err(format!(
                "invalid target '{item}': use host:port or name=host:port"
            ));
        }
        if out.iter().any(|t| t.device == device) {
            return Err(format!("target '{device}' is listed twice"));
        }
        out.push(Target { device, address });
    }
    if out.is_empty() {
        return Err("a SNMP source needs targets = 'host:port, ...'".into());
    }
    Ok(out)
}

/// Splits `spec:type` when the part after the last single colon is a type word.
fn split_type(spec: &str) -> (&str, Option<ColumnType>) {
    if let Some((left, right)) = spec.rsplit_once(':') {
        if !left.ends_with(':') {
            if let Some(t) = ColumnType::parse(right.trim()) {
                return (left.trim(), Some(t));
            }
        }
    }
    (spec.trim(), None)
}

fn column_name(name: &str) -> Result<String, String> {
    let n = name.trim().to_ascii_lowercase();
    if n.is_empty()
        || !n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "invalid column name '{name}': use letters, digits and _"
        ));
    }
    Ok(n)
}

/// The `oids` option: `[column=]OID-or-name[:type]`, comma-separated.
fn get_columns(text: &str) -> Result<Vec<Column>, String> {
    let m = mib();
    let mut cols: Vec<Column> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, spec) = match item.split_once('=') {
            Some((n, s)) => (Some(column_name(n)?), s),
            None => (None, item),
        };
        let (spec, ty) = split_type(spec);
        let mut oid = m.resolve(spec)?;
        if let Some(o) = m.by_oid(&oid) {
            match o.syntax {
                Syntax::Table | Syntax::Notification => {
                    return Err(format!(
                        "{} is not a value to GET{}",
                        o.qualified(),
                        if o.syntax == Syntax::Table { ": poll it with table = '...'" } else { "" }
                    ))
                }
                _ if m.is_column(o) => {
                    return Err(format!(
                        "{} is a table column: name an instance (e.g. {}.1) or poll the table with table = '...'",
                        o.qualified(),
                        o.qualified()
                    ))
                }
                // A scalar named without its instance: `.0` is meant.
                _ => oid.push(0),
            }
        }
        let known = m.lookup_instance(&oid);
        let name = match (name, known) {
            (Some(n), _) => n,
            (None, Some((o, inst))) if inst.is_empty() || inst == [0] => snake_case(o.name),
            (None, Some((o, inst))) => {
                format!("{}_{}", snake_case(o.name), dotted(inst).replace('.', "_"))
            }
            (None, None) => {
                return Err(format!(
                    "give the OID {spec} a column name: oids = 'name={spec}:bigint'"
                ))
            }
        };
        let syntax = known.map(|(o, _)| o.syntax);
        let ty = ty.unwrap_or_else(|| syntax.map_or(ColumnType::Text, ColumnType::of));
        cols.push(Column {
            name,
            oid,
            ty,
            syntax,
        });
    }
    if cols.is_empty() {
        return Err(
            "oids is empty: list OIDs or names, e.g. oids = 'SNMPv2-MIB::sysUpTime.0'".into(),
        );
    }
    Ok(cols)
}

/// The `table` option (with optional `columns`).
fn table_polled(table: &str, columns: Option<&str>) -> Result<Polled, String> {
    let m = mib();
    let mut oid = m.resolve(table)?;
    // A table's entry (`ifEntry` = `ifTable.1`) names the same table.
    let known = m
        .by_oid(&oid)
        .filter(|o| o.syntax == Syntax::Table)
        .or_else(|| {
            oid.split_last()
                .filter(|(last, _)| **last == 1)
                .and_then(|(_, t)| m.by_oid(t))
                .filter(|o| o.syntax == Syntax::Table)
        });
    if let Some(t) = known {
        oid = t.oid.clone();
    } else if let Some(o) = m.by_oid(&oid) {
        return Err(format!(
            "{} is not a table: poll scalars with oids = '{}.0'",
            o.qualified(),
            o.qualified()
        ));
    }
    let index = match known {
        Some(t) => Index::Objects(
            t.index
                .iter()
                .map(|i| {
                    let o = m.by_name(i).expect("index objects are built in");
                    (snake_case(o.name), o.syntax)
                })
                .collect(),
        ),
        None => Index::Raw,
    };
    let entry_len = oid.len() + 1;
    let all: Vec<Column> = known
        .map(|t| {
            m.columns(t)
                .into_iter()
                .map(|c| Column {
                    name: snake_case(c.name),
                    oid: vec![c.oid[entry_len]],
                    ty: ColumnType::of(c.syntax),
                    syntax: Some(c.syntax),
                })
                .collect()
        })
        .unwrap_or_default();
    let (cols, whole) = match columns {
        None if known.is_none() => {
            return Err(format!(
                "table {table} is not one of tocsin's built-in MIB tables: list its columns, e.g. columns = 'name=2:text, load=5:bigint' (name = column number under the entry)"
            ))
        }
        None => (all, true),
        Some(text) => {
            let mut cols: Vec<Column> = Vec::new();
            for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let c = match item.split_once('=') {
                    Some((n, spec)) => {
                        let (spec, ty) = split_type(spec);
                        let arc: u32 = spec.trim().parse().map_err(|_| {
                            format!("column '{item}': after = comes the column number under the table entry, e.g. name=2:text")
                        })?;
                        let known_col = all.iter().find(|c| c.oid == [arc]);
                        Column {
                            name: column_name(n)?,
                            oid: vec![arc],
                            ty: ty.or(known_col.map(|c| c.ty)).unwrap_or(ColumnType::Text),
                            syntax: known_col.and_then(|c| c.syntax),
                        }
                    }
                    None => {
                        let (spec, ty) = split_type(item);
                        let wanted = snake_case(spec.rsplit("::").next().unwrap_or(spec));
                        let mut c = all
                            .iter()
                            .find(|c| c.name == wanted)
                            .cloned()
                            .ok_or_else(|| {
                                format!(
                                    "'{spec}' is not a column of {table}; its columns are {}",
                                    all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                                )
                            })?;
                        if let Some(t) = ty {
                            c.ty = t;
                        }
                        c
                    }
                };
                cols.push(c);
            }
            if cols.is_empty() {
                return Err("columns is empty".into());
            }
            (cols, false)
        }
    };
    // Index objects that are also columns (ifIndex in ifTable) appear once, as index columns.
    let index_names: Vec<String> = match &index {
        Index::Objects(v) => v.iter().map(|(n, _)| n.clone()).collect(),
        Index::Raw => vec!["index".into()],
    };
    let cols: Vec<Column> = cols
        .into_iter()
        .filter(|c| !index_names.contains(&c.name))
        .collect();
    let roots = if whole {
        vec![oid.clone()]
    } else {
        let mut r: Vec<Vec<u32>> = cols
            .iter()
            .map(|c| {
                let mut o = oid.clone();
                o.push(1);
                o.extend(&c.oid);
                o
            })
            .collect();
        r.sort();
        r.dedup();
        r
    };
    Ok(Polled::Table {
        table: oid,
        roots,
        index,
        columns: cols,
    })
}

fn auth_protocol(text: &str) -> Result<v3::AuthProtocol, String> {
    Ok(match text.to_ascii_lowercase().replace('-', "").as_str() {
        "md5" => v3::AuthProtocol::Md5,
        "sha" | "sha1" => v3::AuthProtocol::Sha1,
        "sha224" => v3::AuthProtocol::Sha224,
        "sha256" => v3::AuthProtocol::Sha256,
        "sha384" => v3::AuthProtocol::Sha384,
        "sha512" => v3::AuthProtocol::Sha512,
        _ => {
            return Err(format!(
                "unknown auth '{text}': use md5, sha, sha224, sha256, sha384 or sha512"
            ))
        }
    })
}

fn cipher(text: &str) -> Result<(v3::Cipher, Option<v3::KeyExtension>), String> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "des" => (v3::Cipher::Des, None),
        "aes" | "aes128" | "aes-128" => (v3::Cipher::Aes128, None),
        "aes192" | "aes-192" => (v3::Cipher::Aes192, Some(v3::KeyExtension::Blumenthal)),
        "aes256" | "aes-256" => (v3::Cipher::Aes256, Some(v3::KeyExtension::Blumenthal)),
        "aes192c" | "aes-192-c" => (v3::Cipher::Aes192, Some(v3::KeyExtension::Reeder)),
        "aes256c" | "aes-256-c" => (v3::Cipher::Aes256, Some(v3::KeyExtension::Reeder)),
        _ => {
            return Err(format!(
                "unknown priv '{text}': use des, aes, aes192, aes256, aes192c or aes256c"
            ))
        }
    })
}

fn security(options: &Options) -> Result<v3::Security, String> {
    let user = get(options, "user").ok_or("SNMPv3 needs user = '...'")?;
    let auth = get(options, "auth");
    let auth_password = get(options, "auth_password");
    let privacy = get(options, "priv");
    let priv_password = get(options, "priv_password");
    for (k, v) in [
        ("auth_password", auth_password),
        ("priv_password", priv_password),
    ] {
        if v.is_some_and(|p| p.len() < 8) {
            return Err(format!("{k} must be at least 8 characters (RFC 3414)"));
        }
    }
    let mut sec = v3::Security::new(user.as_bytes(), auth_password.unwrap_or("").as_bytes());
    match (auth, privacy) {
        (None, None) => {
            if auth_password.is_some() || priv_password.is_some() {
                return Err(
                    "auth_password given without auth = 'sha' (or another protocol)".into(),
                );
            }
            sec = sec.with_auth(v3::Auth::NoAuthNoPriv);
        }
        (None, Some(_)) => return Err("priv needs auth as well (authPriv)".into()),
        (Some(a), p) => {
            if auth_password.is_none() {
                return Err("auth needs auth_password".into());
            }
            sec = sec.with_auth_protocol(auth_protocol(a)?);
            match p {
                None => {
                    if priv_password.is_some() {
                        return Err(
                            "priv_password given without priv = 'aes' (or another cipher)".into(),
                        );
                    }
                    sec = sec.with_auth(v3::Auth::AuthNoPriv);
                }
                Some(p) => {
                    let pw = priv_password.ok_or("priv needs priv_password")?;
                    let (c, ext) = cipher(p)?;
                    sec = sec.with_auth(v3::Auth::AuthPriv {
                        cipher: c,
                        privacy_password: pw.as_bytes().to_vec(),
                    });
                    if let Some(e) = ext {
                        sec = sec.with_key_extension_method(e);
                    }
                }
            }
        }
    }
    Ok(sec)
}

/// Parses and checks the options of a `FROM SNMP` source.
pub fn poll_config(options: &Options) -> crate::Result<PollConfig> {
    Ok(poll_options(options)?)
}

fn poll_options(options: &Options) -> Result<PollConfig, String> {
    let targets = targets(get(options, "targets").unwrap_or(""))?;
    let version = match get(options, "version").unwrap_or("2c").trim() {
        "1" => Version::V1,
        "2" | "2c" => Version::V2c,
        "3" => Version::V3,
        other => return Err(format!("unknown version '{other}': use '1', '2c' or '3'")),
    };
    let v3_keys = ["user", "auth", "auth_password", "priv", "priv_password"];
    let security = if version == Version::V3 {
        if get(options, "community").is_some() {
            return Err("SNMPv3 uses user/auth/priv, not community".into());
        }
        Some(security(options)?)
    } else {
        if let Some(k) = v3_keys.iter().find(|k| get(options, k).is_some()) {
            return Err(format!("{k} is an SNMPv3 option: add version = '3'"));
        }
        None
    };
    let timeout = get(options, "timeout")
        .map(|t| crate::duration::positive("timeout", t))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or(Duration::from_secs(1));
    let retries = get(options, "retries")
        .map(|t| number("retries", t, 0, 10))
        .transpose()?
        .unwrap_or(2);
    let max_repetitions = get(options, "max_repetitions")
        .map(|t| number("max_repetitions", t, 1, 1000))
        .transpose()?
        .unwrap_or(25);
    let polled = match (get(options, "table"), get(options, "oids")) {
        (Some(_), Some(_)) => return Err("give either table or oids, not both".into()),
        (None, None) => {
            return Err(
                "say what to poll: table = 'IF-MIB::ifTable' (a walk) or oids = 'SNMPv2-MIB::sysUpTime.0, ...' (a GET)"
                    .into(),
            )
        }
        (Some(t), None) => table_polled(t, get(options, "columns"))?,
        (None, Some(o)) => {
            if get(options, "columns").is_some() {
                return Err("columns goes with table; with oids, name columns as oids = 'name=OID'".into());
            }
            Polled::Get {
                columns: get_columns(o)?,
            }
        }
    };
    let schema = poll_schema(&polled)?;
    Ok(PollConfig {
        targets,
        version,
        community: get(options, "community").unwrap_or("public").to_string(),
        timeout,
        retries,
        max_repetitions,
        security,
        polled,
        schema,
    })
}

/// `ts`, `device`, the index columns (tables), then the polled columns.
fn poll_schema(polled: &Polled) -> Result<SchemaRef, String> {
    let mut fields = vec![
        Field::new("ts", ts_type(), true),
        Field::new("device", DataType::Utf8, true),
    ];
    let columns = match polled {
        Polled::Table { index, columns, .. } => {
            match index {
                Index::Objects(objs) => {
                    for (n, s) in objs {
                        fields.push(Field::new(n, ColumnType::of(*s).arrow(), true));
                    }
                }
                Index::Raw => fields.push(Field::new("index", DataType::Utf8, true)),
            }
            columns
        }
        Polled::Get { columns } => columns,
    };
    for c in columns {
        fields.push(Field::new(&c.name, c.ty.arrow(), true));
    }
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name() == f.name()) {
            return Err(format!(
                "column \"{}\" appears twice: name one of them (name=OID)",
                f.name()
            ));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The companion relation of a `FROM SNMP` source: one row per target per poll.
pub fn status_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), true),
        Field::new("device", DataType::Utf8, true),
        Field::new("up", DataType::Boolean, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("rtt_ms", DataType::Float64, true),
    ]))
}

/// The name suffix of the companion status relation.
pub const STATUS_SUFFIX: &str = "_status";

/// How one poll of one target went.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub device: String,
    pub up: bool,
    pub error: Option<String>,
    /// How long the poll took (every request of it), when the device answered.
    pub rtt_ms: Option<f64>,
}

/// Rows of the status relation, stamped `now_ms`.
pub fn status_batch(rows: &[Status], now_ms: i64) -> RecordBatch {
    let mut device = StringBuilder::new();
    let mut up = BooleanBuilder::new();
    let mut error = StringBuilder::new();
    let mut rtt = Float64Builder::new();
    for r in rows {
        device.append_value(&r.device);
        up.append_value(r.up);
        error.append_option(r.error.as_deref());
        rtt.append_option(r.rtt_ms);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(vec![now_ms; rows.len()]).with_timezone("UTC")),
        Arc::new(device.finish()),
        Arc::new(up.finish()),
        Arc::new(error.finish()),
        Arc::new(rtt.finish()),
    ];
    RecordBatch::try_new(status_schema(), columns).expect("status rows match the status schema")
}

/// Parses and checks the options of a `FROM SNMP TRAP` source.
pub fn trap_config(options: &Options) -> crate::Result<trap::TrapConfig> {
    Ok(trap_options(options)?)
}

fn trap_options(options: &Options) -> Result<trap::TrapConfig, String> {
    let listen = get(options, "listen")
        .ok_or("a SNMP TRAP source needs listen = 'address:port' (e.g. '0.0.0.0:162')")?;
    let addr = listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("invalid listen address '{listen}': use address:port"))?;
    Ok(trap::TrapConfig {
        listen: addr,
        community: get(options, "community").map(str::to_string),
    })
}

/// A value as received, detached from the packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    Oid(Vec<u32>),
    Ip([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    Ticks(u32),
    Counter64(u64),
    Bool(bool),
    Opaque(Vec<u8>),
    Null,
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
    /// A type tocsin does not decode.
    Other,
}

/// An OID's arcs, when every arc fits SNMP's 32 bits. Decoded from the BER content here (not
/// with `Oid::iter`) so that `0.0` (zeroDotZero, one zero octet) keeps both of its arcs.
pub(crate) fn arcs(oid: &snmp2::Oid<'_>) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(oid.as_bytes().len() + 1);
    let mut acc: u64 = 0;
    for (i, b) in oid.as_bytes().iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if acc > u64::from(u32::MAX) + 80 {
            return None;
        }
        if b & 0x80 != 0 {
            if i + 1 == oid.as_bytes().len() {
                return None;
            }
            continue;
        }
        if out.is_empty() {
            let (first, second) = match acc {
                0..40 => (0, acc),
                40..80 => (1, acc - 40),
                _ => (2, acc - 80),
            };
            out.push(first);
            out.push(u32::try_from(second).ok()?);
        } else {
            out.push(u32::try_from(acc).ok()?);
        }
        acc = 0;
    }
    (!out.is_empty()).then_some(out)
}

impl Value {
    pub(crate) fn own(v: snmp2::Value<'_>) -> Value {
        use snmp2::Value as V;
        match v {
            V::Integer(i) => Value::Int(i),
            V::OctetString(s) => Value::Bytes(s.to_vec()),
            V::ObjectIdentifier(o) => arcs(&o).map_or(Value::Other, Value::Oid),
            V::IpAddress(a) => Value::Ip(a),
            V::Counter32(c) => Value::Counter32(c),
            V::Unsigned32(g) => Value::Gauge32(g),
            V::Timeticks(t) => Value::Ticks(t),
            V::Counter64(c) => Value::Counter64(c),
            V::Boolean(b) => Value::Bool(b),
            V::Opaque(b) => Value::Opaque(b.to_vec()),
            V::Null => Value::Null,
            V::NoSuchObject => Value::NoSuchObject,
            V::NoSuchInstance => Value::NoSuchInstance,
            V::EndOfMibView => Value::EndOfMibView,
            _ => Value::Other,
        }
    }

    /// As a BIGINT. Counter64 values of 2^63 and more wrap to negative numbers, which `rate()`
    /// reads back as unsigned.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Counter32(v) | Value::Gauge32(v) | Value::Ticks(v) => Some(*v as i64),
            Value::Counter64(v) => Some(*v as i64),
            Value::Bool(b) => Some(*b as i64),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Counter64(v) => Some(*v as f64),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            v => v.as_i64().map(|i| i as f64),
        }
    }

    /// As text: strings as UTF-8 (hex when not printable or when the syntax says so), OIDs
    /// dotted, addresses dotted-quad, numbers in decimal.
    pub fn as_text(&self, syntax: Option<Syntax>) -> Option<String> {
        Some(match self {
            Value::Bytes(b) if syntax == Some(Syntax::Hex) => hex(b),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s)
                    if s.chars()
                        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\0')) =>
                {
                    s.trim_end_matches('\0').to_string()
                }
                _ => hex(b),
            },
            Value::Opaque(b) => hex(b),
            Value::Oid(o) => dotted(o),
            Value::Ip(a) => std::net::Ipv4Addr::from(*a).to_string(),
            Value::Counter64(v) => v.to_string(),
            Value::Bool(b) => b.to_string(),
            v => v.as_i64()?.to_string(),
        })
    }

    /// As JSON (trap varbinds); `syntax` (from the MIB) decides how octet strings are shown.
    pub fn to_json(&self, syntax: Option<Syntax>) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Int(i) => J::from(*i),
            Value::Counter32(v) | Value::Gauge32(v) | Value::Ticks(v) => J::from(*v),
            Value::Counter64(v) => J::from(*v),
            Value::Bool(b) => J::from(*b),
            Value::Null
            | Value::NoSuchObject
            | Value::NoSuchInstance
            | Value::EndOfMibView
            | Value::Other => J::Null,
            v => v.as_text(syntax).map_or(J::Null, J::from),
        }
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Builds a column of values converted to the column's type.
pub(crate) fn column_array<'a>(
    ty: ColumnType,
    syntax: Option<Syntax>,
    values: impl Iterator<Item = Option<&'a Value>>,
) -> ArrayRef {
    match ty {
        ColumnType::BigInt => {
            let mut b = Int64Builder::new();
            values.for_each(|v| b.append_option(v.and_then(Value::as_i64)));
            Arc::new(b.finish())
        }
        ColumnType::Double => {
            let mut b = Float64Builder::new();
            values.for_each(|v| b.append_option(v.and_then(Value::as_f64)));
            Arc::new(b.finish())
        }
        ColumnType::Text => {
            let mut b = StringBuilder::new();
            values.for_each(|v| b.append_option(v.and_then(|v| v.as_text(syntax))));
            Arc::new(b.finish())
        }
    }
}

#[cfg(test)]
mod tests;
