//! tocsin's statements, parsed on top of sqlparser.
//!
//! tocsin's own DDL (`CREATE SOURCE`, `CREATE RULE`, `SHOW`, `EXPLAIN RULE`, `SUBSCRIBE`, ...) is
//! recognised by its leading words and parsed here with sqlparser's building blocks (identifiers,
//! column definitions, queries); everything else is handed to sqlparser's PostgreSQL dialect.
//! One parser runs over the whole request, so every error position is relative to the request.

use datafusion::sql::sqlparser::ast::{self, ColumnDef, Ident, ObjectName, Query};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token};

use crate::error::{Result, SqlError};

/// The kinds of catalog objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Source,
    View,
    Rule,
    Sink,
    Silence,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Source => "SOURCE",
            ObjectKind::View => "VIEW",
            ObjectKind::Rule => "RULE",
            ObjectKind::Sink => "SINK",
            ObjectKind::Silence => "SILENCE",
        }
    }
    fn from_word(w: &str) -> Option<Self> {
        Some(match w.to_ascii_uppercase().as_str() {
            "SOURCE" | "SOURCES" => ObjectKind::Source,
            "VIEW" | "VIEWS" => ObjectKind::View,
            "RULE" | "RULES" => ObjectKind::Rule,
            "SINK" | "SINKS" => ObjectKind::Sink,
            "SILENCE" | "SILENCES" => ObjectKind::Silence,
            _ => return None,
        })
    }
}

/// `key = 'value'` pairs of a `WITH (...)` clause, keys lowercased, in order.
pub type Options = Vec<(String, String)>;

/// What `SUBSCRIBE TO` reads.
#[derive(Clone, Debug)]
pub enum SubscribeTarget {
    Name(String),
    Query(Box<Query>),
}

/// One parsed statement.
#[derive(Clone, Debug)]
pub enum Statement {
    CreateSource {
        name: String,
        columns: Vec<ColumnDef>,
        connector: String,
        options: Options,
    },
    CreateView {
        name: String,
        query: Box<Query>,
        options: Options,
    },
    CreateRule {
        name: String,
        query: Box<Query>,
        options: Options,
    },
    CreateSink {
        name: String,
        connector: String,
        options: Options,
    },
    CreateSilence {
        name: String,
        options: Options,
    },
    Drop {
        kind: ObjectKind,
        name: String,
        if_exists: bool,
    },
    Show {
        kind: ObjectKind,
    },
    ShowAlerts,
    /// `SHOW REPLICAS`: this replica and its peers (`tocsin_replicas`).
    ShowReplicas,
    ShowColumns {
        name: String,
    },
    Explain {
        kind: Option<ObjectKind>,
        name: String,
    },
    ExplainQuery {
        query: Box<Query>,
    },
    Subscribe {
        target: SubscribeTarget,
    },
    Insert {
        source: String,
        columns: Vec<String>,
        query: Box<Query>,
    },
    Query {
        query: Box<Query>,
    },
    /// `SET name = value` and friends: accepted, they change nothing in tocsin.
    Set,
    /// `BEGIN`, `COMMIT`, `ROLLBACK` (as `"BEGIN"`, `"COMMIT"`, `"ROLLBACK"`): accepted for
    /// clients that wrap statements in transactions; tocsin has none, every statement takes
    /// effect when it runs.
    Transaction(&'static str),
}

/// What a statement needs of the one who sends it: the credential scopes of docs/security.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Reads: queries, `SHOW`, `EXPLAIN`, `SUBSCRIBE`, session statements.
    Read,
    /// Rows into a source: `INSERT`.
    Write,
    /// Changes to the catalog: `CREATE`, `DROP` (rules, sinks, silences, ...).
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }

    /// Whether a credential of this scope may do what `need` names: `admin` may do everything,
    /// `write` and `read` only their own part.
    pub fn allows(self, need: Access) -> bool {
        self == Access::Admin || self == need
    }
}

