//! The PostgreSQL wire protocol, on the main port (told apart by the first byte) or on
//! `--pg-listen`. Everything `POST /v1/sql` runs works here too, through the simple and the
//! extended query protocol; `SUBSCRIBE` streams its changes as `COPY ... TO STDOUT` text rows.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};
use datafusion::arrow::util::display::ArrayFormatter;
use datafusion::common::ScalarValue;
use futures_util::sink::{Sink, SinkExt};
use futures_util::stream;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{gen_salted_password, random_nonce, ScramAuth};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, AuthOutcome, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tocsin_engine::SubscribeEvent;
use tocsin_sql::error::{ErrorKind, SqlError};
use tocsin_sql::parser::{Located, Statement};
use tocsin_sql::pgcompat::PgType;
use tocsin_sql::{Access, StatementResult};

use crate::auth::Credentials;
use crate::metrics::Refusal;
use crate::state::AppRef;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The handlers of every pg connection.
pub struct Backend {
    app: AppRef,
    parser: Arc<Parser>,
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
}

impl Backend {
    /// The handlers of the pg connections of `app`; `tls` answers SSLRequests.
    pub fn new(app: AppRef, tls: Option<pgwire::tokio::TlsAcceptor>) -> Arc<Self> {
        let connections = Arc::new(ConnectionManager::new());
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = tocsin_sql::pgcompat::SERVER_VERSION.to_string();
        parameters.date_style = "ISO, MDY".to_string();
        parameters.time_zone = "UTC".to_string();
        let credentials = app.credentials.clone();
        let scram = credentials.any().then(|| {
            let mut scram = ScramAuth::new(Arc::new(UserBook::new(&credentials)));
            scram.set_iterations(SCRAM_ITERATIONS);
            scram
        });
        Arc::new(Backend {
            parser: Arc::new(Parser { app: app.clone() }),
            startup: Arc::new(Startup {
                driver: AuthDriver::new(parameters).with_connection_manager(connections.clone()),
                scram,
                credentials,
                tls: tls.is_some(),
                metrics: app.metrics.clone(),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
            tls,
            app,
        })
    }
}

impl PgWireServerHandlers for Backend {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Queries {
            app: self.app.clone(),
            parser: self.parser.clone(),
        })
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Queries {
            app: self.app.clone(),
            parser: self.parser.clone(),
        })
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves one connection whose first byte said PostgreSQL. An SSLRequest is answered 'S' and
/// TLS negotiated when TLS is configured, else 'N'.
pub async fn serve(stream: tokio::net::TcpStream, backend: Arc<Backend>) {
    let tls = backend.tls.clone();
    if let Err(e) = pgwire::tokio::process_socket(stream, tls, backend).await {
        tracing::debug!("pg connection ended: {e}");
    }
}

/// Where a connection's role is kept in its metadata once it has authenticated.
const ROLE: &str = "tocsin.role";

/// PBKDF2 iterations of the SCRAM secrets (PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;

/// The SCRAM secrets of the pg users, derived once at start; passwords are not kept.
struct UserBook {
    users: std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// `--pg-password`'s secret, for any other user name.
    others: Option<(Vec<u8>, Vec<u8>)>,
    /// Key of the salts given for unknown user names (see [`UserBook::salt`]).
    decoy: Vec<u8>,
}

impl UserBook {
    fn new(c: &Credentials) -> UserBook {
        let secret = |password: &str| {
            let salt = UserBook::salt(&random_nonce(), &random_nonce().into_bytes());
            let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            (salt, salted)
        };
        UserBook {
            users: c
                .pg_users
                .iter()
                .map(|u| (u.name.clone(), secret(&u.password)))
                .collect(),
            others: c.pg_password.as_deref().map(secret),
            decoy: random_nonce().into_bytes(),
        }
    }

    /// 16 bytes from `text` and `key`: random for a random text, the same for the same user
    /// name, so a salt looks alike for users who exist and who do not, and stays the same
    /// across attempts either way.
    fn salt(text: &str, key: &[u8]) -> Vec<u8> {
        gen_salted_password(text, key, 1)[..16].to_vec()
    }
}

impl Debug for UserBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserBook({} users)", self.users.len())
    }
}

