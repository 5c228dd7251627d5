use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::*;
use crate::spiffe::SpiffeIdError;

/// The reference example (docs/mesh.md), with a second service.
const VALID: &str = r#"# ward mesh file
trust_domain: cluster.local
services:
  orders:
    identity: spiffe://cluster.local/ns/shop/sa/orders
    endpoints:
      - 127.0.0.1:15006
      - 10.1.0.7:8080
    ports:
      - port: 8080
        protocol: http
      - port: 5432
        protocol: tcp
  payments:
    identity: spiffe://cluster.local/ns/shop/sa/payments
    endpoints: ["[fd00::9]:15006", 10.1.0.9:15006]
    ports:
      - port: 9090
"#;

fn parse(text: &str) -> Result<MeshConfig, MeshError> {
    MeshConfig::parse(text, "mesh.yaml")
}

fn refuse(text: &str) -> MeshError {
    match parse(text) {
        Ok(config) => panic!("should be refused, parsed as {config:?}\n{text}"),
        Err(err) => err,
    }
}

/// A file whose `services:` block is `services` (indented by two), so the
/// first service name is on line 3.
fn with_services(services: &str) -> String {
    format!("trust_domain: cluster.local\nservices:\n{services}")
}

/// One service `orders` with the given body lines (indented by four);
/// its first body line is line 4.
fn orders(body: &str) -> String {
    with_services(&format!("  orders:\n{body}"))
}

const ID: &str = "    identity: spiffe://cluster.local/ns/shop/sa/orders\n";
const EP: &str = "    endpoints: [10.1.0.7:15006]\n";
const PORTS: &str = "    ports: [{port: 8080}]\n";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn pos(line: u32, column: u32) -> Position {
    Position {
        file: "mesh.yaml".to_string(),
        line,
        column,
    }
}

#[test]
fn valid_example_round_trips() {
    let config = parse(VALID).expect("valid example");
    let td = TrustDomain::new("cluster.local").expect("td");
    let expected = MeshConfig {
        trust_domain: td.clone(),
        services: BTreeMap::from([
            (
                "orders".to_string(),
                Service {
                    name: "orders".to_string(),
                    identity: td.workload("shop", "orders").expect("id"),
                    endpoints: vec![addr("127.0.0.1:15006"), addr("10.1.0.7:8080")],
                    ports: vec![
                        PortSpec {
                            port: 8080,
                            protocol: Protocol::Http,
                        },
                        PortSpec {
                            port: 5432,
                            protocol: Protocol::Tcp,
                        },
                    ],
                },
            ),
            (
                "payments".to_string(),
                Service {
                    name: "payments".to_string(),
                    identity: td.workload("shop", "payments").expect("id"),
                    endpoints: vec![addr("[fd00::9]:15006"), addr("10.1.0.9:15006")],
                    ports: vec![PortSpec {
                        port: 9090,
                        protocol: Protocol::Detect,
                    }],
                },
            ),
        ]),
        policy: Policy::default(),
    };
    assert_eq!(config, expected);
}

#[test]
fn protocol_defaults_to_detect() {
    let config = parse(&orders(&format!("{ID}{EP}{PORTS}"))).expect("valid");
    let orders = config.service("orders").expect("orders");
    assert_eq!(
        orders.port(8080).map(|p| p.protocol),
        Some(Protocol::Detect)
    );
    assert_eq!(Protocol::default(), Protocol::Detect);
    assert_eq!(Protocol::Tcp.to_string(), "tcp");
}

#[test]
fn service_and_port_lookups() {
    let config = parse(VALID).expect("valid");
    assert!(config.service("billing").is_none());
    let orders = config.service("orders").expect("orders");
    assert_eq!(orders.port(5432).map(|p| p.protocol), Some(Protocol::Tcp));
    assert!(orders.port(9090).is_none());
}

#[test]
fn by_destination_matches_exact_endpoints() {
    let config = parse(VALID).expect("valid");
    let hit = |dst: &str| {
        config
            .by_destination(addr(dst))
            .map(|(s, p)| (s.name.as_str(), p.port))
    };
    // An endpoint that is not a service port: the service's first port.
    assert_eq!(hit("127.0.0.1:15006"), Some(("orders", 8080)));
    // An endpoint that is also a service port: that port.
    assert_eq!(hit("10.1.0.7:8080"), Some(("orders", 8080)));
    assert_eq!(hit("[fd00::9]:15006"), Some(("payments", 9090)));
}