impl Statement {
    /// The scope a credential needs to run this statement.
    pub fn access(&self) -> Access {
        match self {
            Statement::CreateSource { .. }
            | Statement::CreateView { .. }
            | Statement::CreateRule { .. }
            | Statement::CreateSink { .. }
            | Statement::CreateSilence { .. }
            | Statement::Drop { .. } => Access::Admin,
            // Rows given as values; an INSERT that reads (a SELECT, a subquery) reads too, and only
            // admin may both read and write.
            Statement::Insert { query, .. } if values_only(query) => Access::Write,
            Statement::Insert { .. } => Access::Admin,
            Statement::Show { .. }
            | Statement::ShowAlerts
            | Statement::ShowReplicas
            | Statement::ShowColumns { .. }
            | Statement::Explain { .. }
            | Statement::ExplainQuery { .. }
            | Statement::Subscribe { .. }
            | Statement::Query { .. }
            | Statement::Set
            | Statement::Transaction(_) => Access::Read,
        }
    }

    /// Whether the statement only reads and answers with rows: what `COPY (...) TO STDOUT` and
    /// a prepared statement's description may run.
    pub fn returns_rows(&self) -> bool {
        matches!(
            self,
            Statement::Show { .. }
                | Statement::ShowAlerts
                | Statement::ShowReplicas
                | Statement::ShowColumns { .. }
                | Statement::Explain { .. }
                | Statement::ExplainQuery { .. }
                | Statement::Query { .. }
        )
    }
}

/// Whether a query is `VALUES` of expressions that read nothing (no subqueries, no `WITH`).
fn values_only(query: &Query) -> bool {
    use datafusion::sql::sqlparser::ast::{Expr, SetExpr, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Reads;
    impl Visitor for Reads {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    query.with.is_none()
        && matches!(*query.body, SetExpr::Values(_))
        && Visit::visit(query, &mut Reads).is_continue()
}

/// A statement and where it starts in the request.
#[derive(Clone, Debug)]
pub struct Located {
    pub statement: Statement,
    pub start: Location,
    /// The statement's text as it was written (without the `;` after it).
    pub text: String,
}

/// The byte offset of a token's location in `sql` (the end for a location past it).
fn offset(sql: &str, at: Location) -> usize {
    if at.line == 0 {
        return sql.len();
    }
    let line_start = sql
        .split_inclusive('\n')
        .take(at.line as usize - 1)
        .map(str::len)
        .sum::<usize>();
    let rest = &sql[line_start.min(sql.len())..];
    line_start
        + rest
            .char_indices()
            .nth(at.column.saturating_sub(1) as usize)
            .map_or(rest.len(), |(i, _)| i)
}

/// An identifier as SQL names it: unquoted names are case-insensitive (lowercased).
pub fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn object_name(name: &ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [part] => {
            Ok(normalize(part.as_ident().ok_or_else(|| {
                SqlError::plan(format!("invalid name {name}"))
            })?))
        }
        _ => Err(SqlError::unsupported(format!(
            "qualified name {name}: tocsin has one namespace"
        ))),
    }
}

struct P<'a> {
    p: Parser<'a>,
}

