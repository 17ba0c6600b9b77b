//! The PostgreSQL wire protocol against real clients: psql (simple protocol), psycopg (extended,
//! text parameters) and tokio-postgres (extended, binary results), with every query Grafana's
//! PostgreSQL data source sends by itself.

use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::common::{eventually, request_with, run_piped, Server};

fn port(s: &Server) -> &str {
    s.addr.rsplit(':').next().unwrap()
}

fn conninfo(s: &Server) -> String {
    format!(
        "host=127.0.0.1 port={} user=grafana dbname=tocsin sslmode=disable",
        port(s)
    )
}

async fn connect(s: &Server) -> Client {
    let (client, conn) = tokio_postgres::connect(&conninfo(s), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", s.log()));
    tokio::spawn(conn);
    client
}

/// `psql -At` with the given arguments; stdout, stderr and success.
fn psql(s: &Server, args: &[&str], stdin: Option<&str>) -> (String, String, bool) {
    let mut command = Command::new("psql");
    command
        .arg(conninfo(s))
        .args(["-X", "-At", "-F", "|"])
        .args(args);
    // psql is needed for these tests (apt-get install postgresql-client).
    let out = run_piped(command, stdin);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// A server with a source `cpu` holding three rows at known times and a view over it.
async fn with_data() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]).await;
    s.rows("CREATE SOURCE cpu (ts TIMESTAMP, host TEXT, usage DOUBLE, cores BIGINT, up BOOLEAN) FROM HTTP WITH (retain = '1 day')").await;
    s.rows("CREATE VIEW busy AS SELECT host, max(usage) AS peak FROM cpu GROUP BY host")
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    // Three rows a minute apart, the last one 10 s ago, on whole seconds.
    let base = (now / 1000 - 130) * 1000;
    let body = serde_json::json!([
        {"ts": base, "host": "web-1", "usage": 10.5, "cores": 4, "up": true},
        {"ts": base + 60_000, "host": "web-2", "usage": 20.25, "cores": 8, "up": false},
        {"ts": base + 120_000, "host": "web-1", "usage": 30.0, "cores": 4, "up": true},
    ]);
    let (st, ack) = s
        .ingest("cpu", "application/json", body.to_string().into_bytes())
        .await;
    assert_eq!((st, ack["accepted"].as_u64()), (200, Some(3)), "{ack}");
    (dir, s)
}

/// The first row's time in column `column`, epoch ms.
fn first_ms(rows: &[tokio_postgres::Row], column: &str) -> i64 {
    let t: std::time::SystemTime = rows[0].get(column);
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// What schema `public` lists: the source and view, and tocsin's alert relations (so alert
/// history can be graphed too).
fn public_tables() -> Vec<Vec<&'static str>> {
    ["busy", "cpu", "tocsin_alert_events", "tocsin_alerts"]
        .iter()
        .map(|t| vec![*t])
        .collect()
}