#[test]
fn by_destination_matches_endpoint_ip_and_service_port() {
    let config = parse(VALID).expect("valid");
    let hit = |dst: &str| {
        config
            .by_destination(addr(dst))
            .map(|(s, p)| (s.name.as_str(), p.port, p.protocol))
    };
    assert_eq!(hit("10.1.0.7:5432"), Some(("orders", 5432, Protocol::Tcp)));
    assert_eq!(
        hit("127.0.0.1:8080"),
        Some(("orders", 8080, Protocol::Http))
    );
    assert_eq!(
        hit("[fd00::9]:9090"),
        Some(("payments", 9090, Protocol::Detect))
    );
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
    assert_eq!(
        hit("[::ffff:10.1.0.7]:5432"),
        Some(("orders", 5432, Protocol::Tcp))
    );
}

#[test]
fn by_destination_without_match() {
    let config = parse(VALID).expect("valid");
    for dst in [
        "10.1.0.7:9999",  // endpoint ip, not a service port
        "10.1.0.9:8080",  // another service's ip, this service's port
        "10.9.9.9:8080",  // unknown ip
        "127.0.0.1:9090", // payments' port on orders' ip
    ] {
        assert!(
            config.by_destination(addr(dst)).is_none(),
            "{dst} should match nothing"
        );
    }
}

#[test]
fn errors_carry_file_line_and_column() {
    // YAML syntax error.
    let err = refuse("trust_domain: cluster.local\n services: {}\n");
    assert!(matches!(err, MeshError::Yaml { .. }), "{err:?}");
    assert!(err.to_string().starts_with("mesh.yaml:2:10: "), "{err}");

    // Unknown field, with a spelling suggestion.
    let err = refuse(&orders(&format!(
        "{ID}    endpionts: [10.1.0.7:15006]\n{PORTS}"
    )));
    assert_eq!(
        err.to_string(),
        "mesh.yaml:5:5: unknown field \"endpionts\", expected one of \"identity\", \
         \"endpoints\", \"ports\" (hint: did you mean \"endpoints\"?)"
    );

    // A tab used for indentation.
    let err = refuse("trust_domain: cluster.local\nservices:\n\torders: {}\n");
    assert!(err.to_string().starts_with("mesh.yaml:3:"), "{err}");
    assert!(err.to_string().contains("tabs"), "{err}");
}

#[test]
fn every_error_message_has_a_hint() {
    let cases = [
        String::new(),
        "trust_domain: [\n".to_string(),
        orders(&format!("{ID}{EP}    ports: [{{port: 0}}]\n")),
        orders(&format!(
            "{ID}{EP}    ports: [{{port: 1, protocol: udp}}]\n"
        )),
        orders(&format!("{ID}    endpoints: [orders.shop:80]\n{PORTS}")),
        with_services("  Orders: {}\n"),
    ];
    for text in cases {
        let err = refuse(&text);
        assert!(err.to_string().contains(" (hint: "), "{err}");
    }
}

#[test]
fn unknown_fields_are_refused_everywhere() {
    let cases = [
        (
            "trust_domian: cluster.local\nservices: {}\n",
            "trust_domian",
            pos(1, 1),
        ),
        (
            &orders(&format!("{ID}{EP}{PORTS}    protocol: http\n")),
            "protocol",
            pos(7, 5),
        ),
        (
            &orders(&format!(
                "{ID}{EP}    ports:\n      - port: 80\n        proto: tcp\n"
            )),
            "proto",
            pos(8, 9),
        ),
        (
            // Near misses of the policy keys are typos, not new keys.
            "trust_domain: cluster.local\nservices: {}\nrole: {}\n",
            "role",
            pos(3, 1),
        ),
    ];
    for (text, name, position) in cases {
        match refuse(text) {
            MeshError::UnknownField { at, field, .. } => {
                assert_eq!((at, field.as_str()), (position, name), "{text}");
            }
            other => panic!("expected UnknownField for {name}, got {other}"),
        }
    }
}