impl P<'_> {
    fn word(&self, n: usize) -> Option<String> {
        match &self.p.peek_nth_token_ref(n).token {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn err(&self, msg: impl Into<String>) -> SqlError {
        let loc = self.p.peek_token().span.start;
        SqlError::new(crate::error::ErrorKind::Parse, msg).at(loc.line, loc.column)
    }

    fn name(&mut self) -> Result<String> {
        let n = self.p.parse_object_name(false)?;
        object_name(&n)
    }

    fn options(&mut self) -> Result<Options> {
        let mut out = Vec::new();
        if !self.p.parse_keyword(Keyword::WITH) {
            return Ok(out);
        }
        self.p.expect_token(&Token::LParen)?;
        loop {
            let key = match self.p.next_token().token {
                // Option names are plain words: they are written back into the catalog log as
                // they are, so a quoted name (which could hold any text) is refused.
                Token::Word(w) if w.quote_style.is_none() => w.value.to_lowercase(),
                Token::Word(w) => {
                    return Err(self.err(format!(
                        "Expected: an option name (a plain word), found: {w}"
                    )))
                }
                other => return Err(self.err(format!("Expected: an option name, found: {other}"))),
            };
            self.p.expect_token(&Token::Eq)?;
            let tok = self.p.next_token();
            let value = match tok.token {
                Token::SingleQuotedString(s) => s,
                Token::Number(n, _) => n,
                Token::Word(w) => w.value,
                other => {
                    return Err(SqlError::new(
                        crate::error::ErrorKind::Parse,
                        format!("Expected: a value for option {key}, found: {other}"),
                    )
                    .at(tok.span.start.line, tok.span.start.column))
                }
            };
            if out.iter().any(|(k, _)| *k == key) {
                return Err(self.err(format!("option {key} is given twice")));
            }
            out.push((key, value));
            if !self.p.consume_token(&Token::Comma) {
                break;
            }
        }
        self.p.expect_token(&Token::RParen)?;
        Ok(out)
    }

    /// Parses a query that may be followed by `WITH (...)` options ending the statement. The
    /// query's tokens are parsed on their own, so the options are never mistaken for table hints.
    fn query_before_options(&mut self) -> Result<Box<Query>> {
        let mut depth = 0i32;
        let mut end = 0;
        let mut options_at = None;
        loop {
            let tok = &self.p.peek_nth_token_ref(end).token;
            match tok {
                Token::EOF => break,
                Token::SemiColon if depth == 0 => break,
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::Word(w)
                    if depth == 0
                        && w.keyword == Keyword::WITH
                        && end > 0
                        && self.p.peek_nth_token_ref(end + 1).token == Token::LParen =>
                {
                    options_at = Some(end);
                }
                _ => {}
            }
            end += 1;
        }
        let n = options_at.unwrap_or(end);
        let mut tokens: Vec<_> = (0..n)
            .map(|i| self.p.peek_nth_token_ref(i).clone())
            .collect();
        let eof_span = self.p.peek_nth_token_ref(n).span;
        tokens.push(datafusion::sql::sqlparser::tokenizer::TokenWithSpan::new(
            Token::EOF,
            eof_span,
        ));
        let dialect = PostgreSqlDialect {};
        let mut sub = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let query = sub.parse_query()?;
        if sub.peek_token().token != Token::EOF {
            let t = sub.peek_token();
            return Err(SqlError::new(
                crate::error::ErrorKind::Parse,
                format!(
                    "Expected: WITH (...) or end of statement, found: {}",
                    t.token
                ),
            )
            .at(t.span.start.line, t.span.start.column));
        }
        for _ in 0..n {
            self.p.next_token();
        }
        Ok(query)
    }

    fn statement(&mut self) -> Result<Statement> {
        let w0 = self.word(0);
        let w1 = self.word(1);
        match (w0.as_deref(), w1.as_deref()) {
            (Some("CREATE"), Some("SOURCE")) => {
                self.p.next_token();
                self.p.next_token();
                let name = self.name()?;
                let columns = if self.p.peek_token().token == Token::LParen {
                    let (cols, constraints) = self.p.parse_columns()?;
                    if !constraints.is_empty() {
                        return Err(SqlError::unsupported("table constraints on a source"));
                    }
                    cols
                } else {
                    Vec::new()
                };
                self.p.expect_keyword(Keyword::FROM)?;
                let mut connector = match self.p.next_token().token {
                    Token::Word(w) => w.value.to_ascii_uppercase(),
                    other => {
                        return Err(self.err(format!(
                            "Expected: a connector ({}), found: {other}",
                            tocsin_connectors::registry::source_names()
                        )))
                    }
                };
                // A connector's name may be several words (`SNMP TRAP`).
                while let Some(w) = self.word(0).filter(|w| w != "WITH") {
                    self.p.next_token();
                    connector.push(' ');
                    connector.push_str(&w);
                }
                let options = self.options()?;
                Ok(Statement::CreateSource {
                    name,
                    columns,
                    connector,
                    options,
                })
            }
            (Some("CREATE"), Some("RULE")) => {
                self.p.next_token();
                self.p.next_token();
                let name = self.name()?;
                self.p.expect_keyword(Keyword::AS)?;
                let query = self.query_before_options()?;
                let options = self.options()?;
                Ok(Statement::CreateRule {
                    name,
                    query,
                    options,
                })
            }
            (Some("CREATE"), Some("SINK")) => {
                self.p.next_token();
                self.p.next_token();
                let name = self.name()?;
                if self.word(0).as_deref() != Some("TO") {
                    return Err(self.err(format!(
                        "Expected: TO EMAIL, TO WEBHOOK or TO LOG, found: {}",
                        self.p.peek_token().token
                    )));
                }
                self.p.next_token();
                let connector = match self.p.next_token().token {
                    Token::Word(w) => w.value.to_ascii_uppercase(),
                    other => {
                        return Err(self.err(format!(
                            "Expected: a sink connector (EMAIL, WEBHOOK, LOG), found: {other}"
                        )))
                    }
                };
                let options = self.options()?;
                Ok(Statement::CreateSink {
                    name,
                    connector,
                    options,
                })
            }
            (Some("CREATE"), Some("SILENCE")) => {
                self.p.next_token();
                self.p.next_token();
                let name = self.name()?;
                let options = self.options()?;
                Ok(Statement::CreateSilence { name, options })
            }
            (Some("CREATE"), Some("VIEW")) => {
                self.p.next_token();
                self.p.next_token();
                let name = self.name()?;
                self.p.expect_keyword(Keyword::AS)?;
                let query = self.query_before_options()?;
                // A trailing WITH (...) would otherwise be read as table hints and ignored, so
                // a misplaced option would go unnoticed.
                let at = self.p.peek_token().span.start;
                let options = self.options()?;
                if let Some((key, _)) = options.iter().find(|(k, _)| k != "history") {
                    return Err(SqlError::new(
                        crate::error::ErrorKind::Parse,
                        format!(
                            "unknown option '{key}' for a view: a view takes only history (rules take for, severity, sink, ...)"
                        ),
                    )
                    .at(at.line, at.column));
                }
                Ok(Statement::CreateView {
                    name,
                    query,
                    options,
                })
            }
            (Some("DROP"), Some(w)) if ObjectKind::from_word(w).is_some() => {
                self.p.next_token();
                self.p.next_token();
                let kind = ObjectKind::from_word(w).expect("checked");
                let if_exists = self.p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let name = self.name()?;
                Ok(Statement::Drop {
                    kind,
                    name,
                    if_exists,
                })
            }
            (Some("SHOW"), Some("ALERTS")) => {
                self.p.next_token();
                self.p.next_token();
                Ok(Statement::ShowAlerts)
            }
            (Some("SHOW"), Some("REPLICAS")) => {
                self.p.next_token();
                self.p.next_token();
                Ok(Statement::ShowReplicas)
            }
            (Some("SHOW"), Some("COLUMNS")) => {
                self.p.next_token();
                self.p.next_token();
                if !self.p.parse_keyword(Keyword::FROM) {
                    self.p.expect_keyword(Keyword::IN)?;
                }
                Ok(Statement::ShowColumns { name: self.name()? })
            }
            (Some("SHOW"), Some(w)) if ObjectKind::from_word(w).is_some() && w.ends_with('S') => {
                self.p.next_token();
                self.p.next_token();
                Ok(Statement::Show {
                    kind: ObjectKind::from_word(w).expect("checked"),
                })
            }
            (Some("EXPLAIN"), Some(w)) if ObjectKind::from_word(w).is_some() => {
                self.p.next_token();
                self.p.next_token();
                Ok(Statement::Explain {
                    kind: ObjectKind::from_word(w),
                    name: self.name()?,
                })
            }
            (Some("EXPLAIN"), Some("SELECT" | "WITH")) => {
                self.p.next_token();
                Ok(Statement::ExplainQuery {
                    query: self.p.parse_query()?,
                })
            }
            (Some("SUBSCRIBE"), _) => {
                self.p.next_token();
                if self.word(0).as_deref() == Some("TO") {
                    self.p.next_token();
                }
                let target = if self.p.consume_token(&Token::LParen) {
                    let q = self.p.parse_query()?;
                    self.p.expect_token(&Token::RParen)?;
                    SubscribeTarget::Query(q)
                } else {
                    SubscribeTarget::Name(self.name()?)
                };
                Ok(Statement::Subscribe { target })
            }
            (Some("SELECT" | "WITH" | "VALUES"), _) | (None, _)
                if w0.is_some() || self.p.peek_token().token == Token::LParen =>
            {
                Ok(Statement::Query {
                    query: self.p.parse_query()?,
                })
            }
            _ => {
                let start = self.p.peek_token().span.start;
                let stmt = self.p.parse_statement()?;
                convert_generic(stmt).map_err(|e| e.at(start.line, start.column))
            }
        }
    }
}

fn convert_generic(stmt: ast::Statement) -> Result<Statement> {
    match stmt {
        ast::Statement::Query(query) => Ok(Statement::Query { query }),
        ast::Statement::Insert(ins) => {
            let source = match &ins.table {
                ast::TableObject::TableName(n) => object_name(n)?,
                other => return Err(SqlError::unsupported(format!("INSERT INTO {other}"))),
            };
            let columns = ins
                .columns
                .iter()
                .map(object_name)
                .collect::<Result<Vec<_>>>()?;
            let query = ins
                .source
                .ok_or_else(|| SqlError::plan("INSERT needs VALUES or a SELECT"))?;
            Ok(Statement::Insert {
                source,
                columns,
                query,
            })
        }
        ast::Statement::Set(_) => Ok(Statement::Set),
        ast::Statement::StartTransaction { .. } => Ok(Statement::Transaction("BEGIN")),
        ast::Statement::Commit { .. } => Ok(Statement::Transaction("COMMIT")),
        ast::Statement::Rollback { .. } => Ok(Statement::Transaction("ROLLBACK")),
        other => {
            let text = other.to_string();
            let head: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Err(SqlError::unsupported(format!("{head} statements")))
        }
    }
}

/// Parses a request of one or more `;`-separated statements.
/// What to follow, as `GET /v1/subscribe?q=` gives it: the name of a source, view or rule, or
/// exactly one query (`SELECT`, `WITH`, `VALUES`, or one in parentheses). The text is parsed on
/// its own and never pasted into a statement, so anything after the name or the query (a `;`
/// and a second statement included) is an error with its position.
pub fn parse_subscribe_target(text: &str) -> Result<SubscribeTarget> {
    let dialect = PostgreSqlDialect {};
    let parser = Parser::new(&dialect).try_with_sql(text)?;
    let mut p = P { p: parser };
    let query = matches!(p.word(0).as_deref(), Some("SELECT" | "WITH" | "VALUES"))
        || p.p.peek_token().token == Token::LParen;
    let target = if query {
        SubscribeTarget::Query(p.p.parse_query()?)
    } else if p.p.peek_token().token == Token::EOF {
        return Err(
            p.err("Expected: the name of a source, view or rule, or a SELECT; found nothing")
        );
    } else {
        SubscribeTarget::Name(p.name()?)
    };
    // One trailing semicolon is tolerated, as in a statement; nothing may follow it.
    let _ = p.p.consume_token(&Token::SemiColon);
    if p.p.peek_token().token != Token::EOF {
        let t = p.p.peek_token();
        return Err(p.err(format!(
            "Expected: end of the subscription (one name or one query), found: {}",
            t.token
        )));
    }
    Ok(target)
}

pub fn parse(sql: &str) -> Result<Vec<Located>> {
    let dialect = PostgreSqlDialect {};
    let parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut p = P { p: parser };
    let mut out = Vec::new();
    loop {
        while p.p.consume_token(&Token::SemiColon) {}
        if p.p.peek_token().token == Token::EOF {
            break;
        }
        let start = p.p.peek_token().span.start;
        let statement = p.statement().map_err(|e| e.in_statement(out.len()))?;
        let end = p.p.peek_token().span.start;
        let text = sql[offset(sql, start)..offset(sql, end).max(offset(sql, start))]
            .trim()
            .to_string();
        out.push(Located {
            statement,
            start,
            text,
        });
        if !p.p.consume_token(&Token::SemiColon) && p.p.peek_token().token != Token::EOF {
            let e: SqlError = ParserError::ParserError(format!(
                "Expected: end of statement, found: {} at Line: {}, Column: {}",
                p.p.peek_token().token,
                p.p.peek_token().span.start.line,
                p.p.peek_token().span.start.column
            ))
            .into();
            return Err(e.in_statement(out.len() - 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_statement_keeps_its_text() {
        let sql = "CREATE SOURCE a (x BIGINT) FROM HTTP;\n  DROP SOURCE a ;SELECT 'é;', 1\n";
        let texts: Vec<String> = parse(sql).unwrap().into_iter().map(|l| l.text).collect();
        assert_eq!(
            texts,
            [
                "CREATE SOURCE a (x BIGINT) FROM HTTP",
                "DROP SOURCE a",
                "SELECT 'é;', 1"
            ]
        );
    }

    #[test]
    fn parses_the_design_examples() {
        let stmts = parse(
            "CREATE SOURCE cpu (host TEXT, cpu DOUBLE, ts TIMESTAMP) FROM WEBSOCKET WITH (format = 'json', retain = '10 minutes');
             CREATE RULE hot_cpu AS SELECT host, avg(cpu) AS cpu FROM cpu WHERE ts > now() - INTERVAL '1 minute' GROUP BY host HAVING avg(cpu) > 90
               WITH (for = '30s', severity = 'critical', summary = 'CPU {{cpu}}% on {{host}}', sink = 'oncall');
             SHOW RULES; DROP RULE hot_cpu; EXPLAIN RULE hot_cpu; SUBSCRIBE TO cpu; SELECT 1",
        )
        .unwrap();
        assert_eq!(stmts.len(), 7);
        match &stmts[1].statement {
            Statement::CreateRule { name, options, .. } => {
                assert_eq!(name, "hot_cpu");
                assert_eq!(options[0], ("for".to_string(), "30s".to_string()));
                assert_eq!(options.len(), 4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stmts[1].start.line, 2);
    }

    #[test]
    fn errors_carry_statement_and_position() {
        let e = parse("SHOW RULES;\nSELECT host FROM cpu WHERE cpu > > 3").unwrap_err();
        assert_eq!(e.statement, 1);
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn a_subscription_is_one_name_or_one_query() {
        assert!(matches!(
            parse_subscribe_target("cpu_1m").unwrap(),
            SubscribeTarget::Name(n) if n == "cpu_1m"
        ));
        assert!(matches!(
            parse_subscribe_target("\"Mixed Case\"").unwrap(),
            SubscribeTarget::Name(n) if n == "Mixed Case"
        ));
        assert!(matches!(
            parse_subscribe_target("SELECT host FROM cpu WHERE cpu > 90;").unwrap(),
            SubscribeTarget::Query(_)
        ));
        assert!(matches!(
            parse_subscribe_target("(SELECT 1)").unwrap(),
            SubscribeTarget::Query(_)
        ));
        // Attempts to end the subscription early and run a second statement.
        for text in [
            "SELECT * FROM tocsin_alert_events); DROP VIEW victim; SUBSCRIBE TO (SELECT 1",
            "victim; DROP VIEW victim",
            "victim DROP VIEW victim",
            "SELECT 1; DROP VIEW victim",
            "SELECT 1; SELECT 2",
            "(SELECT 1)); DROP VIEW victim; --",
            "DROP VIEW victim",
            "CREATE SINK s TO WEBHOOK WITH (url = 'http://evil.example/')",
            "INSERT INTO cpu VALUES ('a', 1)",
            "victim, other",
            "public.victim",
            "",
            "   ",
            "SELECT 1 /* */ ; ; SELECT 2",
        ] {
            assert!(
                parse_subscribe_target(text).is_err(),
                "{text:?} must not be accepted"
            );
        }
    }

    #[test]
    fn a_view_takes_no_options() {
        let e = parse("CREATE VIEW v AS SELECT host FROM h WITH (bogus_option = 'x')").unwrap_err();
        assert!(
            e.message.contains("unknown option 'bogus_option'"),
            "{}",
            e.message
        );
        assert!(parse("CREATE VIEW v AS WITH t AS (SELECT 1 AS a) SELECT a FROM t").is_ok());
    }

    #[test]
    fn option_names_are_plain_words() {
        let e =
            parse("CREATE SINK s TO LOG WITH (\"x = '1'); DROP VIEW v; --\" = 'y')").unwrap_err();
        assert!(e.message.contains("option name"), "{}", e.message);
    }

    #[test]
    fn statements_name_the_scope_they_need() {
        let scopes: Vec<Access> = parse(
            "SELECT 1; SHOW RULES; EXPLAIN RULE r; SUBSCRIBE TO v; SET x = 1; BEGIN;
             INSERT INTO cpu VALUES ('a', 1);
             CREATE VIEW v AS SELECT 1; DROP RULE r; CREATE SILENCE s WITH (matchers = 'a=b', until = '1h')",
        )
        .unwrap()
        .iter()
        .map(|l| l.statement.access())
        .collect();
        use Access::*;
        assert_eq!(
            scopes,
            [Read, Read, Read, Read, Read, Read, Write, Admin, Admin, Admin]
        );
        // An INSERT that reads needs admin: a write credential could read through it.
        for sql in [
            "INSERT INTO cpu (host) SELECT secret FROM v",
            "INSERT INTO cpu (host) VALUES ((SELECT secret FROM v))",
            "INSERT INTO cpu (host) VALUES ('a'), ('b' || (SELECT max(x) FROM v))",
            "INSERT INTO cpu (v) VALUES (CASE WHEN EXISTS (SELECT 1 FROM v) THEN 1 ELSE 0 END)",
            "INSERT INTO cpu (v) VALUES (1 IN (SELECT x FROM v))",
            "INSERT INTO cpu (host) WITH s AS (SELECT 1) VALUES ('a')",
        ] {
            let s = parse(sql).unwrap();
            assert_eq!(s[0].statement.access(), Admin, "{sql}");
        }
        let s = parse("INSERT INTO cpu (host, v) VALUES ('a', 1 + 2), ('b', -3.5)").unwrap();
        assert_eq!(s[0].statement.access(), Write);
        assert!(Admin.allows(Write) && Admin.allows(Read) && Admin.allows(Admin));
        assert!(Write.allows(Write) && !Write.allows(Read) && !Write.allows(Admin));
        assert!(Read.allows(Read) && !Read.allows(Write) && !Read.allows(Admin));
    }
}
