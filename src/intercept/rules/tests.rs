use super::*;
use crate::intercept::save::Table;

const EMPTY_NAT: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";

fn table(text: &str) -> Table {
    Table::parse_nat(text)
}

#[test]
fn defaults_on_an_empty_table() {
    let text = install(&Settings::default(), Family::V4, &table(EMPTY_NAT));
    assert_eq!(
        text,
        "\
*nat
:WARD_INBOUND - [0:0]
:WARD_IN_REDIRECT - [0:0]
:WARD_OUTPUT - [0:0]
:WARD_OUT_REDIRECT - [0:0]
-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WARD_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT
-A WARD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WARD_OUTPUT -o lo -j RETURN
-A WARD_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WARD_OUTPUT -p tcp -j WARD_OUT_REDIRECT
-A PREROUTING -p tcp -j WARD_INBOUND
-A OUTPUT -p tcp -j WARD_OUTPUT
COMMIT
"
    );
}

fn everything() -> Settings {
    Settings {
        inbound_port: 16006,
        outbound_port: 16001,
        admin_port: 16020,
        proxy_uid: 4242,
        proxy_mark: Some(0x539),
        exclude_inbound_ports: vec![9100, 22, 16020],
        exclude_outbound_ports: vec![5432],
        exclude_outbound_cidrs: vec![
            "fd00::/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            "169.254.169.254".parse().unwrap(),
        ],
    }
    .validated()
    .unwrap()
}

#[test]
fn every_exclusion_ipv4() {
    let text = install(&everything(), Family::V4, &table(EMPTY_NAT));
    assert_eq!(
        text,
        "\
*nat
:WARD_INBOUND - [0:0]
:WARD_IN_REDIRECT - [0:0]
:WARD_OUTPUT - [0:0]
:WARD_OUT_REDIRECT - [0:0]
-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006
-A WARD_INBOUND -p tcp -m tcp --dport 16020 -j RETURN
-A WARD_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A WARD_INBOUND -p tcp -m tcp --dport 9100 -j RETURN
-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT
-A WARD_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 16001
-A WARD_OUTPUT -m owner --uid-owner 4242 -j RETURN
-A WARD_OUTPUT -m mark --mark 0x539 -j RETURN
-A WARD_OUTPUT -o lo -j RETURN
-A WARD_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WARD_OUTPUT -d 10.0.0.0/8 -j RETURN
-A WARD_OUTPUT -d 169.254.169.254/32 -j RETURN
-A WARD_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
-A WARD_OUTPUT -p tcp -j WARD_OUT_REDIRECT
-A PREROUTING -p tcp -j WARD_INBOUND
-A OUTPUT -p tcp -j WARD_OUTPUT
COMMIT
"
    );
}

#[test]
fn ipv6_gets_ipv6_loopback_and_only_ipv6_cidrs() {
    let text = install(&everything(), Family::V6, &table(EMPTY_NAT));
    assert!(
        text.contains("-A WARD_OUTPUT -d ::1/128 -j RETURN\n"),
        "{text}"
    );
    assert!(
        text.contains("-A WARD_OUTPUT -d fd00::/8 -j RETURN\n"),
        "{text}"
    );
    assert!(!text.contains("127.0.0.0/8"), "{text}");
    assert!(!text.contains("10.0.0.0/8"), "{text}");
    assert!(!text.contains("169.254"), "{text}");
    // Everything else is the same as IPv4.
    let v4 = install(&everything(), Family::V4, &table(EMPTY_NAT));
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.contains(" -d "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&text), strip(&v4));
}

#[test]
fn reinstall_deletes_existing_jumps_first_and_keeps_user_rules() {
    let current = table(
        "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WARD_INBOUND - [0:0]
:WARD_OUTPUT - [0:0]
:MY_CHAIN - [0:0]
-A PREROUTING -p tcp -j WARD_INBOUND
-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN
-A OUTPUT -p tcp -j WARD_OUTPUT
-A OUTPUT -p tcp -j WARD_OUTPUT
-A MY_CHAIN -j WARD_OUTPUT
-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT
COMMIT
",
    );
    let text = install(&Settings::default(), Family::V4, &current);
    let head: Vec<&str> = text.lines().take(6).collect();
    assert_eq!(
        head,
        [
            "*nat",
            "-D PREROUTING -p tcp -j WARD_INBOUND",
            "-D OUTPUT -p tcp -j WARD_OUTPUT",
            "-D OUTPUT -p tcp -j WARD_OUTPUT",
            "-D MY_CHAIN -j WARD_OUTPUT",
            ":WARD_INBOUND - [0:0]",
        ]
    );
    assert!(!text.contains("9999"), "user rules are not touched: {text}");
    assert_eq!(
        text.matches("-A PREROUTING ").count() + text.matches("-A OUTPUT ").count(),
        2
    );
    // Ward's own chain-to-chain rules are flushed by the declaration, not deleted.
    assert!(!text.contains("-D WARD_INBOUND"));
}

#[test]
fn uninstall_removes_jumps_then_chains() {
    let current = table(
        "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WARD_INBOUND - [0:0]
:WARD_IN_REDIRECT - [0:0]
:WARD_OUTPUT - [0:0]
:WARD_OUT_REDIRECT - [0:0]
-A PREROUTING -p tcp -j WARD_INBOUND
-A OUTPUT -p tcp -m tcp --dport 9999 -j RETURN
-A OUTPUT -p tcp -j WARD_OUTPUT
-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT
COMMIT
",
    );
    assert_eq!(
        uninstall(&current).unwrap(),
        "\
*nat
-D PREROUTING -p tcp -j WARD_INBOUND
-D OUTPUT -p tcp -j WARD_OUTPUT
:WARD_INBOUND - [0:0]
:WARD_IN_REDIRECT - [0:0]
:WARD_OUTPUT - [0:0]
:WARD_OUT_REDIRECT - [0:0]
-X WARD_INBOUND
-X WARD_IN_REDIRECT
-X WARD_OUTPUT
-X WARD_OUT_REDIRECT
COMMIT
"
    );
}

#[test]
fn uninstall_handles_partial_state_and_nothing_to_do() {
    assert_eq!(uninstall(&table(EMPTY_NAT)), None);
    let only_chain = table("*nat\n:OUTPUT ACCEPT [0:0]\n:WARD_OUTPUT - [0:0]\nCOMMIT\n");
    assert_eq!(
        uninstall(&only_chain).unwrap(),
        "*nat\n:WARD_OUTPUT - [0:0]\n-X WARD_OUTPUT\nCOMMIT\n"
    );
}

#[test]
fn installed_means_all_four_chains() {
    let text = install(&Settings::default(), Family::V4, &table(EMPTY_NAT));
    assert!(installed(&table(&text)));
    assert!(!installed(&table(EMPTY_NAT)));
}