/// The queries Grafana's data source sends on its own (configuration, table and column lists),
/// verbatim, over the simple protocol as Grafana does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_meta_queries_work_verbatim() {
    let (_dir, s) = with_data().await;
    let c = connect(&s).await;
    let simple = |sql: &'static str| {
        let c = &c;
        async move {
            c.simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    // Health check: a query that is only a comment (answered EmptyQueryResponse: no rows).
    for ping in ["-- ping", ";"] {
        let answer = c.simple_query(ping).await.unwrap();
        assert!(
            !answer
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(_))),
            "{ping}"
        );
    }
    assert_eq!(
        simple("SELECT current_setting('server_version_num')::int/100 as version").await,
        vec![vec!["1400"]]
    );
    let v = c
        .query_one(
            "SELECT current_setting('server_version_num')::int/100 as version",
            &[],
        )
        .await
        .unwrap();
    // int / int: an integer (bigint, as DataFusion types the division).
    assert_eq!(v.columns()[0].type_(), &Type::INT8);
    assert_eq!(v.get::<_, i64>("version"), 1400);
    assert!(
        simple("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .await
            .is_empty()
    );
    assert!(simple("SELECT version()").await[0][0].starts_with("PostgreSQL 14.0 (tocsin"));
    assert_eq!(
        simple("SELECT current_setting('search_path')").await,
        vec![vec!["public"]]
    );
    for set in [
        "SET datestyle TO 'ISO, MDY'",
        "SET TIME ZONE 'UTC'",
        "SET application_name = 'grafana'",
    ] {
        c.simple_query(set)
            .await
            .unwrap_or_else(|e| panic!("{set}: {e}"));
    }
    assert_eq!(
        simple(
            r#"SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"#
        )
        .await,
        vec![vec!["public"]]
    );
    assert_eq!(
        simple(
            r#"SELECT quote_ident(table_name) AS "table"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1"#
        )
        .await,
        public_tables()
    );
    // The table list without a schema, with its search-path constraint.
    assert_eq!(
        simple(
            r#"SELECT
    CASE WHEN 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          ) THEN 0 ELSE 1 END, 1"#
        )
        .await,
        public_tables()
    );
    // Grafana 10.0's table list.
    assert_eq!(
        simple(
            r#"select quote_ident(table_name) as "table" from information_schema.tables
    where quote_ident(table_schema) not in ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
      and table_type = 'BASE TABLE' and 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"#
        )
        .await,
        vec![vec!["cpu"], vec!["tocsin_alert_events"],]
    );
    let columns = vec![
        vec!["ts", "timestamp with time zone"],
        vec!["host", "text"],
        vec!["usage", "double precision"],
        vec!["cores", "bigint"],
        vec!["up", "boolean"],
    ];
    assert_eq!(
        simple(
            r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('cpu'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('cpu'))[1]
          AND quote_ident(table_name) = (parse_ident('cpu'))[2]
        ELSE quote_ident(table_name) = 'cpu'
          AND 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      END"#
        )
        .await,
        columns
    );
    assert_eq!(
        simple(
            r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('public.cpu'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('public.cpu'))[1]
          AND quote_ident(table_name) = (parse_ident('public.cpu'))[2]
        ELSE quote_ident(table_name) = 'public.cpu'
      END"#
        )
        .await,
        columns
    );
    assert_eq!(
        simple("SELECT datname FROM pg_database WHERE datistemplate = false").await,
        vec![vec!["tocsin"]]
    );
}

/// A row of Grafana's column query: name, data_type, udt_name, precision, scale.
type ColumnInfo = (String, String, String, Option<i32>, Option<i32>);

/// Grafana's newest schema browser: the extended protocol with `$1`/`$2` and binary integers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_schema_browser_queries_take_parameters() {
    let (_dir, s) = with_data().await;
    let c = connect(&s).await;
    let schemas = c
        .query(
            "SELECT schema_name FROM information_schema.schemata
		 WHERE schema_name NOT LIKE 'pg_%' AND schema_name != 'information_schema'
		 ORDER BY schema_name",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = schemas.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, vec!["public"]);
    let tables = c
        .query(
            "SELECT table_name FROM information_schema.tables
		 WHERE table_schema = $1 AND table_type IN ('BASE TABLE', 'VIEW')
		 ORDER BY table_name",
            &[&"public"],
        )
        .await
        .unwrap();
    let names: Vec<String> = tables.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, public_tables().concat());
    let stmt = c
        .prepare(
            "SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale
		 FROM information_schema.columns
		 WHERE table_schema = $1 AND table_name = $2
		 ORDER BY ordinal_position",
        )
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[Type::TEXT, Type::TEXT]);
    assert_eq!(stmt.columns()[3].type_(), &Type::INT4);
    let rows = c.query(&stmt, &[&"public", &"cpu"]).await.unwrap();
    let got: Vec<ColumnInfo> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let want = vec![
        ("ts", "timestamp with time zone", "timestamptz", None, None),
        ("host", "text", "text", None, None),
        ("usage", "double precision", "float8", Some(53), None),
        ("cores", "bigint", "int8", Some(64), Some(0)),
        ("up", "boolean", "bool", None, None),
    ];
    let want: Vec<ColumnInfo> = want
        .into_iter()
        .map(|(a, b, c, d, e)| (a.into(), b.into(), c.into(), d, e))
        .collect();
    assert_eq!(got, want);
    // Distinct values of a column, as the browser asks for them.
    let rows = c
        .query(
            r#"SELECT 'host' AS col_name, "host"::text AS val FROM (SELECT DISTINCT "host" FROM "public"."cpu" WHERE "host" IS NOT NULL ORDER BY "host" LIMIT 100) sub_0"#,
            &[],
        )
        .await
        .unwrap();
    let vals: Vec<String> = rows.iter().map(|r| r.get("val")).collect();
    assert_eq!(vals, vec!["web-1", "web-2"]);
}