#[async_trait]
impl AuthSource for UserBook {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let (salt, salted) = match self.users.get(user).or(self.others.as_ref()) {
            Some(s) => s.clone(),
            // An unknown user goes through the same exchange with a secret nobody knows, so
            // the answer does not tell which user names exist.
            None => (
                UserBook::salt(user, &self.decoy),
                gen_salted_password(&random_nonce(), &self.decoy, 1),
            ),
        };
        Ok(Password::new(Some(salt), salted))
    }
}

/// A FATAL error that ends a connection's startup.
fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message.into(),
    )))
}

/// Connection start: TLS required from other machines when it is configured, then the role of
/// the user: everyone is admin when no credential is configured; a configured user (or any name
/// with `--pg-password`) authenticates with SCRAM-SHA-256; with `--read-open` any other name is
/// a reader without a password.
struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider>,
    scram: Option<ScramAuth>,
    credentials: Credentials,
    tls: bool,
    metrics: Arc<crate::metrics::Metrics>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // A role is only ever what this handler sets, never a startup parameter.
                client.metadata_mut().remove(ROLE);
                if self.tls
                    && !client.is_secure()
                    && !crate::limits::is_loopback(client.socket_addr().ip())
                {
                    self.metrics.refused(Refusal::NotTls);
                    return Err(fatal(
                        "28000",
                        "this server requires TLS from other machines: connect with sslmode=require (or verify-full)",
                    ));
                }
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let c = &self.credentials;
                let (role, password) = if !c.any() {
                    (Some(Access::Admin), false)
                } else if let Some((_, role)) = c.pg_user(&user) {
                    (Some(role), true)
                } else if c.read_open {
                    (Some(Access::Read), false)
                } else {
                    (None, true)
                };
                if let Some(role) = role {
                    client
                        .metadata_mut()
                        .insert(ROLE.to_string(), role.as_str().to_string());
                }
                match (&self.scram, password) {
                    (Some(scram), true) => {
                        self.driver
                            .begin_authentication(client, scram.create())
                            .await?
                    }
                    _ => AuthOutcome::Authenticated {
                        final_message: None,
                        identity: None,
                    },
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                self.driver.advance_authentication(client, message).await?
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.driver
                    .complete_authentication(client, final_message)
                    .await
            }
        }
    }
}

/// The role of an authenticated connection.
fn role_of<C: ClientInfo>(client: &C) -> Option<Access> {
    client
        .metadata()
        .get(ROLE)
        .and_then(|r| crate::auth::scope(r).ok())
}

/// Refuses statements the connection's role may not run (SQLSTATE 42501), before any runs.
fn permitted<C: ClientInfo>(
    app: &AppRef,
    client: &C,
    statements: &[Located],
    text: &str,
) -> Result<(), Box<ErrorInfo>> {
    let have = role_of(client);
    let denied = match have {
        Some(have) => crate::auth::first_denied(have, statements),
        None => (!statements.is_empty()).then(|| (0, statements[0].statement.access())),
    };
    let Some((i, need)) = denied else {
        return Ok(());
    };
    app.metrics.refused(Refusal::Forbidden);
    let user = client.metadata().get("user").cloned().unwrap_or_default();
    let mut e = SqlError::new(
        ErrorKind::Plan,
        format!(
            "permission denied: user \"{user}\" ({} role) may not run this statement, it needs the {} role",
            have.map_or("no", Access::as_str),
            need.as_str()
        ),
    )
    .in_statement(i);
    e.line = Some(statements[i].start.line);
    e.column = Some(statements[i].start.column);
    let mut info = error_info(&e, text);
    info.code = "42501".into();
    Err(Box::new(info))
}

/// Refuses SQL text over `--max-sql` (SQLSTATE 54000).
fn within_limit(app: &AppRef, text: &str) -> Result<(), Box<ErrorInfo>> {
    let max = app.limits.max_sql;
    if text.len() <= max {
        return Ok(());
    }
    app.metrics.refused(Refusal::SqlTooLong);
    Err(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "54000".into(),
        format!(
            "the query text is {} bytes, over the limit of {max} (--max-sql)",
            text.len()
        ),
    )))
}

/// The SQLSTATE for an error, by its kind and, for planning errors, what it is about.
fn sqlstate(e: &SqlError) -> &'static str {
    match e.kind {
        ErrorKind::Parse => "42601",
        ErrorKind::Plan => {
            let m = e.message.to_ascii_lowercase();
            if m.contains("no field named") || m.contains("has no column") {
                "42703"
            } else if m.contains("not found") || m.contains("does not exist") {
                if m.contains("table") || m.contains("source") || m.contains("view") {
                    "42P01"
                } else {
                    "42704"
                }
            } else if m.contains("already exists") {
                "42710"
            } else {
                "42000"
            }
        }
        ErrorKind::Unsupported => "0A000",
        ErrorKind::Execution => "22000",
        ErrorKind::Unavailable => "57P03",
        ErrorKind::Internal => "XX000",
    }
}