#[test]
fn duplicate_keys_are_refused() {
    let dup_service = with_services(&format!(
        "  orders:\n{ID}{EP}{PORTS}  orders:\n{ID}    endpoints: [10.1.0.8:15006]\n{PORTS}"
    ));
    match refuse(&dup_service) {
        MeshError::DuplicateKey { at, key } => {
            assert_eq!((at, key.as_str()), (pos(7, 3), "orders"))
        }
        other => panic!("{other}"),
    }
    let dup_identity = orders(&format!(
        "{ID}    identity: spiffe://cluster.local/ns/shop/sa/evil\n{EP}{PORTS}"
    ));
    match refuse(&dup_identity) {
        MeshError::DuplicateKey { at, key } => {
            assert_eq!((at, key.as_str()), (pos(5, 5), "identity"));
        }
        other => panic!("{other}"),
    }
    let dup_top = "trust_domain: cluster.local\ntrust_domain: evil.local\nservices: {}\n";
    assert!(matches!(refuse(dup_top), MeshError::DuplicateKey { .. }));
    let err = refuse(&dup_service).to_string();
    assert!(
        err.starts_with("mesh.yaml:7:3: key \"orders\" appears twice"),
        "{err}"
    );
}

#[test]
fn invalid_trust_domain_is_refused() {
    for td in [
        "spiffe://cluster.local",
        "Cluster.Local",
        "\"\"",
        "cluster.local:443",
    ] {
        match refuse(&format!("trust_domain: {td}\nservices: {{}}\n")) {
            MeshError::TrustDomain { at, error } => {
                assert_eq!(at, pos(1, 15), "{td}");
                assert!(
                    matches!(error, SpiffeIdError::InvalidTrustDomain(_)),
                    "{td}"
                );
            }
            other => panic!("{td}: {other}"),
        }
    }
}

#[test]
fn identities_must_be_spiffe_ids_in_the_trust_domain() {
    let identity = |id: &str| orders(&format!("    identity: {id}\n{EP}{PORTS}"));
    let cases = [
        ("https://cluster.local/ns/shop/sa/orders", "WrongScheme"),
        ("spiffe://cluster.local/ns/../sa/orders", "InvalidPath"),
        (
            "spiffe://evil.local/ns/shop/sa/orders",
            "ForeignTrustDomain",
        ),
        ("spiffe://cluster.local", "NotWorkloadForm"),
        ("\"\"", "Empty"),
    ];
    for (id, kind) in cases {
        match refuse(&identity(id)) {
            MeshError::Identity { at, service, error } => {
                assert_eq!((at, service.as_str()), (pos(4, 15), "orders"), "{id}");
                assert!(format!("{error:?}").starts_with(kind), "{id}: {error:?}");
            }
            other => panic!("{id}: {other}"),
        }
    }
    let err = refuse(&identity("spiffe://evil.local/ns/shop/sa/orders")).to_string();
    assert!(
        err.contains("is not in trust domain \"cluster.local\""),
        "{err}"
    );
}

#[test]
fn service_names_must_be_dns_labels() {
    let long = "a".repeat(64);
    for name in [
        "Orders",
        "orders_v2",
        "-orders",
        "orders-",
        "orders.shop",
        long.as_str(),
        "\"\"",
    ] {
        let text = with_services(&format!("  {name}:\n{ID}{EP}{PORTS}"));
        match refuse(&text) {
            MeshError::ServiceName { at, .. } => assert_eq!(at, pos(3, 3), "{name}"),
            other => panic!("{name}: {other}"),
        }
    }
    let ok = with_services(&format!("  orders-v2:\n{ID}{EP}{PORTS}"));
    assert!(parse(&ok).is_ok());
}

#[test]
fn services_need_endpoints_and_ports() {
    for body in [
        format!("{ID}{PORTS}"),
        format!("{ID}    endpoints: []\n{PORTS}"),
    ] {
        match refuse(&orders(&body)) {
            MeshError::NoEndpoints { at, service } => {
                assert_eq!((at, service.as_str()), (pos(3, 3), "orders"));
            }
            other => panic!("{other}"),
        }
    }
    for body in [format!("{ID}{EP}"), format!("{ID}{EP}    ports: []\n")] {
        assert!(matches!(refuse(&orders(&body)), MeshError::NoPorts { .. }));
    }
    assert!(matches!(
        refuse(&orders(&format!("{EP}{PORTS}"))),
        MeshError::MissingField { field, .. } if field == "identity"
    ));
}