/// Panel queries after Grafana's macro expansion: timestamps compared with RFC 3339 strings,
/// epoch buckets, a `time` column as timestamp or number, a `metric` column; binary results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_panel_queries_return_typed_rows() {
    let (_dir, s) = with_data().await;
    let c = connect(&s).await;
    let all = c
        .query(
            "SELECT ts, host, usage, cores, up FROM cpu ORDER BY ts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let base = first_ms(&all, "ts");
    assert_eq!(all[1].get::<_, String>("host"), "web-2");
    assert_eq!(all[1].get::<_, f64>("usage"), 20.25);
    assert_eq!(all[1].get::<_, i64>("cores"), 8);
    assert!(!all[1].get::<_, bool>("up"));
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    // $__timeFilter(ts) over the first two rows, $__time(ts), a metric column.
    let q = format!(
        r#"SELECT ts AS "time", host AS metric, usage FROM cpu WHERE ts BETWEEN '{}' AND '{}' ORDER BY 1"#,
        iso(base),
        iso(base + 60_000)
    );
    let rows = c.query(&q, &[]).await.unwrap();
    assert_eq!(rows.len(), 2, "{q}");
    assert_eq!(rows[0].columns()[0].type_(), &Type::TIMESTAMPTZ);
    assert_eq!(first_ms(&rows, "time"), base);
    // $__timeGroupAlias(ts, 1m) with GROUP BY 1,2 ORDER BY 1, over the simple protocol as text.
    let q = format!(
        r#"SELECT floor(extract(epoch from ts)/60)*60 AS "time", host AS metric, avg(usage) AS usage FROM cpu WHERE ts BETWEEN '{}' AND '{}' GROUP BY 1,2 ORDER BY 1"#,
        iso(base - 60_000),
        iso(base + 180_000)
    );
    let rows: Vec<Vec<String>> = c
        .simple_query(&q)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..3).map(|i| r.get(i).unwrap().to_string()).collect())
            }
            _ => None,
        })
        .collect();
    let minute = |ms: i64| (ms / 60_000 * 60).to_string();
    assert_eq!(
        rows,
        vec![
            vec![minute(base), "web-1".into(), "10.5".into()],
            vec![minute(base + 60_000), "web-2".into(), "20.25".into()],
            vec![minute(base + 120_000), "web-1".into(), "30".into()],
        ]
    );
    // $__timeEpoch(ts) and $__unixEpochFilter on a numeric column.
    let q = format!(
        r#"SELECT extract(epoch from ts) as "time", usage FROM (SELECT ts, usage, extract(epoch from ts) AS secs FROM cpu) t WHERE secs >= {} AND secs <= {} ORDER BY 1"#,
        base / 1000 + 1,
        base / 1000 + 200
    );
    let rows = c.query(&q, &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, f64>("time"), (base / 1000 + 60) as f64);
    // A timestamp with time zone is sent as such, in PostgreSQL's text form over psql.
    let (out, err, ok) = psql(
        &s,
        &[
            "-c",
            "SELECT min(ts)::timestamptz AS first, count(*) AS n FROM cpu",
        ],
        None,
    );
    assert!(ok, "{err}");
    let want = chrono::DateTime::from_timestamp_millis(base)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    assert!(
        out.trim().starts_with(&want) && out.trim().ends_with("+00|3"),
        "{out}"
    );
}

