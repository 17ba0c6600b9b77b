//! The extended query protocol: statements prepared once (parameter and result types known at
//! Parse), parameters bound as values of the types the query implies.

use super::*;

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

pub(super) struct Parser {
    pub(super) app: AppRef,
}

/// Why a statement was not prepared.
pub(super) enum Denied {
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
            | Statement::ShowReplicas
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
pub(super) fn parameter(portal: &Portal<Prepared>, i: usize) -> Result<ScalarValue, SqlError> {
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