#[test]
fn ports_must_be_valid_and_unique() {
    let port0 = orders(&format!("{ID}{EP}    ports:\n      - port: 0\n"));
    assert!(matches!(refuse(&port0), MeshError::PortZero { at, .. } if at == pos(7, 15)));

    for bad in ["70000", "-1", "http", "80.5"] {
        let text = orders(&format!("{ID}{EP}    ports:\n      - port: {bad}\n"));
        match refuse(&text) {
            MeshError::Yaml { at, message, .. } => {
                assert_eq!(at, pos(7, 15), "{bad}");
                assert!(message.contains("port number"), "{bad}: {message}");
            }
            other => panic!("{bad}: {other}"),
        }
    }

    let twice = orders(&format!(
        "{ID}{EP}    ports:\n      - port: 8080\n        protocol: http\n      - port: 8080\n"
    ));
    let err = refuse(&twice);
    assert!(
        matches!(&err, MeshError::DuplicatePort { at, port: 8080, first_line: 7, .. } if *at == pos(9, 15)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "mesh.yaml:9:15: service \"orders\": ports: port 8080 is listed twice, first at line 7 \
         (hint: keep one entry per port)"
    );
}

#[test]
fn unknown_protocols_are_refused() {
    let text = |p: &str| {
        orders(&format!(
            "{ID}{EP}    ports:\n      - port: 80\n        protocol: {p}\n"
        ))
    };
    match refuse(&text("udp")) {
        MeshError::UnknownValue {
            at,
            value,
            expected,
            ..
        } => {
            assert_eq!((at, value.as_str()), (pos(8, 19), "udp"));
            assert_eq!(expected, ["tcp", "http", "detect"]);
        }
        other => panic!("{other}"),
    }
    let err = refuse(&text("HTTP")).to_string();
    assert!(err.contains("did you mean \"http\"?"), "{err}");
    assert!(matches!(refuse(&text("")), MeshError::UnknownValue { .. }));
}

#[test]
fn endpoints_must_be_ip_and_port() {
    let cases = [
        ("orders.shop.svc.cluster.local:15006", "hostname"),
        ("localhost:15006", "hostname"),
        ("orders", "hostname"),
        ("10.1.0.7", "no port"),
        ("\"fd00::7\"", "no port"),
        ("10.1.0.7:http", "not ip:port"),
        ("10.1.0.300:80", "not ip:port"),
        ("10.1.0.7:70000", "not ip:port"),
        ("\"[fd00::7]\"", "not ip:port"),
        ("10.1.0.7:0", "port 0"),
        ("0.0.0.0:15006", "unspecified"),
        ("\"[::]:15006\"", "unspecified"),
        ("\"[::ffff:10.1.0.7]:15006\"", "IPv4-mapped"),
    ];
    for (endpoint, reason_part) in cases {
        let text = orders(&format!("{ID}    endpoints:\n      - {endpoint}\n{PORTS}"));
        match refuse(&text) {
            MeshError::Endpoint { at, reason, .. } => {
                assert_eq!(at, pos(6, 9), "{endpoint}");
                assert!(reason.contains(reason_part), "{endpoint}: {reason}");
            }
            other => panic!("{endpoint}: {other}"),
        }
    }
    // Unquoted IPv6 is a YAML list, not a string: the hint says to quote it.
    let text = orders(&format!(
        "{ID}    endpoints:\n      - [fd00::7]:15006\n{PORTS}"
    ));
    let err = refuse(&text).to_string();
    assert!(
        err.starts_with("mesh.yaml:6:9: ") && err.contains("\"[fd00::7]:15006\""),
        "{err}"
    );
}

#[test]
fn an_endpoint_belongs_to_one_service() {
    let text = with_services(&format!(
        "  orders:\n{ID}{EP}{PORTS}  payments:\n\
         \x20   identity: spiffe://cluster.local/ns/shop/sa/payments\n\
         \x20   endpoints: [10.1.0.8:15006, 10.1.0.7:15006]\n\
         \x20   ports: [{{port: 9090}}]\n"
    ));
    match refuse(&text) {
        MeshError::DuplicateEndpoint {
            at,
            service,
            endpoint,
            other,
            other_line,
        } => {
            assert_eq!(at, pos(9, 33));
            assert_eq!((service.as_str(), other.as_str()), ("payments", "orders"));
            assert_eq!((endpoint, other_line), (addr("10.1.0.7:15006"), 5));
        }
        other => panic!("{other}"),
    }
    let twice = orders(&format!(
        "{ID}    endpoints: [10.1.0.7:15006, 10.1.0.7:15006]\n{PORTS}"
    ));
    assert!(matches!(
        refuse(&twice),
        MeshError::DuplicateEndpoint { .. }
    ));
}

#[test]
fn a_destination_names_one_service() {
    let two = |a_ports: &str, b_endpoint: &str, b_ports: &str| {
        with_services(&format!(
            "  a:\n\
             \x20   identity: spiffe://cluster.local/ns/shop/sa/a\n\
             \x20   endpoints: [127.0.0.1:15006]\n\
             \x20   ports: {a_ports}\n\
             \x20 b:\n\
             \x20   identity: spiffe://cluster.local/ns/shop/sa/b\n\
             \x20   endpoints: [{b_endpoint}]\n\
             \x20   ports: {b_ports}\n"
        ))
    };
    // Same IP, same application port.
    match refuse(&two("[{port: 8080}]", "127.0.0.1:15007", "[{port: 8080}]")) {
        MeshError::AmbiguousDestination {
            at,
            service,
            other,
            destination,
        } => {
            assert_eq!(at, pos(9, 17));
            assert_eq!((service.as_str(), other.as_str()), ("b", "a"));
            assert_eq!(destination, addr("127.0.0.1:8080"));
        }
        other => panic!("{other}"),
    }
    // One service's endpoint port is the other's application port.
    assert!(matches!(
        refuse(&two("[{port: 15007}]", "127.0.0.1:15007", "[{port: 9090}]")),
        MeshError::AmbiguousDestination { .. }
    ));
    // Same IP, distinct ports: fine, and each destination finds its service.
    let config = parse(&two("[{port: 8080}]", "127.0.0.1:15007", "[{port: 8081}]")).expect("valid");
    let name = |dst: &str| {
        config
            .by_destination(addr(dst))
            .map(|(s, _)| s.name.clone())
    };
    assert_eq!(name("127.0.0.1:8080").as_deref(), Some("a"));
    assert_eq!(name("127.0.0.1:8081").as_deref(), Some("b"));
    assert_eq!(name("127.0.0.1:15007").as_deref(), Some("b"));
}

#[test]
fn empty_files_are_refused() {
    for text in [
        "",
        "  \n\n",
        "# mesh\n# nothing yet\n",
        "---\n",
        "---\n...\n",
        "\u{feff}",
    ] {
        match refuse(text) {
            MeshError::Empty { file } => assert_eq!(file, "mesh.yaml"),
            other => panic!("{text:?}: {other}"),
        }
    }
    // A document that is only `null` is not empty, but not a mapping either.
    assert!(matches!(refuse("~\n"), MeshError::Yaml { .. }));
    assert!(refuse("").to_string().contains("empty"));
}

#[test]
fn other_yaml_surprises_are_refused() {
    let two_docs =
        "trust_domain: cluster.local\nservices: {}\n---\ntrust_domain: evil\nservices: {}\n";
    match refuse(two_docs) {
        MeshError::Limit { at, what } => {
            assert_eq!(at.line, 3);
            assert!(what.contains("more than one YAML document"), "{what}");
        }
        other => panic!("{other}"),
    }
    let tagged = orders(&format!("    identity: !include id.txt\n{EP}{PORTS}"));
    assert!(
        refuse(&tagged)
            .to_string()
            .contains("tag \"!include\" is not supported")
    );
    let null_services = "trust_domain: cluster.local\nservices:\n";
    assert!(
        refuse(null_services)
            .to_string()
            .starts_with("mesh.yaml:2:")
    );
    // Merge keys and aliases are ordinary YAML and work.
    let shared = with_services(
        "  a: &base\n\
         \x20   identity: spiffe://cluster.local/ns/shop/sa/a\n\
         \x20   endpoints: [10.0.0.1:15006]\n\
         \x20   ports: &ports [{port: 8080}]\n\
         \x20 b:\n\
         \x20   <<: *base\n\
         \x20   endpoints: [10.0.0.2:15006]\n\
         \x20   ports: *ports\n",
    );
    let config = parse(&shared).expect("aliases and merge keys");
    assert_eq!(config.services.len(), 2);
}

mod hostile;
mod policy;