/// psql: statements, DDL and SHOW over the simple protocol, a script on stdin with an error in
/// the middle, SQLSTATEs, and the connection staying usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_what_the_http_api_runs() {
    let (_dir, s) = with_data().await;
    let (out, err, ok) = psql(
        &s,
        &["-c", "SELECT host, peak FROM busy ORDER BY host"],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "web-1|30\nweb-2|20.25\n");
    let script = "CREATE SOURCE mem (host TEXT, used DOUBLE) FROM HTTP;\n\
                  INSERT INTO mem (host, used) VALUES ('a', 1.5), ('b', 2.5);\n\
                  SELECT no_such_column FROM mem;\n\
                  SELECT count(*) AS n, sum(used) AS total FROM mem;\n\
                  SHOW SOURCES;\n";
    let (out, err, _) = psql(&s, &[], Some(script));
    assert!(
        err.contains("No field named no_such_column") || err.contains("no_such_column"),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"CREATE SOURCE"), "{out}");
    assert!(lines.contains(&"INSERT 0 2"), "{out}");
    assert!(lines.contains(&"2|4"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("mem|")), "{out}");
    // The same error through tokio-postgres: SQLSTATE, message, and the next query works.
    let c = connect(&s).await;
    let e = c
        .simple_query("SELECT no_such_column FROM mem")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::UNDEFINED_COLUMN);
    let (_, http) = s.sql("SELECT no_such_column FROM mem").await;
    assert_eq!(db.message(), http["error"]["message"].as_str().unwrap());
    let e = c.query("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code(), &SqlState::SYNTAX_ERROR);
    let e = c.query("SELECT * FROM nowhere", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code(), &SqlState::UNDEFINED_TABLE);
    let n: i64 = c
        .query_one("SELECT count(*) FROM mem", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // Typed parameters, sent in binary.
    let row = c
        .query_one(
            "SELECT host FROM mem WHERE used > $1 AND host <> $2",
            &[&2.0f64, &"x"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "b");
    // SHOW over the extended protocol.
    let rows = c.query("SHOW SOURCES", &[]).await.unwrap();
    assert!(rows.iter().any(|r| r.get::<_, String>(0) == "mem"));
}

/// psycopg: the extended protocol with parameters, as Python tools use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_queries_with_parameters() {
    let (_dir, s) = with_data().await;
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    cur = conn.execute(
        "SELECT column_name, data_type, udt_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        ("public", "cpu"))
    print(";".join(f"{a}:{b}:{c}" for a, b, c in cur.fetchall()))
    cur = conn.execute("SELECT host, usage FROM cpu WHERE usage > %s AND host = %s ORDER BY usage", (15, "web-1"))
    print(cur.fetchall())
    try:
        conn.execute("SELECT nope FROM cpu WHERE usage > %s", (1,))
    except psycopg.Error as e:
        print("error", e.sqlstate)
    print(conn.execute("SELECT count(*) FROM cpu WHERE host = %s", ("web-2",)).fetchone()[0])
# psycopg's default: statements inside BEGIN ... COMMIT (accepted; tocsin has no transactions).
with psycopg.connect(sys.argv[1]) as conn:
    print(conn.execute("SELECT count(*) FROM cpu").fetchone()[0])
    conn.commit()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &conninfo(&s)])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psycopg is needed for this test (pip install psycopg[binary]): {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "ts:timestamp with time zone:timestamptz;host:text:text;usage:double precision:float8;cores:bigint:int8;up:boolean:bool",
            "[('web-1', 30.0)]",
            "error 42703",
            "1",
            "3",
        ]
    );
}