/// An error as pg sends it: the same message as the HTTP API, with its position in the text.
fn error_info(e: &SqlError, text: &str) -> ErrorInfo {
    let mut info = ErrorInfo::new("ERROR".into(), sqlstate(e).into(), e.message.clone());
    if let (Some(line), Some(column)) = (e.line, e.column) {
        // PostgreSQL's position: characters from the start of the text, from 1.
        let before: usize = text
            .split_inclusive('\n')
            .take(line.saturating_sub(1) as usize)
            .map(|l| l.chars().count())
            .sum();
        info.position = Some((before + column as usize).to_string());
    }
    info
}

fn user_error(e: &SqlError, text: &str) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e, text)))
}

/// The type a column is sent as (see [`PgType::of`]).
fn wire_type(t: &DataType) -> Type {
    Type::from_oid(PgType::of(t).oid).unwrap_or(Type::TEXT)
}

fn fields(schema: &SchemaRef, format: Option<&Format>) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = match format {
                Some(Format::Individual(v)) if i >= v.len() => FieldFormat::Text,
                Some(fmt) => fmt.format_for(i),
                None => FieldFormat::Text,
            };
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                wire_type(f.data_type()),
                format,
            )
        })
        .collect()
}

/// `2026-11-21 10:00:00.000+00`, as PostgreSQL prints a timestamptz in UTC.
fn pg_timestamp(ms: i64, zone: bool) -> String {
    let s = tocsin_engine::fmt_ms(ms).replacen('T', " ", 1);
    let s = s.trim_end_matches('Z');
    if zone {
        format!("{s}+00")
    } else {
        s.to_string()
    }
}

/// Rows of Arrow batches as pg data rows, typed as [`fields`] says.
fn data_rows(
    schema: Arc<Vec<FieldInfo>>,
    batches: &[RecordBatch],
) -> PgWireResult<Vec<PgWireResult<pgwire::messages::data::DataRow>>> {
    let mut encoder = DataRowEncoder::new(schema.clone());
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = formatters(batch)?;
        for row in 0..batch.num_rows() {
            for (i, col) in batch.columns().iter().enumerate() {
                let binary = schema[i].format() == FieldFormat::Binary;
                encode_value(&mut encoder, col, row, binary, &formatters[i])?;
            }
            rows.push(Ok(encoder.take_row()));
        }
    }
    Ok(rows)
}

fn encode_value(
    enc: &mut DataRowEncoder,
    col: &ArrayRef,
    row: usize,
    binary: bool,
    formatter: &ArrayFormatter,
) -> PgWireResult<()> {
    if !binary || col.is_null(row) {
        return enc.encode_field(&text_value(col, row, formatter));
    }
    macro_rules! prim {
        ($t:ty, $as:ty) => {
            enc.encode_field(&(col.as_primitive::<$t>().value(row) as $as))
        };
    }
    match col.data_type() {
        DataType::Boolean => enc.encode_field(&col.as_boolean().value(row)),
        DataType::Int8 => prim!(Int8Type, i16),
        DataType::UInt8 => prim!(UInt8Type, i16),
        DataType::Int16 => prim!(Int16Type, i16),
        DataType::Int32 => prim!(Int32Type, i32),
        DataType::UInt16 => prim!(UInt16Type, i32),
        DataType::Int64 => prim!(Int64Type, i64),
        DataType::UInt32 => prim!(UInt32Type, i64),
        DataType::Float32 => prim!(Float32Type, f32),
        DataType::Float64 => prim!(Float64Type, f64),
        DataType::Timestamp(..) => {
            let ms = timestamp_ms(col, row).unwrap_or_default();
            enc.encode_field(&(ms * 1000 - PG_EPOCH_US))
        }
        DataType::Date32 => {
            enc.encode_field(&(col.as_primitive::<Date32Type>().value(row) - PG_EPOCH_DAYS))
        }
        // Everything else is text (see `wire_type`).
        _ => enc.encode_field(&text_value(col, row, formatter)),
    }
}

