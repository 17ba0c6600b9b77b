//! Option parsing, schema derivation, row assembly and trap decoding, with datagrams captured
//! from net-snmp 5.9.3's `snmptrap`/`snmpinform`. The end-to-end tests against a live `snmpd`
//! are in the server's test suite.

use super::trap::{decode, Decoded, Dropped};
use super::*;
use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::Int64Type;

fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn names(schema: &SchemaRef) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn iftable_schema_follows_the_mib() {
    let c = poll_config(&opts(&[
        ("targets", "sw1=10.0.0.1:161, 10.0.0.2"),
        ("table", "IF-MIB::ifTable"),
    ]))
    .unwrap();
    let n = names(&c.schema);
    assert_eq!(&n[..5], ["ts", "device", "if_index", "if_descr", "if_type"]);
    assert_eq!(n.len(), 2 + 22, "ifIndex appears once, as the index");
    assert!(n.contains(&"if_oper_status".to_string()));
    let ty = |name: &str| c.schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(ty("if_in_octets"), DataType::Int64);
    assert_eq!(ty("if_speed"), DataType::Int64);
    assert_eq!(ty("if_descr"), DataType::Utf8);
    assert_eq!(ty("if_phys_address"), DataType::Utf8);
    assert_eq!(ty("if_specific"), DataType::Utf8);
    assert_eq!(
        c.targets,
        vec![
            Target {
                device: "sw1".into(),
                address: "10.0.0.1:161".into()
            },
            Target {
                device: "10.0.0.2".into(),
                address: "10.0.0.2:161".into()
            }
        ]
    );
    assert_eq!(c.version, Version::V2c);
    assert_eq!(c.community, "public");
    assert_eq!(
        (c.timeout, c.retries, c.max_repetitions),
        (Duration::from_secs(1), 2, 25)
    );

    let x = poll_config(&opts(&[("targets", "a:1"), ("table", "ifXTable")])).unwrap();
    let n = names(&x.schema);
    assert_eq!(&n[..4], ["ts", "device", "if_index", "if_name"]);
    assert!(n.contains(&"if_hc_in_octets".to_string()));
    // the entry OID names the same table
    let e = poll_config(&opts(&[
        ("targets", "a:1"),
        ("table", ".1.3.6.1.2.1.2.2.1"),
    ]))
    .unwrap();
    assert_eq!(names(&e.schema), names(&c.schema));
    // ipAddrTable is indexed by an address
    let ip = poll_config(&opts(&[
        ("targets", "a:1"),
        ("table", "IP-MIB::ipAddrTable"),
    ]))
    .unwrap();
    assert_eq!(
        ip.schema
            .field_with_name("ip_ad_ent_addr")
            .unwrap()
            .data_type(),
        &DataType::Utf8
    );
}

#[test]
fn column_subsets_numeric_tables_and_gets() {
    let c = poll_config(&opts(&[
        ("targets", "a:1"),
        ("table", "IF-MIB::ifTable"),
        ("columns", "ifDescr, if_oper_status"),
    ]))
    .unwrap();
    assert_eq!(
        names(&c.schema),
        ["ts", "device", "if_index", "if_descr", "if_oper_status"]
    );
    let Polled::Table { roots, .. } = &c.polled else {
        panic!()
    };
    assert_eq!(roots.len(), 2, "only the chosen columns are walked");

    let la = poll_config(&opts(&[
        ("targets", "a:1"),
        ("table", "1.3.6.1.4.1.99999.10"),
        ("columns", "name=2:text, load=5:bigint, load_f=3:double"),
    ]))
    .unwrap();
    assert_eq!(
        names(&la.schema),
        ["ts", "device", "index", "name", "load", "load_f"]
    );
    assert_eq!(
        la.schema.field_with_name("load_f").unwrap().data_type(),
        &DataType::Float64
    );

    let g = poll_config(&opts(&[
        ("targets", "a:1"),
        (
            "oids",
            "SNMPv2-MIB::sysUpTime.0, sysName, IF-MIB::ifDescr.2, load=1.3.6.1.4.1.2021.10.1.5.1:bigint",
        ),
    ]))
    .unwrap();
    assert_eq!(
        names(&g.schema),
        [
            "ts",
            "device",
            "sys_up_time",
            "sys_name",
            "if_descr_2",
            "load"
        ]
    );
    assert_eq!(
        g.schema.field_with_name("sys_up_time").unwrap().data_type(),
        &DataType::Int64
    );
    let Polled::Get { columns } = &g.polled else {
        panic!()
    };
    assert_eq!(
        mib::dotted(&columns[1].oid),
        "1.3.6.1.2.1.1.5.0",
        "a scalar without .0"
    );
}

