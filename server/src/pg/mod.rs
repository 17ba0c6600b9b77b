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

mod auth;
mod copy;
mod encode;
mod errors;
mod extended;

use auth::*;
use copy::*;
use encode::*;
use errors::*;
use extended::*;

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
                app: Arc::downgrade(&app),
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
                        text: located.text.clone(),
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
        self.app.limits.bound(&sub);
        self.app.metrics.subscriber(sub.backlog());
        let schema = sub.schema().clone();
        copy_start(client, schema.fields().len() + 2).await?;
        let mut n = 0;
        while let Some(event) = sub.next().await {
            let (time, updates) = match event {
                SubscribeEvent::Changes { time, updates } => (time, updates),
                SubscribeEvent::Progress(_) => continue,
                SubscribeEvent::Lagged { behind } => {
                    self.app
                        .metrics
                        .subscribers_closed_slow
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let reason = format!(
                        "subscriber too slow: {behind} changes behind (--subscriber-buffer-changes, --subscriber-buffer); subscribe again for a fresh snapshot"
                    );
                    tracing::info!("pg subscriber closed: {reason}");
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".into(),
                        "53400".into(),
                        reason,
                    ))));
                }
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