/// A timestamp value in epoch milliseconds.
fn timestamp_ms(col: &ArrayRef, row: usize) -> Option<i64> {
    Some(match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            col.as_primitive::<TimestampSecondType>().value(row) * 1000
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            col.as_primitive::<TimestampMillisecondType>().value(row)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            col.as_primitive::<TimestampMicrosecondType>().value(row) / 1000
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            col.as_primitive::<TimestampNanosecondType>().value(row) / 1_000_000
        }
        _ => return None,
    })
}

/// A value in PostgreSQL's text format; `None` is NULL.
fn text_value(col: &ArrayRef, row: usize, formatter: &ArrayFormatter) -> Option<String> {
    if col.is_null(row) {
        return None;
    }
    let float = |x: f64| {
        if x.is_nan() {
            "NaN".to_string()
        } else if x.is_infinite() {
            if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        } else {
            x.to_string()
        }
    };
    Some(match col.data_type() {
        DataType::Boolean => if col.as_boolean().value(row) {
            "t"
        } else {
            "f"
        }
        .to_string(),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => float(col.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Timestamp(_, zone) => pg_timestamp(timestamp_ms(col, row)?, zone.is_some()),
        _ => formatter.value(row).to_string(),
    })
}

/// Formatters for a batch's columns.
fn formatters(batch: &RecordBatch) -> PgWireResult<Vec<ArrayFormatter<'_>>> {
    batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))
}