#[test]
fn bad_options_say_what_is_wrong() {
    let err = |pairs: &[(&str, &str)]| poll_config(&opts(pairs)).unwrap_err().to_string();
    assert!(err(&[("table", "ifTable")]).contains("targets"));
    assert!(err(&[("targets", "a:1")]).contains("say what to poll"));
    assert!(err(&[
        ("targets", "a:1"),
        ("table", "ifTable"),
        ("oids", "sysName.0")
    ])
    .contains("either table or oids"));
    assert!(err(&[("targets", "a:1"), ("table", "IF-MIB::ifBogus")]).contains("unknown MIB name"));
    assert!(err(&[("targets", "a:1"), ("table", "1.3.6.1.4.1.1.1")]).contains("columns ="));
    assert!(err(&[("targets", "a:1"), ("table", "sysName")]).contains("not a table"));
    assert!(err(&[
        ("targets", "a:1"),
        ("table", "ifTable"),
        ("columns", "ifBogus")
    ])
    .contains("not a column of ifTable"));
    assert!(err(&[("targets", "a:1"), ("oids", "1.3.6.1.4.1.1.1.0")]).contains("column name"));
    assert!(err(&[("targets", "a:1"), ("oids", "IF-MIB::ifDescr")]).contains("table column"));
    assert!(err(&[("targets", "a:1"), ("oids", "ifTable")]).contains("table = "));
    assert!(err(&[("targets", "a:1"), ("oids", "linkDown")]).contains("not a value"));
    assert!(
        err(&[("targets", "a:1"), ("oids", "sysName.0"), ("version", "4")])
            .contains("unknown version")
    );
    assert!(err(&[
        ("targets", "a:1"),
        ("oids", "sysName.0"),
        ("timeout", "soon")
    ])
    .contains("invalid timeout"));
    assert!(
        err(&[("targets", "a:1"), ("oids", "sysName.0"), ("retries", "99")])
            .contains("invalid retries")
    );
    assert!(
        err(&[("targets", "a:1"), ("oids", "sysName.0"), ("user", "u")]).contains("version = '3'")
    );
    assert!(err(&[("targets", "a:1,a:1"), ("oids", "sysName.0")]).contains("twice"));
    assert!(err(&[("targets", "a:1"), ("oids", "sysName.0"), ("version", "3")]).contains("user"));
    assert!(err(&[
        ("targets", "a:1"),
        ("oids", "sysName.0"),
        ("version", "3"),
        ("user", "u"),
        ("auth", "sha"),
        ("auth_password", "short")
    ])
    .contains("at least 8"));
    assert!(err(&[
        ("targets", "a:1"),
        ("oids", "sysName.0"),
        ("version", "3"),
        ("user", "u"),
        ("auth", "sha"),
        ("auth_password", "authpass123"),
        ("priv", "rot13"),
        ("priv_password", "privpass123")
    ])
    .contains("unknown priv"));
    let ok = poll_config(&opts(&[
        ("targets", "a:1"),
        ("oids", "sysName.0"),
        ("version", "3"),
        ("user", "u"),
        ("auth", "sha256"),
        ("auth_password", "authpass123"),
        ("priv", "aes"),
        ("priv_password", "privpass123"),
    ]))
    .unwrap();
    assert!(ok.security.is_some());
    assert!(trap_config(&opts(&[]))
        .unwrap_err()
        .to_string()
        .contains("listen"));
    assert!(trap_config(&opts(&[("listen", "nowhere")]))
        .unwrap_err()
        .to_string()
        .contains("invalid listen"));
}

