//! PostgreSQL functions DataFusion lacks: `current_setting`, `version`, `quote_ident`,
//! `parse_ident`, `array_lower`/`array_upper`, `current_user` and friends.

use super::*;

/// The PostgreSQL functions tocsin adds to ad hoc queries.
pub(super) fn functions() -> Vec<ScalarUDF> {
    let version = format!(
        "PostgreSQL {SERVER_VERSION} (tocsin {}), compatible wire protocol and catalog",
        env!("CARGO_PKG_VERSION")
    );
    vec![
        ScalarUDF::from(Constant::new("version", &[], version)),
        ScalarUDF::from(Constant::new(
            "current_user",
            &["user", "session_user", "current_role"],
            USER.into(),
        )),
        ScalarUDF::from(Constant::new(
            "current_database",
            &["current_catalog"],
            DATABASE.into(),
        )),
        ScalarUDF::from(Constant::new("current_schema", &[], SCHEMA.into())),
        ScalarUDF::from(TextFunction::new(TextKind::CurrentSetting)),
        ScalarUDF::from(TextFunction::new(TextKind::QuoteIdent)),
        ScalarUDF::from(ParseIdent::new()),
        ScalarUDF::from(ArrayBound::new("array_lower", false)),
        ScalarUDF::from(ArrayBound::new("array_upper", true)),
    ]
}

/// A function of no arguments with a fixed value.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Constant {
    name: &'static str,
    aliases: Vec<String>,
    value: String,
    signature: Signature,
}

impl Constant {
    fn new(name: &'static str, aliases: &[&str], value: String) -> Self {
        Constant {
            name,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            value,
            signature: Signature::nullary(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }
    fn aliases(&self) -> &[String] {
        &self.aliases
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.value.clone(),
        ))))
    }
    fn simplify(&self, _: Vec<Expr>, _: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        Ok(ExprSimplifyResult::Simplified(Expr::Literal(
            ScalarValue::Utf8(Some(self.value.clone())),
            None,
        )))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum TextKind {
    CurrentSetting,
    QuoteIdent,
}

/// A text → text function; NULL gives NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct TextFunction {
    kind: TextKind,
    signature: Signature,
}

impl TextFunction {
    fn new(kind: TextKind) -> Self {
        TextFunction {
            kind,
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }
    }
    fn apply(&self, s: &str) -> std::result::Result<String, String> {
        match self.kind {
            TextKind::CurrentSetting => setting(s).map(str::to_string),
            TextKind::QuoteIdent => Ok(quote_ident(s)),
        }
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        match self.kind {
            TextKind::CurrentSetting => "current_setting",
            TextKind::QuoteIdent => "quote_ident",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let input = input.as_string::<i32>();
        let out = input
            .iter()
            .map(|v| v.map(|v| self.apply(v)).transpose())
            .collect::<std::result::Result<StringArray, String>>()
            .map_err(DataFusionError::Execution)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// PostgreSQL's reserved and column-name keywords: `quote_ident` quotes these.
pub(super) const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// PostgreSQL's `quote_ident`: double-quotes a name unless it is a plain lower-case identifier
/// that is not a keyword.
pub fn quote_ident(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !KEYWORDS.contains(&s);
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// PostgreSQL's `parse_ident`: splits a qualified name into its parts; quoted parts are kept as
/// written, unquoted ones lower-cased.
pub fn parse_ident(s: &str) -> std::result::Result<Vec<String>, String> {
    let invalid = || format!("string is not a valid identifier: \"{s}\"");
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(invalid()),
                }
            }
            if part.is_empty() {
                return Err(invalid());
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == '.' || c.is_whitespace() {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return Err(invalid());
            }
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return Err(invalid()),
        }
    }
}

pub(super) fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct ParseIdent {
    signature: Signature,
}

impl ParseIdent {
    fn new() -> Self {
        ParseIdent {
            signature: Signature::uniform(1, vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ParseIdent {
    fn name(&self) -> &str {
        "parse_ident"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(text_list())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let input = input.as_string::<i32>();
        let mut values: Vec<String> = Vec::new();
        let mut offsets = vec![0i32];
        let mut valid = Vec::with_capacity(input.len());
        for v in input.iter() {
            match v {
                Some(v) => {
                    values.extend(parse_ident(v).map_err(DataFusionError::Execution)?);
                    valid.push(true);
                }
                None => valid.push(false),
            }
            offsets.push(values.len() as i32);
        }
        let list = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Utf8, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(StringArray::from(values)),
            Some(valid.into()),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `array_lower(array, dimension)` / `array_upper(...)`: arrays have one dimension and start at
/// 1; an empty or NULL array, or another dimension, gives NULL. The result is a bigint (not
/// PostgreSQL's int), which is what `generate_series` takes.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct ArrayBound {
    name: &'static str,
    upper: bool,
    signature: Signature,
}

impl ArrayBound {
    fn new(name: &'static str, upper: bool) -> Self {
        ArrayBound {
            name,
            upper,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ArrayBound {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !matches!(
            args[0],
            DataType::List(_) | DataType::LargeList(_) | DataType::Null
        ) {
            return Err(DataFusionError::Plan(format!(
                "{}() takes an array, not {}",
                self.name, args[0]
            )));
        }
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let dim = datafusion::arrow::compute::cast(&arrays[1], &DataType::Int64)?;
        let dim = dim.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let lens: Vec<Option<usize>> = match arrays[0].data_type() {
            DataType::List(_) => {
                let l = arrays[0].as_list::<i32>();
                (0..n)
                    .map(|i| (!l.is_null(i)).then(|| l.value_length(i) as usize))
                    .collect()
            }
            DataType::LargeList(_) => {
                let l = arrays[0].as_list::<i64>();
                (0..n)
                    .map(|i| (!l.is_null(i)).then(|| l.value_length(i) as usize))
                    .collect()
            }
            _ => vec![None; n],
        };
        let out: Int64Array = (0..n)
            .map(|i| {
                let len = lens[i].filter(|l| *l > 0)?;
                if dim.is_null(i) || dim.value(i) != 1 {
                    return None;
                }
                Some(if self.upper { len as i64 } else { 1 })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