/// A batch's rows in COPY text format, each line starting with `prefix`.
fn copy_lines(out: &mut String, batch: &RecordBatch, prefix: &str) -> PgWireResult<usize> {
    let formatters = formatters(batch)?;
    for row in 0..batch.num_rows() {
        out.push_str(prefix);
        for (i, col) in batch.columns().iter().enumerate() {
            if i > 0 || !prefix.is_empty() {
                out.push('\t');
            }
            match text_value(col, row, &formatters[i]) {
                None => out.push_str("\\N"),
                Some(v) => {
                    for c in v.chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\t' => out.push_str("\\t"),
                            '\n' => out.push_str("\\n"),
                            '\r' => out.push_str("\\r"),
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out.push('\n');
    }
    Ok(batch.num_rows())
}

/// A result's rows as a pg response.
fn rows_response(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Option<&Format>,
) -> PgWireResult<Response> {
    let fields = Arc::new(fields(schema, format));
    let rows = data_rows(fields.clone(), batches)?;
    Ok(Response::Query(QueryResponse::new(
        fields,
        stream::iter(rows),
    )))
}

/// The command tag PostgreSQL clients expect for a statement that returned no rows.
fn tag(result: &StatementResult) -> Tag {
    match result {
        StatementResult::Ddl { statement, .. } => Tag::new(statement),
        StatementResult::Inserted { outcome, .. } => {
            Tag::new("INSERT").with_oid(0).with_rows(outcome.accepted)
        }
        _ => Tag::new("SELECT"),
    }
}

/// What `COPY (...) TO STDOUT` may run, checked before anything runs: statements that answer
/// with rows, and SUBSCRIBE; never one that changes something.
fn copyable(located: &Located) -> Result<(), SqlError> {
    if located.statement.returns_rows() || matches!(located.statement, Statement::Subscribe { .. })
    {
        Ok(())
    } else {
        Err(SqlError::new(
            ErrorKind::Unsupported,
            "COPY ... TO STDOUT takes a SELECT, SHOW, EXPLAIN or SUBSCRIBE",
        ))
    }
}

/// `COPY (statement) TO STDOUT`: the statement inside, if that is what the text is.
fn copy_to_stdout(text: &str) -> Option<&str> {
    let t = text.trim().trim_end_matches(';').trim_end();
    let head = t.get(..4)?;
    if !head.eq_ignore_ascii_case("copy") {
        return None;
    }
    let rest = t[4..].trim_start().strip_prefix('(')?;
    let lower = rest.to_ascii_lowercase();
    let close = lower.rfind(')')?;
    let tail: Vec<&str> = lower[close + 1..].split_whitespace().collect();
    (tail == ["to", "stdout"]).then(|| &rest[..close])
}

/// Starts a COPY out of `columns` text columns.
async fn copy_start<C>(client: &mut C, columns: usize) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let message = CopyOutResponse::new(0, columns as i16, vec![0; columns]);
    client
        .send(PgWireBackendMessage::CopyOutResponse(message))
        .await?;
    Ok(())
}

/// Sends COPY lines, flushed at once.
async fn copy_send<C>(client: &mut C, lines: String) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let data = CopyData::new(Bytes::from(lines));
    client.send(PgWireBackendMessage::CopyData(data)).await?;
    Ok(())
}

/// Ends a COPY out of `n` lines.
async fn copy_end<C>(client: &mut C, n: usize) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    client
        .send(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(Response::Execution(Tag::new("COPY").with_rows(n)))
}

/// The SQL-level handlers of one connection.
struct Queries {
    app: AppRef,
    parser: Arc<Parser>,
}

/// Runs one parsed statement; its one result.
async fn execute_one(app: &AppRef, located: Located) -> Result<StatementResult, SqlError> {
    app.tocsin
        .execute_parsed(vec![located])
        .await?
        .pop()
        .ok_or_else(|| SqlError::internal("no result"))
}

impl Queries {
    /// Runs one statement (not SUBSCRIBE); rows are encoded as `format` asks.
    async fn run(
        &self,
        located: Located,
        params: Vec<ScalarValue>,
        format: Option<&Format>,
    ) -> Result<Response, SqlError> {
        let result = match located.statement {
            Statement::Transaction(what) => {
                let tag = Tag::new(what);
                return Ok(if what == "BEGIN" {
                    Response::TransactionStart(tag)
                } else {
                    Response::TransactionEnd(tag)
                });
            }
            Statement::Query { query } if !params.is_empty() => {
                let (schema, batches) = self.app.tocsin.query_with(&query, params).await?;
                StatementResult::Rows { schema, batches }
            }
            // A catalog change brings the running tasks in line (see `start::ServerDurability`).
            statement => {
                execute_one(
                    &self.app,
                    Located {
                        statement,
                        start: located.start,
                    },
                )
                .await?
            }
        };
        match &result {
            StatementResult::Rows { schema, batches } => rows_response(schema, batches, format)
                .map_err(|e| SqlError::internal(e.to_string())),
            StatementResult::Subscribe(_) => Err(SqlError::internal("SUBSCRIBE ran as a query")),
            other => Ok(Response::Execution(tag(other))),
        }
    }

    /// Streams a subscription as `COPY ... TO STDOUT` text rows `time, diff, columns...` until it
    /// ends (what it reads is dropped), the client goes away or cancels.
    async fn stream<C>(
        &self,
        client: &mut C,
        located: Located,
        text: &str,
    ) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut sub = match execute_one(&self.app, located).await {
            Ok(StatementResult::Subscribe(s)) => s,
            Ok(_) => return Err(user_error(&SqlError::internal("no subscription"), text)),
            Err(e) => return Err(user_error(&e, text)),
        };
        let schema = sub.schema().clone();
        copy_start(client, schema.fields().len() + 2).await?;
        let mut n = 0;
        while let Some(event) = sub.next().await {
            let SubscribeEvent::Changes { time, updates } = event else {
                continue;
            };
            let mut chunk = String::new();
            for (row, diff) in &updates {
                let batch = tocsin_engine::row::rows_to_batch(&schema, std::iter::once(&row[..]))
                    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                n += copy_lines(&mut chunk, &batch, &format!("{time}\t{diff}"))?;
            }
            copy_send(client, chunk).await?;
        }
        copy_end(client, n).await
    }

    /// `COPY (SELECT | SHOW ...) TO STDOUT`: the rows in COPY text format.
    async fn copy_rows<C>(
        &self,
        client: &mut C,
        located: Located,
        text: &str,
    ) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (schema, batches) = match execute_one(&self.app, located).await {
            Ok(StatementResult::Rows { schema, batches }) => (schema, batches),
            Ok(_) => {
                let e = SqlError::new(
                    ErrorKind::Unsupported,
                    "COPY ... TO STDOUT takes a SELECT, SHOW or SUBSCRIBE",
                );
                return Err(user_error(&e, text));
            }
            Err(e) => return Err(user_error(&e, text)),
        };
        copy_start(client, schema.fields().len()).await?;
        let mut n = 0;
        for batch in &batches {
            let mut chunk = String::new();
            n += copy_lines(&mut chunk, batch, "")?;
            copy_send(client, chunk).await?;
        }
        copy_end(client, n).await
    }

    /// A statement that answers with COPY (SUBSCRIBE, or `COPY (...) TO STDOUT`), if it is one.
    fn copy_statement(text: &str) -> Result<Option<Located>, SqlError> {
        let (inner, copy) = match copy_to_stdout(text) {
            Some(inner) => (inner, true),
            None => (text, false),
        };
        let mut statements = tocsin_sql::parser::parse(inner)?;
        if statements.len() != 1 {
            return Ok(None);
        }
        let located = statements.pop().expect("one");
        let subscribe = matches!(located.statement, Statement::Subscribe { .. });
        if copy {
            copyable(&located)?;
        }
        Ok((copy || subscribe).then_some(located))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, text: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Err(info) = within_limit(&self.app, text) {
            return Ok(vec![Response::Error(info)]);
        }
        if copy_to_stdout(text).is_some() {
            return match Self::copy_statement(text) {
                Ok(Some(located)) => {
                    if let Err(info) =
                        permitted(&self.app, client, std::slice::from_ref(&located), text)
                    {
                        return Ok(vec![Response::Error(info)]);
                    }
                    if matches!(located.statement, Statement::Subscribe { .. }) {
                        Ok(vec![self.stream(client, located, text).await?])
                    } else {
                        Ok(vec![self.copy_rows(client, located, text).await?])
                    }
                }
                Ok(None) => Err(user_error(
                    &SqlError::plan("COPY ... TO STDOUT takes one statement"),
                    text,
                )),
                Err(e) => Err(user_error(&e, text)),
            };
        }
        let statements = match tocsin_sql::parser::parse(text) {
            Ok(s) => s,
            Err(e) => return Ok(vec![Response::Error(Box::new(error_info(&e, text)))]),
        };
        if statements.is_empty() {
            // Only comments, e.g. a driver's `-- ping`.
            return Ok(vec![Response::EmptyQuery]);
        }
        if let Err(info) = permitted(&self.app, client, &statements, text) {
            return Ok(vec![Response::Error(info)]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for (i, located) in statements.into_iter().enumerate() {
            if matches!(located.statement, Statement::Subscribe { .. }) {
                out.push(self.stream(client, located, text).await?);
                continue;
            }
            match self.run(located, Vec::new(), None).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    // Later statements do not run, as in PostgreSQL.
                    out.push(Response::Error(Box::new(error_info(
                        &e.in_statement(i),
                        text,
                    ))));
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// A statement prepared with the extended protocol: parsed once, with its parameter and result
/// types known at Parse time.
#[derive(Clone, Debug)]
pub struct Prepared {
    text: String,
    located: Located,
    /// Types of `$1`, `$2`, ... as the query implies them (text where it does not say).
    params: Vec<DataType>,
    /// The result columns; `None` for statements that return no rows.
    schema: Option<SchemaRef>,
}

struct Parser {
    app: AppRef,
}

/// Why a statement was not prepared.
enum Denied {
    Role(Box<ErrorInfo>),
    Sql(SqlError),
}

impl From<SqlError> for Denied {
    fn from(e: SqlError) -> Self {
        Denied::Sql(e)
    }
}

impl Parser {
    /// Parses and describes a statement; `allowed` refuses what the connection's role may not
    /// run before anything (a SHOW run for its columns included) runs.
    async fn prepare(
        &self,
        text: &str,
        allowed: impl Fn(&Located) -> Result<(), Box<ErrorInfo>>,
    ) -> PgWireResult<Option<Prepared>> {
        within_limit(&self.app, text).map_err(PgWireError::UserError)?;
        self.describe(text, allowed).await.map_err(|e| match e {
            Denied::Role(info) => PgWireError::UserError(info),
            Denied::Sql(e) => user_error(&e, text),
        })
    }

    async fn describe(
        &self,
        text: &str,
        allowed: impl Fn(&Located) -> Result<(), Box<ErrorInfo>>,
    ) -> Result<Option<Prepared>, Denied> {
        let inner = copy_to_stdout(text).unwrap_or(text);
        let mut statements = tocsin_sql::parser::parse(inner)?;
        let located = match statements.len() {
            0 => return Ok(None),
            1 => statements.pop().expect("one"),
            n => {
                return Err(SqlError::plan(format!(
                    "a prepared statement is one statement; this text has {n}"
                ))
                .into())
            }
        };
        allowed(&located).map_err(Denied::Role)?;
        if copy_to_stdout(text).is_some() {
            copyable(&located)?;
        }
        let (params, schema) = match &located.statement {
            _ if copy_to_stdout(text).is_some() => (Vec::new(), None),
            Statement::Query { query } => {
                let (params, schema) = self.app.tocsin.describe_query(query).await?;
                let params = params
                    .into_iter()
                    .map(|p| p.unwrap_or(DataType::Utf8))
                    .collect();
                (params, Some(schema))
            }
            // Read-only statements whose columns are known only by running them.
            Statement::Show { .. }
            | Statement::ShowAlerts
            | Statement::ShowColumns { .. }
            | Statement::Explain { .. }
            | Statement::ExplainQuery { .. } => {
                match execute_one(&self.app, located.clone()).await? {
                    StatementResult::Rows { schema, .. } => (Vec::new(), Some(schema)),
                    _ => (Vec::new(), None),
                }
            }
            _ => (Vec::new(), None),
        };
        Ok(Some(Prepared {
            text: text.to_string(),
            located,
            params,
            schema,
        }))
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.prepare(sql, |l| {
            permitted(&self.app, client, std::slice::from_ref(l), sql)
        })
        .await
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.params.iter().map(wire_type).collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(stmt
            .schema
            .as_ref()
            .map(|s| fields(s, column_format))
            .unwrap_or_default())
    }
}

/// A bound parameter as a value of the type the query implies.
fn parameter(portal: &Portal<Prepared>, i: usize) -> Result<ScalarValue, SqlError> {
    let stmt = &portal.statement.statement;
    let want = stmt.params.get(i).cloned().unwrap_or(DataType::Utf8);
    let declared = portal
        .statement
        .parameter_types
        .get(i)
        .cloned()
        .flatten()
        .unwrap_or_else(|| wire_type(&want));
    let bad = |e: PgWireError| SqlError::plan(format!("parameter ${}: {e}", i + 1));
    let value = if portal.parameter_format.is_binary(i) {
        match declared {
            Type::BOOL => {
                ScalarValue::Boolean(portal.parameter::<bool>(i, &declared).map_err(bad)?)
            }
            Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, &declared).map_err(bad)?),
            Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, &declared).map_err(bad)?),
            Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &declared).map_err(bad)?),
            Type::FLOAT4 => {
                ScalarValue::Float32(portal.parameter::<f32>(i, &declared).map_err(bad)?)
            }
            Type::FLOAT8 => {
                ScalarValue::Float64(portal.parameter::<f64>(i, &declared).map_err(bad)?)
            }
            Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                ScalarValue::Utf8(portal.parameter::<String>(i, &declared).map_err(bad)?)
            }
            other => {
                return Err(SqlError::unsupported(format!(
                    "parameter ${}: binary {other} values; send it as text",
                    i + 1
                )))
            }
        }
    } else {
        // Text: the raw bytes, converted like a string literal would be.
        match portal.parameters.get(i) {
            Some(Some(bytes)) => {
                ScalarValue::Utf8(Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    SqlError::plan(format!("parameter ${} is not UTF-8", i + 1))
                })?))
            }
            Some(None) => ScalarValue::Utf8(None),
            None => return Err(SqlError::plan(format!("parameter ${} has no value", i + 1))),
        }
    };
    value
        .cast_to(&want)
        .map_err(|e| SqlError::plan(format!("parameter ${}: {e}", i + 1)))
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let text = stmt.text.as_str();
        permitted(&self.app, client, std::slice::from_ref(&stmt.located), text)
            .map_err(PgWireError::UserError)?;
        if copy_to_stdout(text).is_some()
            || matches!(stmt.located.statement, Statement::Subscribe { .. })
        {
            return if matches!(stmt.located.statement, Statement::Subscribe { .. }) {
                self.stream(client, stmt.located.clone(), text).await
            } else {
                self.copy_rows(client, stmt.located.clone(), text).await
            };
        }
        if let Format::Individual(v) = &portal.result_column_format {
            let n = stmt.schema.as_ref().map_or(0, |s| s.fields().len());
            if v.len() != n {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "08P01".into(),
                    format!(
                        "bind message has {} result formats but query has {n} columns",
                        v.len()
                    ),
                ))));
            }
        }
        let n = portal.parameter_len().max(stmt.params.len());
        let params = (0..n)
            .map(|i| parameter(portal, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| user_error(&e, text))?;
        self.run(
            stmt.located.clone(),
            params,
            Some(&portal.result_column_format),
        )
        .await
        .map_err(|e| user_error(&e, text))
    }
}