/// SUBSCRIBE over pg streams changes as COPY rows `time, diff, columns...`: the snapshot, then
/// each change as it happens (tokio-postgres reads COPY through the extended protocol; psql
/// through the simple one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_through_copy() {
    use futures_util::StreamExt;
    let (_dir, s) = with_data().await;
    let c = connect(&s).await;
    let stream = c
        .copy_out("COPY (SUBSCRIBE TO busy) TO STDOUT")
        .await
        .unwrap();
    let mut stream = Box::pin(stream);
    let mut seen = String::new();
    let mut read_until = async |want: &str| {
        while !seen.contains(want) {
            let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap_or_else(|_| panic!("no {want:?} in {seen:?}"))
                .expect("the stream goes on")
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_until("\t1\tweb-2\t20.25\n").await;
    read_until("\t1\tweb-1\t30\n").await;
    let (st, _) = s
        .ingest(
            "cpu",
            "application/json",
            br#"[{"host": "web-2", "usage": 99.5, "cores": 8, "up": true}]"#.to_vec(),
        )
        .await;
    assert_eq!(st, 200);
    read_until("\t-1\tweb-2\t20.25\n").await;
    read_until("\t1\tweb-2\t99.5\n").await;
    // Plain SUBSCRIBE through the extended protocol (on a second connection: the first one is
    // busy with its COPY).
    let c2 = connect(&s).await;
    let mut plain = Box::pin(
        tokio::time::timeout(Duration::from_secs(20), c2.copy_out("SUBSCRIBE TO busy"))
            .await
            .unwrap()
            .unwrap(),
    );
    let first = tokio::time::timeout(Duration::from_secs(20), plain.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\t1\tweb-"));
    drop(plain);
    // SUBSCRIBE with psql (simple protocol) streams until what it reads is dropped; then the
    // COPY ends and psql prints what it got.
    let psql = tokio::process::Command::new("psql")
        .arg(conninfo(&s))
        .args(["-X", "-c", "SUBSCRIBE TO busy"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(c);
    let (st, body) = tokio::time::timeout(Duration::from_secs(20), s.sql("DROP VIEW busy"))
        .await
        .expect("DROP VIEW answers");
    assert_eq!(st, 200, "{body}");
    let out = tokio::time::timeout(Duration::from_secs(20), psql.wait_with_output())
        .await
        .expect("psql ends when the view is dropped")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\t1\tweb-2\t99.5"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 10,000 random byte strings sent as pg messages after a valid startup do not take the
/// server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_after_startup_do_not_hurt() {
    let (_dir, s) = with_data().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut startup = Vec::new();
    let params = b"user\0fuzz\0database\0tocsin\0\0";
    startup.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    let mut sent = 0;
    while sent < 10_000 {
        let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        c.write_all(&startup).await.unwrap();
        // Up to ReadyForQuery.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("startup answered")
                .unwrap();
            assert!(n > 0, "closed during startup: {}", s.log());
            got.extend_from_slice(&buf[..n]);
        }
        // Random messages until the server closes the connection (or 50 are sent).
        for _ in 0..50 {
            let len = rng.gen_range(0..200);
            let mut msg: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && len >= 5 {
                // A plausible message type and length around random contents.
                msg[0] = *b"QPBDESHXdcfp".get(rng.gen_range(0..12)).unwrap();
                let l = (len as u32 - 1).to_be_bytes();
                msg[1..5].copy_from_slice(&l);
            }
            sent += 1;
            if c.write_all(&msg).await.is_err() {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf)).await;
    }
    // Still serving pg and HTTP.
    let c = connect(&s).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM cpu", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let (st, _) = s.get("/healthz").await.unwrap();
    assert_eq!(st, 200);
}

/// `--pg-password` and `--http-token` (admin tokens): pg needs the password, HTTP needs a token
/// for writes and, with credentials configured, for reads too (docs/security.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_guard_access() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--pg-password", "s3cret", "--http-token", "tok-1,tok-2"],
    )
    .await;
    let e = tokio_postgres::connect(&format!("{} password=wrong", conninfo(&s)), NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert_eq!(
        e.as_db_error().map(|d| d.code().clone()),
        Some(SqlState::INVALID_PASSWORD)
    );
    let (c, conn) = tokio_postgres::connect(&format!("{} password=s3cret", conninfo(&s)), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.simple_query("CREATE SOURCE t (v BIGINT) FROM HTTP")
        .await
        .unwrap();
    // HTTP: writes and reads need a token.
    let (st, _, _) = request_with(&s.addr, "POST", "/v1/sql", &[], b"SHOW SOURCES".to_vec())
        .await
        .unwrap();
    assert_eq!(st, 401);
    let (st, _, _) = request_with(
        &s.addr,
        "POST",
        "/v1/ingest/t",
        &[("content-type", "application/json")],
        br#"[{"v": 1}]"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(st, 401);
    let (st, _, body) = request_with(
        &s.addr,
        "POST",
        "/v1/sql",
        &[("authorization", "Bearer tok-2")],
        b"SHOW SOURCES".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, _) = s.get("/v1/catalog").await.unwrap();
    assert_eq!(st, 401);
    let (st, _, _) = request_with(
        &s.addr,
        "GET",
        "/v1/catalog",
        &[("authorization", "Bearer tok-1")],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
    eventually(5, "the log says what is protected", || async {
        s.log()
            .contains("credentials: 2 admin, 0 write and 0 read token(s), 0 pg user(s), --pg-password for other pg user names; reads need a credential")
            .then_some(())
    })
    .await;
    assert!(!s.log().contains("s3cret") && !s.log().contains("tok-1"));
}

/// `--pg-tls-cert`/`--pg-tls-key`: SSLRequest is answered 'S' and psql talks TLS; without them it
/// is answered 'N', so `sslmode=require` fails and `sslmode=prefer` falls back to plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed for this test");
    assert!(made.status.success(), "{made:?}");
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--pg-tls-cert",
            cert.to_str().unwrap(),
            "--pg-tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let with_ssl = |mode: &str, s: &Server| {
        let mut command = Command::new("psql");
        command
            .arg(conninfo(s).replace("sslmode=disable", &format!("sslmode={mode}")))
            .args(["-X", "-At", "-c", "SELECT 41 + 1", "-c", "\\conninfo"]);
        let out = run_piped(command, None);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = with_ssl("require", &s);
    assert!(
        out.starts_with("42\n") && out.contains("SSL connection"),
        "{out}{err}"
    );
    let (out, err) = with_ssl("disable", &s);
    assert!(
        out.starts_with("42\n") && !out.contains("SSL connection"),
        "{out}{err}"
    );
    // Without TLS configured.
    let (_d2, plain) = with_data().await;
    let (out, err) = with_ssl("require", &plain);
    assert!(out.is_empty() && err.contains("SSL"), "{out}{err}");
    let (out, err) = with_ssl("prefer", &plain);
    assert!(out.starts_with("42\n"), "{out}{err}");
}