#[test]
fn table_rows_from_a_walk() {
    let c = poll_config(&opts(&[("targets", "a:1"), ("table", "IF-MIB::ifTable")])).unwrap();
    let Polled::Table {
        table,
        index,
        columns,
        ..
    } = &c.polled
    else {
        panic!()
    };
    let col = |n: u32, i: u32| {
        let mut o = table.clone();
        o.extend([1, n, i]);
        o
    };
    let walk = vec![
        (col(1, 1), Value::Int(1)),
        (col(1, 2), Value::Int(2)),
        (col(2, 1), Value::Bytes(b"lo".to_vec())),
        (col(2, 2), Value::Bytes(b"eth0".to_vec())),
        (col(6, 1), Value::Bytes(vec![])),
        (col(6, 2), Value::Bytes(vec![2, 0xfc, 0, 0, 0, 1])),
        (col(10, 2), Value::Counter32(4_000_000_000)),
        (col(22, 2), Value::Oid(vec![0, 0])),
    ];
    let b = poll::table_batch(&c, "sw1", table, index, columns, walk, 1000);
    assert_eq!(b.num_rows(), 2);
    let get = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
    let text = |n: &str| -> Vec<Option<String>> {
        get(n)
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        get("if_index").as_primitive::<Int64Type>(),
        &Int64Array::from(vec![1, 2])
    );
    assert_eq!(text("if_descr"), [s("lo"), s("eth0")]);
    assert_eq!(text("if_phys_address"), [s(""), s("02:fc:00:00:00:01")]);
    let octets: Vec<_> = get("if_in_octets")
        .as_primitive::<Int64Type>()
        .iter()
        .collect();
    assert_eq!(octets, [None, Some(4_000_000_000)]);
    assert_eq!(text("if_specific"), [None, s("0.0")]);
    assert_eq!(text("device"), [s("sw1"), s("sw1")]);

    let ip = poll_config(&opts(&[("targets", "a:1"), ("table", "ipAddrTable")])).unwrap();
    let Polled::Table {
        table,
        index,
        columns,
        ..
    } = &ip.polled
    else {
        panic!()
    };
    let mut o = table.clone();
    o.extend([1, 2, 10, 0, 0, 1]);
    let b = poll::table_batch(&ip, "r", table, index, columns, vec![(o, Value::Int(3))], 0);
    let addr: Vec<_> = b.column(2).as_string::<i32>().iter().collect();
    assert_eq!(addr, [Some("10.0.0.1")]);
}

#[test]
fn v2c_trap_and_v1_traps_decode_as_net_snmp_sends_them() {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let v2 = unhex("307802010104067075626c6963a76b020456daa576020100020100305d300f06082b0601020101030043032938893017060a2b06010603010104010006092b0601060301010503300f060a2b060102010202010104020104300f060a2b060102010202010704020101300f060a2b060102010202010804020102");
    let Ok(Decoded::Trap(t)) = decode(&v2, peer, Some("public")) else {
        panic!()
    };
    assert_eq!(t.version, "2c");
    assert_eq!(mib::dotted(&t.trap_oid), "1.3.6.1.6.3.1.1.5.3");
    assert_eq!(mib::mib().symbolic(&t.trap_oid), "IF-MIB::linkDown");
    assert_eq!(t.uptime, Some(0x29_3889));
    assert_eq!(t.agent, "127.0.0.1");
    let vb: serde_json::Value = serde_json::from_str(&t.varbinds).unwrap();
    assert_eq!(
        vb,
        serde_json::json!({"IF-MIB::ifIndex": 4, "IF-MIB::ifAdminStatus": 1, "IF-MIB::ifOperStatus": 2})
    );
    assert_eq!(
        decode(&v2, peer, Some("private")).unwrap_err(),
        Dropped::Refused("community 'public' is not the source's".into())
    );

    let v1 = unhex("303b02010004067075626c6963a42e06082b0601060301010540047f000001020102020100430329388a3011300f060a2b060102010202010104020104");
    let Ok(Decoded::Trap(t)) = decode(&v1, peer, None) else {
        panic!()
    };
    assert_eq!((t.version, t.uptime), ("1", Some(0x29_388a)));
    assert_eq!(mib::dotted(&t.trap_oid), "1.3.6.1.6.3.1.1.5.3");
    let vb: serde_json::Value = serde_json::from_str(&t.varbinds).unwrap();
    assert_eq!(vb["IF-MIB::ifIndex"], 4);
    assert_eq!(vb["SNMPv2-MIB::snmpTrapEnterprise"], "1.3.6.1.6.3.1.1.5");
    assert_eq!(vb["SNMP-COMMUNITY-MIB::snmpTrapAddress"], "127.0.0.1");

    let v1e = unhex("304002010004067075626c6963a43306092b06010401bf0802034004c00002020201060201114302303930163014060b2b06010401bf0802030201040568656c6c6f");
    let Ok(Decoded::Trap(t)) = decode(&v1e, peer, None) else {
        panic!()
    };
    assert_eq!(mib::dotted(&t.trap_oid), "1.3.6.1.4.1.8072.2.3.0.17");
    assert_eq!(
        mib::mib().symbolic(&t.trap_oid),
        "1.3.6.1.4.1.8072.2.3.0.17"
    );
    let vb: serde_json::Value = serde_json::from_str(&t.varbinds).unwrap();
    assert_eq!(vb["1.3.6.1.4.1.8072.2.3.2.1"], "hello");
}

#[test]
fn informs_are_acknowledged_byte_for_byte() {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let inform = unhex("305602010104067075626c6963a64902043955c112020100020100303b300f06082b060102010103004303293ac53017060a2b06010603010104010006092b0601060301010504300f060a2b060102010202010104020104");
    let expected = unhex("305602010104067075626c6963a24902043955c112020100020100303b300f06082b060102010103004303293ac53017060a2b06010603010104010006092b0601060301010504300f060a2b060102010202010104020104");
    let Ok(Decoded::Inform {
        notification,
        ack,
        request_id,
    }) = decode(&inform, peer, None)
    else {
        panic!()
    };
    assert_eq!(ack, expected);
    assert_eq!(request_id, 0x3955c112);
    assert_eq!(
        mib::mib().symbolic(&notification.trap_oid),
        "IF-MIB::linkUp"
    );
}

#[test]
fn every_value_type_of_a_trap() {
    let peer: SocketAddr = "[::ffff:10.1.2.3]:40000".parse().unwrap();
    let all = unhex("3081dd02010104067075626c6963a781cf02040232d8aa0201000201003081c0300e06082b06010201010300430230393019060a2b060106030101040100060b2b06010401bf08020300013018060b2b060102011f0101010604460900ffffffffffffffff3014060a2b060102010202010604040602fc000000013012060a2b06010201041401010140040a0000013012060a2b06010201020201050442043b9aca00300f060a2b060102010202010a0441012a3012060a2b060102010202010204040465746830301606082b06010201010200060a2b06010401bf0803020a");
    let Ok(Decoded::Trap(t)) = decode(&all, peer, None) else {
        panic!()
    };
    assert_eq!(t.agent, "10.1.2.3");
    let vb: serde_json::Value = serde_json::from_str(&t.varbinds).unwrap();
    assert_eq!(
        vb,
        serde_json::json!({
            "IF-MIB::ifHCInOctets": 18446744073709551615u64,
            "IF-MIB::ifPhysAddress": "02:fc:00:00:00:01",
            "IP-MIB::ipAdEntAddr": "10.0.0.1",
            "IF-MIB::ifSpeed": 1000000000,
            "IF-MIB::ifInOctets": 42,
            "IF-MIB::ifDescr": "eth0",
            "SNMPv2-MIB::sysObjectID": "1.3.6.1.4.1.8072.3.2.10",
        })
    );
}

#[test]
fn garbage_is_dropped_with_a_reason() {
    use rand::{Rng, SeedableRng};
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let v2 = unhex("307802010104067075626c6963a76b020456daa576020100020100305d300f06082b0601020101030043032938893017060a2b06010603010104010006092b0601060301010503300f060a2b060102010202010104020104300f060a2b060102010202010704020101300f060a2b060102010202010804020102");
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect()
        } else {
            // a real trap with a few bytes flipped or cut short
            let mut b = v2.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..b.len());
                b[at] = rng.gen();
            }
            b.truncate(rng.gen_range(1..=b.len()));
            b
        };
        if let Err(d) = decode(&bytes, peer, None) {
            match d {
                Dropped::Malformed(why) | Dropped::Refused(why) => assert!(!why.is_empty()),
            }
        }
    }
    // a v2 trap without snmpTrapOID.0
    let get = unhex(
        "302a02010104067075626c6963a51d02043eb9e111020100020103300f300d06092b06010201020201020500",
    );
    assert!(matches!(decode(&get, peer, None), Err(Dropped::Refused(_))));
}
